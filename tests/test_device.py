"""Device and dtype choice for every kind of machine, on this CPU: the availability checks are patched.

What cannot run here (a CUDA GPU, Apple's MPS) is only chosen here; device.pick_device, device.pick_dtype and
ddp.dist_backend say on what evidence each choice rests."""
import json
import subprocess
import sys

import pytest
import torch

import ddp
import device as device_module
import eval as eval_script
import train
from conftest import ROOT, fake_torchrun, one_line, refused_before_rendezvous
from device import pick_device, pick_dtype


AMX = dict(vendor="GenuineIntel", amx=True, avx512_bf16=True, model="Intel(R) Xeon(R) Platinum 8481C", family="6")
INTEL_BF16 = dict(AMX, amx=False, model="Intel(R) Xeon(R) Platinum 8375C")
AMD_ZEN4 = dict(vendor="AuthenticAMD", amx=False, avx512_bf16=True, model="AMD EPYC 9B14", family="25")
NO_BF16 = dict(vendor="AuthenticAMD", amx=False, avx512_bf16=False, model="AMD EPYC 7B13", family="25")


@pytest.fixture
def machine(monkeypatch):
    """machine(cuda=n GPUs, mps=bool, ...): patch what torch reports about this machine."""
    def patch(cuda=0, mps=False, bf16_native=True, bf16_emulated=True, macos14=True, cpu_bf16_fast=False,
              cpu=None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True:
                            cuda > 0 and (bf16_native or including_emulation and bf16_emulated))
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
        monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos14 or major < 14)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0) if bf16_native else (7, 5))
        features = cpu or (AMX if cpu_bf16_fast else NO_BF16)
        monkeypatch.setattr(device_module, "cpu_features", lambda: dict(features))
    return patch


# ----------------------------------------------------------------------------- --device

@pytest.mark.parametrize("cuda,mps,want", [(1, True, "cuda"), (2, False, "cuda"), (0, True, "mps"), (0, False, "cpu")])
def test_auto_takes_cuda_then_mps_then_cpu(machine, cuda, mps, want):
    machine(cuda=cuda, mps=mps)
    assert pick_device("auto") == torch.device(want)


def test_explicit_devices_that_are_there(machine):
    machine(cuda=2, mps=True)
    assert [pick_device(s) for s in ("cuda", "cuda:1", "mps", "cpu")] == \
        [torch.device("cuda"), torch.device("cuda", 1), torch.device("mps"), torch.device("cpu")]


@pytest.mark.parametrize("setting,cuda,mps,words", [
    ("mps", 1, False, ["--device=mps", "MPS", "torch.backends.mps.is_available() is False", "cpu or auto"]),
    ("cuda", 0, True, ["--device=cuda", "torch.cuda.is_available() is False", "cpu or auto"]),
    ("cuda:0", 0, False, ["--device=cuda:0", "torch.cuda.is_available() is False"]),
    ("cuda:2", 2, False, ["--device=cuda:2", "no GPU 2", "cuda:0 to cuda:1"]),
    ("foo", 1, True, ["--device=foo", "auto, cuda, cuda:N, mps, cpu"]),
    ("xpu", 1, True, ["--device=xpu", "auto, cuda, cuda:N, mps, cpu"]),
])
def test_a_device_that_is_not_there_is_one_line(machine, setting, cuda, mps, words):
    machine(cuda=cuda, mps=mps)
    with pytest.raises(ValueError) as e:
        pick_device(setting)
    one_line(e, *words)


# ----------------------------------------------------------------------------- --dtype

@pytest.mark.parametrize("device,kw,want", [
    ("cuda", dict(cuda=1, bf16_native=True), torch.bfloat16),                        # Ampere and later
    ("cuda", dict(cuda=1, bf16_native=False, bf16_emulated=True), torch.float32),    # e.g. a T4: emulated bf16
    ("cuda:1", dict(cuda=2, bf16_native=False, bf16_emulated=False), torch.float32),
    ("mps", dict(mps=True, macos14=True), torch.float32),                            # see pick_dtype: unmeasured
    ("mps", dict(mps=True, macos14=False), torch.float32),
    ("cpu", dict(cpu=AMX), torch.bfloat16),
    ("cpu", dict(cpu=INTEL_BF16), torch.float32),        # avx512_bf16 without AMX: slower than fp32 (NOTES.md)
    ("cpu", dict(cpu=AMD_ZEN4), torch.bfloat16),          # results/dtype-amd-epyc-family25.json
    ("cpu", dict(cpu=NO_BF16), torch.float32),
    ("cpu", dict(cpu=dict(NO_BF16, vendor="GenuineIntel")), torch.float32),
])
def test_auto_dtype_per_device(machine, device, kw, want):
    machine(**kw)
    assert pick_dtype("auto", torch.device(device)) == want


@pytest.mark.parametrize("device,kw,words", [
    ("cpu", dict(cpu=AMX), ["AMX"]),
    ("cpu", dict(cpu=INTEL_BF16), ["avx512_bf16", "no AMX", "slower"]),
    ("cpu", dict(cpu=AMD_ZEN4), ["AMD", "avx512_bf16"]),
    ("cpu", dict(cpu=NO_BF16), ["without bf16"]),
    ("cuda", dict(cuda=1, bf16_native=True), ["compute capability 8.0"]),
    ("cuda", dict(cuda=1, bf16_native=False), ["compute capability 7.5", "emulated"]),
])
def test_auto_dtype_names_its_rule(machine, device, kw, words):
    machine(**kw)
    rule = device_module.auto_dtype(torch.device(device))[1]
    assert all(w in rule for w in words), rule


def test_auto_dtype_runs_no_timing(machine, monkeypatch):
    """Decided from what the CPU is: the same answer on a busy machine. The old rule timed a matmul."""
    machine(cpu=INTEL_BF16)
    def no_timing(*a):
        raise AssertionError("dtype=auto ran a matmul")
    monkeypatch.setattr(torch, "randn", no_timing)
    monkeypatch.setattr(torch.Tensor, "__matmul__", no_timing)
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32


def test_cpu_features_read_from_cpuinfo(monkeypatch):
    monkeypatch.setattr(torch._C._cpu, "_init_amx", lambda: False)
    amd = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
           "model name\t: AMD EPYC 9B14\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n\n")
    assert device_module.cpu_features(amd) == dict(AMD_ZEN4)
    intel = amd.replace("AuthenticAMD", "GenuineIntel").replace(" avx512_bf16", "")
    assert device_module.cpu_features(intel)["avx512_bf16"] is False
    assert device_module.cpu_dtype_rule(device_module.cpu_features(intel))[0] == torch.float32


def test_explicit_bf16_where_the_device_has_it(machine):
    machine(cuda=1, mps=True, bf16_native=False, bf16_emulated=True, macos14=True)
    for device in ("cuda", "mps", "cpu"):
        assert pick_dtype("bf16", torch.device(device)) == torch.bfloat16
        assert pick_dtype("fp32", torch.device(device)) == torch.float32


@pytest.mark.parametrize("device,kw,words", [
    ("mps", dict(mps=True, macos14=False), ["--dtype=bf16", "mps", "macOS 14", "--dtype=fp32"]),
    ("cuda", dict(cuda=1, bf16_native=False, bf16_emulated=False),
     ["--dtype=bf16", "is_bf16_supported()", "--dtype=fp32"]),
])
def test_bf16_where_the_device_has_none_is_one_line(machine, device, kw, words):
    machine(**kw)
    with pytest.raises(ValueError) as e:
        pick_dtype("bf16", torch.device(device))
    one_line(e, *words)


# ----------------------------------------------------------------------------- torch.distributed

def test_distributed_backend_per_device():
    assert ddp.dist_backend(torch.device("cuda", 1)) == "nccl"
    assert ddp.dist_backend(torch.device("cpu")) == "gloo"
    with pytest.raises(ValueError) as e:
        ddp.dist_backend(torch.device("mps"))
    one_line(e, "torchrun on mps", "one process", "--device=cpu")


# ----------------------------------------------------------------------------- the command lines

def never_load(*args, **kwargs):
    raise AssertionError("a model was loaded before the device was checked")


def test_train_device_mps_without_mps_is_one_line_before_any_model_loads(machine, monkeypatch):
    machine(cuda=0, mps=False)
    monkeypatch.setattr(train, "load_model", never_load)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as e:
        train.main(["--device=mps"])
    msg = str(e.value.code)
    assert "\n" not in msg and msg.startswith("error: --device=mps") and "is_available() is False" in msg, msg


def test_torchrun_on_mps_is_one_line_before_any_rendezvous(machine, monkeypatch):
    """RANK/WORLD_SIZE as torchrun sets them, no MASTER_ADDR: the refusal must come before init_process_group."""
    machine(cuda=0, mps=True)
    monkeypatch.setattr(train, "load_model", never_load)
    fake_torchrun(monkeypatch, 2)
    refused_before_rendezvous(["--device=auto", "--batch_prompts=8"], "torchrun on mps")


def test_eval_device_mps_without_mps_is_one_line_before_any_model_loads(machine, monkeypatch):
    machine(cuda=0, mps=False)
    monkeypatch.setattr(eval_script, "load_model", never_load)
    with pytest.raises(SystemExit) as e:
        eval_script.main(["--device=mps"])
    msg = str(e.value.code)
    assert "\n" not in msg and msg.startswith("error: --device=mps"), msg


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS: --device=mps would train")
def test_python_train_device_mps_exits_with_one_line():
    """The real command line on this machine (no patching): a non-zero exit and one line on stderr."""
    out = subprocess.run([sys.executable, "train.py", "--device=mps"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0 and out.stderr.startswith("error: --device=mps"), out.stderr
    assert out.stdout == ""                  # nothing ran: no model line, no evaluation


# ----------------------------------------------------------------------------- the same run twice

@pytest.mark.parametrize("dtype", ["auto", "fp32"])      # auto: bf16 on CPUs with AMX or AMD's avx512_bf16
def test_a_run_repeats_bit_for_bit(tiny_checkpoint, tmp_path, capsys, monkeypatch, dtype):
    """The same command twice: the same log.jsonl (wall-time fields aside) and the same checkpoint bytes; and
    the run's first line names the rule that chose the dtype. Another seed differs (the comparison can fail).
    The reward is conftest's toy_reward, which the tiny model earns now and then, so that the runs learn."""
    from conftest import tiny_config, toy_reward
    monkeypatch.setattr(train, "make_reward", lambda *a: toy_reward)
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        cfg = tiny_config(tiny_checkpoint, tmp_path / name, dtype=dtype, eval_every=1, eval_subset=2, seed=seed)
        cfg.grpo.temperature = 1.0
        train.train(cfg)
        log = [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        for m in log:
            m.pop("s_per_step"), m.pop("tok_per_s")
        weights = (tmp_path / name / "checkpoint-000003" / "model.safetensors").read_bytes()
        runs.append((log, weights))
    assert runs[0][0] == runs[1][0] and "eval_accuracy" in runs[0][0][-1]
    assert runs[0][1] == runs[1][1]
    assert runs[2][0] != runs[0][0] and runs[2][1] != runs[0][1]
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("compute dtype") and (("(auto: " in first) == (dtype == "auto")), first


@pytest.mark.parametrize("run_dtype, grad_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)])
def test_a_shared_prefix_gradient_is_summed_in_order(run_dtype, grad_dtype):
    """device.repeatable_kernels(cpu, the run's dtype), as train.py calls it: the backward of indexing that sums a
    shared prompt prefix's gradient over the rows that read it (engine.KVCache.rows, every index 0) equals the sum
    in index order, g0 + g1 + ... + g7 (the oracle), 20 times over at 2 threads. In fp32 it takes the switch:
    without it both threads add atomically, in an order that changes from call to call (when both run at once;
    50 of 50 calls differed from the ordered sum on an idle 2-core machine). A bf16 run leaves PyTorch's kernels
    as they are: its bf16 sums are in order anyway."""
    state = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory, torch.get_num_threads())
    try:
        torch.use_deterministic_algorithms(False)
        device_module.repeatable_kernels("cpu", run_dtype)
        switched = torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(2)
        g = torch.randn(8, 3, 36, 64, generator=torch.Generator().manual_seed(0)).to(grad_dtype)   # 55,296 numbers
        ordered = torch.zeros(1, 3, 36, 64, dtype=grad_dtype)
        for i in range(8):
            ordered += g[i:i + 1]
        equal = []
        for _ in range(20):
            prefix = torch.zeros(1, 3, 36, 64, dtype=grad_dtype, requires_grad=True)
            prefix[torch.zeros(8, dtype=torch.long)].backward(g)
            equal.append(torch.equal(prefix.grad, ordered))
    finally:
        torch.use_deterministic_algorithms(state[0], warn_only=state[1])
        torch.utils.deterministic.fill_uninitialized_memory = state[2]
        torch.set_num_threads(state[3])
    assert all(equal) and switched == (run_dtype == torch.float32)
