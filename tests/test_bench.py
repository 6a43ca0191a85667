"""bench.py's results: one file per benchmark and machine, holding its machine, date and command."""
import json
import re
import sys

import pytest

from conftest import ROOT

import bench

AMD = {"cpu": "AMD EPYC", "threads": 2, "amx": False, "cuda": None, "torch": "2.13.0+cpu", "auto_dtype": "bfloat16",
       "allocator": "glibc malloc"}


def test_machine_slug():
    assert bench.machine_slug(AMD) == "amd-epyc-2threads"
    assert bench.machine_slug(AMD | {"allocator": "libtcmalloc_minimal.so.4"}) == "amd-epyc-2threads-tcmalloc"
    assert bench.machine_slug(AMD | {"cpu": "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "threads": 1}) \
        == "intel-core-i7-8700-1threads"
    assert bench.machine_slug(AMD | {"cpu": "Intel(R) Xeon(R) Processor"}) == "intel-xeon-2threads"
    assert bench.machine_slug(AMD | {"cuda": "NVIDIA H200"}) == "nvidia-h200"
    # a record of this code names the kind of machine (device.machine_name: Zen 4 and Zen 5 apart)
    assert bench.machine_slug(AMD | {"kind": "amd-epyc-family26"}) == "amd-epyc-family26-2threads"
    assert bench.machine()["kind"] == bench.machine_name()


def test_command_line_names_the_preloaded_allocator(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench.py", "--only=step,trl"])
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert bench.command_line() == "python bench.py --only=step,trl"
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert bench.command_line() == \
        "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python bench.py --only=step,trl"


def test_a_result_file_per_benchmark_and_machine_replaced_by_a_later_run(tmp_path):
    path = bench.write_result(tmp_path, "step", {"step_s": 12.0}, AMD, "python bench.py --only=step")
    assert path == tmp_path / "step-amd-epyc-2threads.json"
    record = json.loads(path.read_text())
    assert record["benchmark"] == "step" and record["machine"] == AMD
    assert record["command"] == "python bench.py --only=step" and record["result"] == {"step_s": 12.0}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", record["date"])
    assert "commit" in record
    # a later run of the same benchmark on the same machine replaces the file (one JSON object, the new result)
    assert bench.write_result(tmp_path, "step", {"step_s": 9.0}, AMD, "python bench.py --only=step,trl") == path
    record = json.loads(path.read_text())
    assert record["result"] == {"step_s": 9.0} and record["command"] == "python bench.py --only=step,trl"
    # another benchmark, or another machine, is another file
    bench.write_result(tmp_path, "trl", {}, AMD, "python bench.py --only=step,trl")
    tcmalloc = AMD | {"allocator": "libtcmalloc_minimal.so.4"}
    bench.write_result(tmp_path, "step", {}, tcmalloc, "LD_PRELOAD=... python bench.py --only=step")
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["step-amd-epyc-2threads-tcmalloc.json", "step-amd-epyc-2threads.json", "trl-amd-epyc-2threads.json"]


def test_committed_results_follow_the_scheme():
    """Every committed bench result is named after its benchmark and machine and says when and how it was made."""
    paths = sorted((ROOT / "results" / "bench").glob("*.json"))
    assert paths
    for path in paths:
        record = json.loads(path.read_text())
        assert path.name == f"{record['benchmark']}-{bench.machine_slug(record['machine'])}.json"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", record["date"]), path.name
        assert "python bench.py --only=" in record["command"], path.name
        assert record["result"], path.name


def test_forward_flops_of_one_token_are_twice_the_matmul_parameters():
    """Oracle: the model's own parameter count. One token through every projection and the tied head is 2
    FLOPs per weight of each matmul: all parameters but the norms' (the embedding is the head's weight)."""
    import torch
    from model import GPT, GPTConfig
    cfg = GPTConfig()
    with torch.device("meta"):
        model = GPT(cfg)
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name)
    flops = bench.forward_flops(cfg, tokens=1, head_tokens=1, key_positions=0)
    assert sum(flops.values()) == 2 * (model.num_params() - norms)
    # without the head (a prompt position whose logits are not needed) the embedding's share goes
    no_head = bench.forward_flops(cfg, tokens=1, head_tokens=0, key_positions=0)
    assert sum(flops.values()) - sum(no_head.values()) == 2 * cfg.vocab_size * cfg.n_embd
    # attention: q k^T and probs v, 2 C FLOPs each per (query, key) pair, per layer
    assert bench.forward_flops(cfg, 0, 0, key_positions=10)["attention"] == 10 * 4 * cfg.n_embd * cfg.n_layer


def test_floor_seconds_divides_each_shape_by_its_rate():
    """Hand values: 2 TFLOP at 1 TFLOP/s and 3 TFLOP at 3 TFLOP/s take 3 s; attention runs at the MLP's rate."""
    from model import GPTConfig
    cfg = GPTConfig()
    rates = {(576, 1536): 1.0, (576, 49152): 3.0}
    assert bench.floor_seconds({(576, 1536): 2e12, (576, 49152): 3e12}, rates, cfg) == 3.0
    assert bench.floor_seconds({"attention": 1e12}, rates, cfg) == 1.0


def test_phase_clock_times_each_phase_and_finds_its_peak_memory():
    """A phase that allocates 200 MB and frees it shows that peak (the kernel's VmHWM, reset at the start of
    each phase); one that allocates nothing does not; a call inside a phase counts to the outer one."""
    import numpy as np
    clock = bench.PhaseClock()
    big = clock.wrap(lambda: np.ones(25_000_000).sum(), "big")          # 200 MB, touched
    small = clock.wrap(lambda: big() + 1, "small")                       # big inside small: counts to small
    base = bench.memory_kib("VmRSS")
    big()
    clock.wrap(lambda: 1, lambda: "idle")()
    small()
    assert clock.calls == {"big": 1, "idle": 1, "small": 1}
    assert clock.peak_kib["big"] - base >= 190_000 and clock.peak_kib["small"] - base >= 190_000
    assert clock.peak_kib["idle"] - base < 50_000
    assert set(clock.seconds) == {"big", "idle", "small"} and clock.max_kib >= clock.peak_kib["big"]


def test_default_worker_times_every_phase_of_a_tiny_run(tiny_checkpoint, tmp_path, monkeypatch):
    """bench.py --only=default's worker wraps the functions train.py calls today: a renamed one fails here, not in
    a 5-minute benchmark. A 2-step run of the tiny model reaches every phase, each called as often as the run does."""
    import checkpoint
    import grpo
    import train
    for module, name in [(train, "load_model"), (train, "evaluate"), (grpo, "generate"), (grpo, "logprobs_by_chunk"),
                         (train, "backward_by_chunk"), (checkpoint, "save_step"), (train, "cast_for_training")]:
        monkeypatch.setattr(module, name, getattr(module, name))     # undone after the test: the worker patches them
    run = bench.default_worker([f"--model={tiny_checkpoint}", "--task=add1", "--steps=2", "--batch_prompts=2",
                                "--n_train=50", "--n_eval=4", "--device=cpu", f"--out_dir={tmp_path / 'run'}",
                                "--dtype=fp32", "--eval_max_new_tokens=4", "--group_size=2", "--max_new_tokens=4",
                                "--eval_every=1", "--save_every=1"])
    assert set(run["calls"]) == set(bench.PHASES) - {"other"}
    assert run["calls"]["checkpoints"] == 2 and run["calls"]["optimizer"] == 2 and run["calls"]["sampling"] == 2
    assert run["calls"]["eval_periodic"] == 2 and run["calls"]["eval_before"] == 1
    assert set(run["accuracy"]) == {"before", "after", "paraphrase"}


def test_default_flops_worker_counts_the_training_steps_matmuls(tiny_checkpoint, tmp_path):
    """bench.py --only=default_floor's counter sees the whole run: the projections (mm) and attention (matmuls of
    4-d tensors: bmm) of the evaluations, and each training step's sampling, reference pass, forward and backward,
    so a 2-step run counts more than a 1-step run of the same settings by at least the tied head's FLOPs (2 x 32
    x 50,257 a token, the tiny model's largest matmul) for its 4 or more sampled tokens (2 prompts x G = 2, each
    reply a token or more) in each of 5 passes' worth: sampling, the reference, the forward, its backward (2)."""
    args = ["--heap=glibc", f"--model={tiny_checkpoint}", "--task=add1", "--batch_prompts=2", "--n_train=50",
            "--n_eval=4", "--device=cpu", "--dtype=fp32", "--eval_max_new_tokens=4", "--group_size=2",
            "--max_new_tokens=4", "--eval_every=0", "--eval_paraphrase=false"]
    one = bench.default_flops_worker(args + ["--steps=1", f"--out_dir={tmp_path / 'one'}"])
    two = bench.default_flops_worker(args + ["--steps=2", f"--out_dir={tmp_path / 'two'}"])
    assert {"aten.mm", "aten.bmm"} <= set(one["flops_by_op"])
    assert set(one["accuracy"]) == {"before", "after"}
    step = sum(two["flops_by_op"].values()) - sum(one["flops_by_op"].values())
    assert step >= 5 * 4 * 2 * 32 * 50257


def test_an_unknown_dtype_is_one_line_before_any_work(monkeypatch, capsys):
    """--dtypes names the dtypes to measure; another name stops bench.py with one line, before the model loads."""
    monkeypatch.setattr(sys, "argv", ["bench.py", "--only=sample", "--dtypes=fp32,fp16"])
    monkeypatch.setattr(bench, "load_model", lambda: pytest.fail("loaded the model before checking --dtypes"))
    with pytest.raises(SystemExit) as stop:
        bench.main()
    assert str(stop.value) == "error: --dtypes=fp32,fp16: choose from fp32, bf16"


def test_default_floor_needs_the_runs_dtype_in_the_floor_file_before_it_runs(tmp_path, monkeypatch):
    """The counted run takes as long as the default run: a floor file without rates for the run's dtype (here
    fp32, asked for by --dtype) stops it with one line first."""
    slug = bench.machine_slug(bench.machine())
    (tmp_path / f"floor-{slug}.json").write_text(json.dumps({"result": {"rates_tflops": {"bf16": {"64": {}}}}}))
    monkeypatch.setattr(bench, "fresh_train_run", lambda *a: pytest.fail("ran before checking the floor file"))
    with pytest.raises(SystemExit) as stop:
        bench.bench_default_floor("--dtype=fp32", results_dir=str(tmp_path))
    assert str(stop.value) == f"error: no fp32 rates in {tmp_path / f'floor-{slug}.json'}: run `python bench.py " \
                              "--only=floor` on this machine first"
    with pytest.raises(SystemExit, match="no fp32 rates"):           # no floor file at all
        bench.bench_default_floor("--dtype=fp32", results_dir=str(tmp_path / "none"))
