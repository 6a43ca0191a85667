"""Where to run and in which dtype: the device (--device) and the compute dtype (--dtype) that train.py, eval.py
and judge.py pick before loading a model.

An explicit choice that cannot work here is refused in one line, before any model is loaded; 'auto' takes what is
there (a CUDA GPU, then Apple's MPS, then the CPU) and bf16 where it is fast.
"""
import re

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


def cpu_features(cpuinfo=None):
    """What this CPU is, as dtype=auto's CPU rules read it: {'vendor', 'amx', 'avx512_bf16', 'model', 'family'}.

    amx: torch._C._cpu._init_amx(), True only where the AMX tiles work (the kernel must allow them too, so this
    and not /proc/cpuinfo's amx_* flags); avx512_bf16 and the vendor from /proc/cpuinfo (Linux; elsewhere
    unknown: False / ''). cpuinfo: that file's text instead (tests)."""
    info = cpuinfo or ""
    try:
        if cpuinfo is None:
            with open("/proc/cpuinfo") as f:
                info = f.read(200_000)
    except OSError:
        pass
    field = lambda name: (re.search(rf"^{name}\s*:\s*(.*)$", info, re.M) or [None, ""])[1].strip()
    return {"vendor": field("vendor_id"), "amx": bool(torch._C._cpu._init_amx()),
            "avx512_bf16": "avx512_bf16" in field("flags").split(), "model": field("model name"),
            "family": field("cpu family")}


def machine_name():
    """A short name of this kind of machine for results files: 'amd-epyc-family25', 'intel-xeon-amx', ..."""
    f = cpu_features()
    words = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*", " ", f["model"].lower()).split()[:2] or ["cpu"]
    return "-".join(words + (["amx"] if f["amx"] else [f"family{f['family']}"] if f["family"] else []))


# Measured on an AMD EPYC of family 25, model 17 (Zen 4), 1 thread, busy machine, scripts/dtype_speed.py
# (results/dtype-amd-epyc-family25.json): matmul bf16 186 vs fp32 64 GFLOP/s, sampling 82 vs 44 tok/s; and
# on a Zen 5 (family 26) transformers' generate 343 vs 206 tok/s (NOTES.md). (An Intel Xeon with
# avx512_bf16 but no AMX measured the opposite: see cpu_dtype_rule.)
AMD_BF16 = (torch.bfloat16, "AMD CPU with avx512_bf16: bf16 matmuls measured 2-3x faster than fp32 on Zen 4")


def cpu_dtype_rule(features):
    """(dtype, the rule that chose it) for a CPU with these cpu_features. Decided from what the CPU is, never
    from a timing, so that the same machine always picks the same dtype (a timing picks differently when the
    machine is busy). The rules and the measurements behind them (scripts/dtype_speed.py):
      AMX (Intel Xeon 4th gen on)        bf16: matmul 2.7 vs 0.42 TFLOP/s fp32 (NOTES.md, 2026-11-24)
      AMD with avx512_bf16 (Zen 4, 5)    bf16: see AMD_BF16 below
      Intel avx512_bf16 without AMX      fp32: bf16 matmul 0.17 vs fp32 0.31 TFLOP/s (NOTES.md, 2026-11-25)
      no bf16 instructions               fp32: bf16 is emulated, slower still"""
    if features["amx"]:
        return torch.bfloat16, "CPU with AMX: bf16 matmuls run on its tiles"
    if features["avx512_bf16"] and features["vendor"] == "AuthenticAMD":
        return AMD_BF16
    if features["avx512_bf16"]:
        return torch.float32, "CPU with avx512_bf16 but no AMX: bf16 matmuls are slower than fp32 there"
    return torch.float32, "CPU without bf16 instructions (no AMX, no avx512_bf16)"


def auto_dtype(device):
    """(dtype, rule) that dtype=auto picks on this device: CUDA GPUs with bf16 units (compute capability 8.0+,
    Ampere on; older ones only emulate bf16), never MPS (see pick_dtype), CPUs by cpu_dtype_rule."""
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16, f"CUDA GPU of compute capability {major}.{minor} (>= 8.0: bf16 units)"
        return torch.float32, f"CUDA GPU of compute capability {major}.{minor} (< 8.0: bf16 only emulated)"
    if device.type == "cpu":
        return cpu_dtype_rule(cpu_features())
    return torch.float32, f"{device.type}: no bf16 speed-up measured there"


def bf16_is_fast(device):
    """Whether dtype=auto picks bf16 on this device (auto_dtype)."""
    return auto_dtype(device)[0] == torch.bfloat16


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

    'auto' is bf16 where auto_dtype's rule says so (CUDA GPUs with bf16 units, AMX CPUs, AMD CPUs with avx512_bf16),
    else fp32 (MasterAdamW trains fp32 or bf16, not fp16). On MPS it is fp32: PyTorch supports bf16 there only
    from macOS 14 on (pytorch/pytorch#119641) and documents no speed gain from it, and we have not measured one
    on a Mac; --dtype=bf16 still asks for it there."""
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if setting == "auto":
        return auto_dtype(device)[0]
    if setting not in names:
        raise ValueError(f"unknown dtype {setting!r}; choose one of: auto, fp32, bf16")
    if names[setting] == torch.bfloat16:
        check_bf16(device)
    return names[setting]


def repeatable_kernels(device, dtype):
    """PyTorch's deterministic kernels for an fp32 run on a CPU, so that a command repeats bit for bit at the same
    thread count (another count splits the matmuls otherwise: other bits). The kernel it changes for our training
    pass: the backward of indexing (index_put_ with accumulate), which sums the shared prompt prefix's gradient
    over the prompts that read it (engine.KVCache.rows). With more than one thread, PyTorch does that sum in fp32
    by atomic adds from every thread, in an order that changes from run to run: two runs of one fp32 command at 2
    threads held different weights after their first step (211 of 272 tensors). The deterministic kernel is the
    serial one that a single thread, and bf16 at any count, runs anyway; so bf16 runs keep every kernel they had.
    torch.empty stays unfilled (the same switch would fill it with NaN, work for nothing here). Left as it is on
    a GPU, where deterministic kernels need settings of their own and cost time."""
    if torch.device(device).type == "cpu" and dtype == torch.float32:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False
