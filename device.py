"""Where to run and in which dtype: the device (--device) and the compute dtype (--dtype) that train.py, eval.py
and judge.py pick before loading a model.

An explicit choice that cannot work here is refused in one line, before any model is loaded; 'auto' takes what is
there (a CUDA GPU, then Apple's MPS, then the CPU) and bf16 where it is fast.
"""
import functools
import time

import torch


def pick_device(setting="auto"):
    """'auto' | 'cuda' | 'cuda:N' | 'mps' | 'cpu' -> torch.device. 'auto' takes the first that is there: an NVIDIA
    (or ROCm) GPU, then Apple's MPS (the GPU of Apple-silicon laptops), then the CPU. An explicit device that is
    not there is one line here, before any model is loaded, not a stack trace from deep inside the first .to()."""
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(setting)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cuda", "mps", "cpu"):
        raise ValueError(f"--device={setting}: not a device tinygrpo runs on; "
                         f"choose one of: auto, cuda, cuda:N, mps, cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device={setting}: no CUDA GPU is available here (torch.cuda.is_available() is False); "
                         f"use cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device={setting}: there is no GPU {device.index}; this machine has "
                         f"{torch.cuda.device_count()} (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device={setting}: Apple's MPS backend is not available on this machine "
                         f"(torch.backends.mps.is_available() is False); use cpu or auto")
    return device


def bf16_is_fast(device):
    """Whether bf16 matmuls beat fp32 here: on CUDA GPUs with bf16 units (compute capability 8.0+, Ampere on; older
    GPUs only emulate it), never on MPS (see pick_dtype), on CPUs with AMX, and on other CPUs by a timed matmul."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_bf16_is_fast()
    return False


@functools.lru_cache(maxsize=None)
def cpu_bf16_is_fast():
    """True on CPUs with AMX; on others (some have AVX-512 BF16, some emulate bf16 slowly) when a model-sized
    matmul is clearly faster in bf16 than in fp32. Measured once per process."""
    if torch._C._cpu._init_amx():
        return True
    operands = {dtype: (torch.randn(256, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype))
                for dtype in (torch.float32, torch.bfloat16)}
    seconds = {dtype: float("inf") for dtype in operands}
    for _ in range(9):      # the two dtypes in turn, the fastest trial of each: other work on the machine slows
        for dtype, (a, b) in operands.items():      # both alike instead of whichever ran during a busy spell
            t = time.perf_counter()
            for _ in range(3):
                a @ b
            seconds[dtype] = min(seconds[dtype], time.perf_counter() - t)
    return seconds[torch.bfloat16] < 0.8 * seconds[torch.float32]


def check_bf16(device):
    """One line where this device cannot hold bf16 tensors at all."""
    device = torch.device(device)
    if device.type == "mps" and not torch.backends.mps.is_macos_or_newer(14, 0):
        raise ValueError("--dtype=bf16 on mps: PyTorch supports bf16 on Apple's MPS from macOS 14 (Sonoma) on; "
                         "use --dtype=fp32 or auto")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("--dtype=bf16: this GPU cannot compute in bf16 (torch.cuda.is_bf16_supported() is False); "
                         "use --dtype=fp32 or auto")


def pick_dtype(setting, device):
    """'auto' | 'bf16' | 'fp32' -> the compute dtype (see GPT.to_compute_dtype; log-probs and losses stay fp32).

    'auto' is bf16 where bf16_is_fast says so (CUDA GPUs with bf16 units, AMX CPUs, CPUs where bf16 times faster),
    else fp32 (MasterAdamW trains fp32 or bf16, not fp16). On MPS it is fp32: PyTorch supports bf16 there only
    from macOS 14 on (pytorch/pytorch#119641) and documents no speed gain from it, and we have not measured one
    on a Mac; --dtype=bf16 still asks for it there."""
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if setting == "auto":
        return torch.bfloat16 if bf16_is_fast(device) else torch.float32
    if setting not in names:
        raise ValueError(f"unknown dtype {setting!r}; choose one of: auto, fp32, bf16")
    if names[setting] == torch.bfloat16:
        check_bf16(device)
    return names[setting]
