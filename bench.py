"""Speed figures as JSON (not a test). Each figure names the machine; compare only within one run.

    python bench.py                       # all below but tta_seeds, trl, ratio, default, floor, default_floor
    python bench.py --only=sample,step    # a subset: load, sample, fwdbwd, step, memory, tta, tta_seeds, trl, ratio
    python bench.py --out_dir=/tmp/bench  # write the results elsewhere

Each benchmark, once done, is written to results/bench/<benchmark>-<machine>.json (e.g. step-amd-epyc-2threads.json)
with the machine, the date, the command and the commit; it replaces that benchmark's earlier file for the same
machine. The dated history of earlier results is results/HISTORY.md.

load     cold (dequantize the GGUF) and warm (cached safetensors) load seconds
sample   sampled tokens/s at batch 8, 32, 64 with 32 new tokens: ours (fp32, bf16) vs transformers' generate
fwdbwd   forward+backward seconds of 64 sequences of 80 tokens (log-probs of the last 24), ours vs transformers
step     seconds per GRPO step on TRL's comparison config (add1, 8 prompts x G=8, 32 tokens, T=1, beta=0.04,
         lr 1e-5, AdamW) with a breakdown by phase
memory   peak resident memory of a 3-step training run (a fresh process), whole batch and 1 prompt per pass
tta      held-out greedy accuracy on add1 (graded by the task's verifier) after each of the first steps of that
         config (time to accuracy)
tta_seeds  the same with 4 other sampling seeds, each until it reaches TRL's 94%: how much of tta is luck
trl      TRL's GRPOTrainer on the same config, fp32 and bf16 (pip install -r requirements-bench.txt; ~10 min on 2 cores)
default  the default `python train.py` (train.py's own defaults, in a fresh process): wall seconds and the rise of
         peak resident memory by phase (load, evaluations, sampling, reference pass, forward+backward, optimizer,
         checkpoints, other), the whole run's peak RSS, and before/after accuracy
floor    this machine's fp32 and bf16 matmul rate on the model's shapes, and from it the least time the
         matmuls of the sampler's work (batch 64 x 32 tokens) and of the comparison config's step can take
default_floor  the default run's matmul FLOPs, counted by torch's FLOP counter over a whole run (as slow as the
         run), over floor's best rate here for the run's dtype: the least time the default run can take here
ratio    TRL's time per step over ours, both in the auto dtype, measured alternately (ours, TRL, ours, ... 3 TRL
         runs, ~15 min): a VM whose speed drifts by 20-30% within an hour moves both sides of each ratio alike
"""
import argparse
import copy
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import fused
from device import machine_name, pick_dtype
from engine import generate
from eval import GRADER, evaluate
from grpo import GRPOConfig, rollout
from load_weights import DEFAULT_SYSTEM, find_smollm2_gguf, load_model, load_smollm2
from optim import MasterAdamW, cast_for_training
from train import TrainConfig, optimize
from task import get_reward, make_dataset

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}     # those of sample, fwdbwd, step, trl, floor (--dtypes)
QUESTION = "What is 3 + 5? Answer with just the number."


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?") \
        if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cpu": cpu, "kind": machine_name(), "threads": torch.get_num_threads(),
            "amx": bool(torch._C._cpu._init_amx()),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "auto_dtype": str(pick_dtype("auto", "cpu")).removeprefix("torch."),
            # the C allocator changes these timings a lot (TRL's most): glibc's unless one is preloaded
            "allocator": " ".join(os.path.basename(p) for p in os.environ.get("LD_PRELOAD", "").replace(":", " ").split())
                         or "glibc malloc"}


def machine_slug(m):
    """The machine part of a result's file name, from a machine() record: the GPU's name, else the CPU's with the
    thread count, and the C allocator where it is not glibc's ('amd-epyc-2threads', 'amd-epyc-2threads-tcmalloc',
    'nvidia-h200')."""
    if m["cuda"]:
        name = m["cuda"]
    else:   # device.machine_name() ('amd-epyc-family26', 'intel-xeon-amx') and 2 threads; older records lack "kind"
        name = m.get("kind") or re.sub(r"\((r|tm)\)|\b(cpu|processor)\b|@.*", " ", m["cpu"], flags=re.I)
        name += f" {m['threads']}threads"
    if m["allocator"] != "glibc malloc":   # 'libtcmalloc_minimal.so.4' -> tcmalloc
        name += "".join(" " + re.sub(r"^lib|[_.].*", "", lib) for lib in m["allocator"].split())
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def command_line():
    """The command that ran this process, with the preloaded allocator if there is one."""
    preload = f"LD_PRELOAD={os.environ['LD_PRELOAD']} " if os.environ.get("LD_PRELOAD") else ""
    return preload + shlex.join(["python", os.path.basename(sys.argv[0]), *sys.argv[1:]])


def git_commit():
    """The code's commit ('-dirty' with uncommitted changes), or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
    except OSError:   # no git
        return None
    return out.stdout.strip() or None


def write_result(out_dir, name, result, machine_info, command):
    """Write one benchmark's result to out_dir/<name>-<machine slug>.json with its machine, date (UTC), command and
    commit, replacing the file of an earlier run of that benchmark on that machine; returns the path."""
    record = {"benchmark": name, "machine": machine_info, "date": time.strftime("%Y-%m-%d", time.gmtime()),
              "command": command, "commit": git_commit(), "result": result}
    path = Path(out_dir) / f"{name}-{machine_slug(machine_info)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def peak_rss_gib():
    """This process's peak resident memory. Linux's VmHWM is the peak of this program alone, while ru_maxrss
    also keeps the peak of the process it was forked from (a bench run that already holds several models)."""
    if os.path.exists("/proc/self/status"):
        kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    else:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20


def timed(fn, repeat=1):
    """Best of `repeat` wall times (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_load():
    with tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        load_smollm2(cache_dir=cache, verbose=False)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        load_smollm2(cache_dir=cache)
        warm = time.perf_counter() - t
    return {"cold_s": round(cold, 2), "warm_s": round(warm, 2)}


def hf_model(dtype):
    from transformers import AutoModelForCausalLM
    path = find_smollm2_gguf()
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).to(dtype).eval()


def bench_sample(model, tok, hf):
    prompt = tok.chat_prompt(QUESTION)
    out = {}
    for name, dtype in DTYPES.items():
        ours = copy.deepcopy(model).to_compute_dtype(dtype)
        theirs = hf(dtype) if hf else None
        for batch in (8, 32, 64):
            # no EOS stop: every row makes exactly 32 tokens in both implementations
            s = timed(lambda: generate(ours, [prompt] * batch, max_new_tokens=32, temperature=1.0, eos_id=None,
                                       seeds=list(range(batch))))
            out[f"ours_{name}_b{batch}_tok_s"] = round(batch * 32 / s, 1)
            if theirs is not None:
                ids = torch.tensor([prompt] * batch)
                with torch.no_grad():
                    s = timed(lambda: theirs.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                                      top_k=0, max_new_tokens=32, min_new_tokens=32,
                                                      pad_token_id=tok.pad_id))
                out[f"transformers_{name}_b{batch}_tok_s"] = round(batch * 32 / s, 1)
        del ours, theirs
    return out


def bench_fwdbwd(model, hf):
    """64 x 80 tokens, log-probs of the last 24 positions, backward. Ours computes in the dtype's own weights (as
    train.py does); transformers in fp32, or with fp32 weights under bf16 autocast (as TRL's bf16 mode does)."""
    torch.manual_seed(0)
    ids = torch.randint(0, model.cfg.vocab_size, (64, 80))
    out = {}

    def run(m, get_logits):
        logits = get_logits(m)[:, :-1]
        torch.log_softmax(logits.float(), -1).gather(-1, ids[:, -24:, None]).sum().backward()
        m.zero_grad(set_to_none=True)

    theirs = hf(torch.float32) if hf else None
    for name, dtype in DTYPES.items():
        ours = fused.apply(copy.deepcopy(model).to_compute_dtype(dtype))      # as train.py trains
        out[f"ours_{name}_s"] = round(timed(lambda: run(ours, lambda m: m(ids, logits_to_keep=25))), 2)
        del ours
        if theirs is not None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                out[f"transformers_{name}_s"] = round(timed(lambda: run(theirs, lambda m: m(ids, logits_to_keep=25).logits)), 2)
    return out


class TimedAdamW(MasterAdamW):
    """MasterAdamW that remembers how long its last step took."""

    def step(self, max_grad_norm=None):
        t = time.perf_counter()
        out = super().step(max_grad_norm)
        self.seconds = time.perf_counter() - t
        return out


class ComparisonRun:
    """The comparison config's training state, as train.py builds it: the policy and the reference in the compute
    dtype, fp32 master weights in AdamW (TRL's weight decay 0.01)."""

    def __init__(self, model, tok, dtype_name, prompts_per_pass=8):
        """model: the fp32 model, which becomes the policy (pass a copy to keep the original)."""
        self.tok, self.dtype = tok, pick_dtype(dtype_name, "cpu")
        self.policy = model
        self.opt = cast_for_training(self.policy, self.dtype, TimedAdamW, lr=1e-5, weight_decay=0.01)
        self.ref = copy.deepcopy(self.policy).requires_grad_(False)
        fused.apply(self.policy)
        self.train_set, self.eval_set = make_dataset("add1", seed=0)
        # TRL's chat template adds SmolLM2's default system turn: ours does too here, for the same prompts
        gcfg = GRPOConfig(group_size=8, max_new_tokens=32, temperature=1.0, beta=0.04, system_prompt=DEFAULT_SYSTEM,
                          prompts_per_pass=prompts_per_pass)
        self.cfg = TrainConfig(lr=1e-5, grad_clip=1.0, grpo=gcfg)

    def step(self, step, seed=0):
        """One GRPO step on prompts 8*step .. 8*step+7 (their sampling seeds shifted by seed); returns seconds by
        phase."""
        t0 = time.perf_counter()
        prompts = self.train_set[8 * step:8 * step + 8]
        first = 8 * step + 10_000 * seed
        batch = rollout(self.policy, self.tok, prompts, get_reward, self.cfg.grpo, self.ref,
                        seeds=list(range(first, first + 8)))
        t1 = time.perf_counter()
        optimize(self.policy, self.opt, batch, self.cfg)
        t2 = time.perf_counter()
        return {"step_s": t2 - t0, "sample_s": batch.seconds["sample"], "reward_s": batch.seconds["reward"],
                "ref_logprobs_s": batch.seconds["logprobs"], "forward_backward_s": t2 - t1 - self.opt.seconds,
                "optimizer_s": self.opt.seconds, "completion_tokens": int(batch.completion_mask.sum())}


def bench_step(model, tok, steps=3, dtype_name="auto", prompts_per_pass=8):
    """Seconds per GRPO step of the comparison config, split into phases (median of `steps` steps)."""
    run = ComparisonRun(copy.deepcopy(model), tok, dtype_name, prompts_per_pass)
    fused.use_heap("auto", run.dtype, "cpu")      # glibc's heap as train.py sets it (TRL runs in its own process)
    rows = [run.step(i) for i in range(steps)]
    median = lambda k: round(sorted(r[k] for r in rows)[len(rows) // 2], 2)
    return {"dtype": str(run.dtype).removeprefix("torch."), "prompts_per_pass": prompts_per_pass,
            **{k: median(k) for k in rows[0]}}


def memory_worker(prompts_per_pass, steps=3):
    """Peak RSS (GiB) of this process: load the model and train `steps` steps of the comparison config."""
    model, tok = load_model()
    run = ComparisonRun(model, tok, "auto", prompts_per_pass)
    del model
    for i in range(steps):
        run.step(i)
    return peak_rss_gib()


def bench_memory():
    """Peak RSS (GiB) of a fresh process that runs 3 training steps of the comparison config, for a whole batch
    and for one prompt per training pass."""
    out = {}
    for k in (8, 1):
        code = f"import bench; print(bench.memory_worker({k}))"
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        out[f"peak_rss_gib_prompts_per_pass_{k}"] = round(float(res.stdout.split()[-1]), 2)
    return out


# ----------------------------------------------------------------------------- the default run, by phase

def memory_kib(field):
    """Linux's VmHWM (the peak resident memory since the start or the last reset) or VmRSS of this process, KiB."""
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))


class PhaseClock:
    """Wall seconds, peak resident memory and minor page faults by phase of a train.py run, from wrappers put
    around the functions train.py calls (its code unchanged). A phase starts by resetting the kernel's peak-RSS mark
    (/proc/self/clear_refs), so that the mark read at its end is its own peak; the time between phases is
    'other'. (The reset also lowers what /usr/bin/time reports for this process: the run's peak is max_kib.)"""

    def __init__(self):
        self.seconds, self.peak_kib, self.calls, self.page_faults = {}, {}, {}, {}
        self.max_kib, self.inside = 0, False

    def _mark(self, name):
        peak = memory_kib("VmHWM")
        self.peak_kib[name] = max(self.peak_kib.get(name, 0), peak)
        self.max_kib = max(self.max_kib, peak)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

    def wrap(self, fn, name):
        """fn, timed as phase `name` (a string, or a function of fn's arguments giving one); a call inside another
        phase counts to that one."""
        def timed_fn(*args, **kwargs):
            if self.inside:
                return fn(*args, **kwargs)
            phase = name(*args, **kwargs) if callable(name) else name
            self._mark("other")
            self.inside, t, faults = True, time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t
                self.page_faults[phase] = self.page_faults.get(phase, 0) + \
                    resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
                self.calls[phase] = self.calls.get(phase, 0) + 1
                self.inside = False
                self._mark(phase)
        return timed_fn


def default_worker(argv):
    """Run `python train.py *argv` in this process with train.py's phases timed (PhaseClock); returns the phases'
    seconds, calls and peak RSS (GiB), the run's peak RSS and its before/after accuracy."""
    import grpo
    import train
    clock = PhaseClock()
    train.load_model = clock.wrap(train.load_model, "load")
    train.evaluate = clock.wrap(train.evaluate, lambda *a, progress=None, **k: "eval_periodic" if progress is None
                                else "eval_after" if "sampling" in clock.seconds else "eval_before")
    grpo.generate = clock.wrap(grpo.generate, "sampling")                  # the rollout's samples
    grpo.logprobs_by_chunk = clock.wrap(grpo.logprobs_by_chunk, "reference")  # pi_ref's (and pi_old's) log-probs
    train.backward_by_chunk = clock.wrap(train.backward_by_chunk, "forward_backward")
    train.checkpoint.save_step = clock.wrap(train.checkpoint.save_step, "checkpoints")
    cast = train.cast_for_training

    def cast_and_time(*args, **kwargs):
        optimizer = cast(*args, **kwargs)
        optimizer.step = clock.wrap(optimizer.step, "optimizer")
        return optimizer
    train.cast_for_training = cast_and_time
    out = train.main(argv)
    clock._mark("other")
    gib = lambda kib: round(kib / 2**20, 2)
    return {"seconds": {k: round(v, 2) for k, v in clock.seconds.items()}, "calls": clock.calls,
            "minor_page_faults": clock.page_faults | {"run": resource.getrusage(resource.RUSAGE_SELF).ru_minflt},
            "peak_rss_gib": {k: gib(v) for k, v in clock.peak_kib.items()}, "run_peak_rss_gib": gib(clock.max_kib),
            "accuracy": {k: out[k]["accuracy"] for k in ("before", "after", "paraphrase") if out.get(k)},
            "format": {k: out[k]["format"] for k in ("before", "after") if out.get(k)}}


PHASES = ("load", "eval_before", "sampling", "reference", "forward_backward", "optimizer", "eval_periodic",
          "checkpoints", "eval_after", "other")


def fresh_train_run(worker, args=""):
    """`python train.py` plus args in a fresh process, its run folder a temporary one, through bench.<worker>(argv);
    returns the worker's result, the run's compute dtype (from the line train.py prints) and the wall seconds."""
    with tempfile.TemporaryDirectory() as out:
        argv = shlex.split(args) + [f"--out_dir={out}/run"]
        code = f"import json, bench; print('RESULT ' + json.dumps(bench.{worker}({argv!r})))"
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        wall = time.perf_counter() - t
    if res.returncode:
        sys.exit(f"error: the default run failed:\n{res.stderr[-3000:]}")
    run = json.loads(next(l for l in res.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
    dtype = next((l.split()[2] for l in res.stdout.splitlines() if l.startswith("compute dtype")), None)
    return run, dtype, wall


def bench_default(args=""):
    """The default `python train.py` (plus args, e.g. '--dtype=fp32') in a fresh process: wall seconds by phase (the
    process's start and imports are 'other'), peak RSS by phase and of the run."""
    run, dtype, wall = fresh_train_run("default_worker", args)
    seconds = run.pop("seconds")
    seconds["other"] = wall - sum(seconds.values())
    return {"command": shlex.join(["python", "train.py", *shlex.split(args)]), "dtype": dtype,
            "wall_s": round(wall, 1), "seconds": {k: round(seconds[k], 1) for k in PHASES if k in seconds}, **run}


def default_flops_worker(argv):
    """Run `python train.py *argv` in this process under torch's FLOP counter (torch.utils.flop_counter: mm, addmm,
    bmm, ... of every forward and backward, the evaluations' included); returns the matmul FLOPs by op."""
    import train
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        out = train.main(argv)
    return {"flops_by_op": {str(op): n for op, n in counter.get_flop_counts()["Global"].items()},
            "accuracy": {k: out[k]["accuracy"] for k in ("before", "after") if out.get(k)}}


def bench_default_floor(args="", results_dir="results/bench"):
    """The least time the default run's matmuls can take here: their FLOPs, counted over a whole default run
    (default_flops_worker, a fresh process as slow as the run), over the best rate `floor` measured on this machine
    for the run's dtype on any of the model's shapes. That rate is optimistic for most of them, and everything but
    the matmuls is left out, so no run can be faster than this."""
    from device import pick_device
    from train import parse_args
    cfg = parse_args(shlex.split(args))
    name = "bf16" if pick_dtype(cfg.dtype, pick_device(cfg.device)) == torch.bfloat16 else "fp32"
    floor_file = Path(results_dir) / f"floor-{machine_slug(machine())}.json"
    rates = json.loads(floor_file.read_text())["result"]["rates_tflops"] if floor_file.exists() else {}
    if name not in rates:        # checked before the run, which takes as long as the default run
        sys.exit(f"error: no {name} rates in {floor_file}: run `python bench.py --only=floor` on this machine first")
    best = max(r for by_shape in rates[name].values() for r in by_shape.values())
    run, dtype, wall = fresh_train_run("default_flops_worker", args)
    flops = sum(run["flops_by_op"].values())
    return {"command": shlex.join(["python", "train.py", *shlex.split(args)]), "dtype": dtype,
            "matmul_tflop": round(flops / 1e12, 2),
            "by_op_tflop": {op: round(n / 1e12, 3) for op, n in run["flops_by_op"].items()},
            "best_rate_tflops": best, "rate_from": str(floor_file), "floor_s": round(flops / (best * 1e12), 1),
            "counted_run_wall_s": round(wall, 1), "accuracy": run["accuracy"]}


# ----------------------------------------------------------------------------- the physical floor

def matmul_tflops(n, k, m, dtype, repeat=7, min_s=0.2):
    """This machine's best rate (TFLOP/s) for (n, k) @ (k, m) in dtype: the best of `repeat` timings, each of
    enough calls to last min_s (the best, since a busy machine only ever slows a run down). Where the first call
    takes a second or more, its time alone (bf16 without bf16 units: 1.2 GFLOP/s, one thread, on an AVX2 AMD
    EPYC Zen 3, where the head's (1024, 576) @ (576, 49,152) takes 48 s; its set-up is a small part of that)."""
    a, b = torch.randn(n, k).to(dtype), torch.randn(k, m).to(dtype)
    t = time.perf_counter()
    a @ b
    first = time.perf_counter() - t
    if first >= 1:
        return 2 * n * k * m / first / 1e12
    calls = max(1, int(min_s / max(timed(lambda: a @ b), 1e-6)))
    best = min(timed(lambda: [a @ b for _ in range(calls)]) for _ in range(repeat)) / calls
    return 2 * n * k * m / best / 1e12


def linear_shapes(cfg):
    """(in, out, count) of the matmuls each token meets: the blocks' projections, then the tied output head."""
    C, D, I = cfg.n_embd, cfg.head_dim, cfg.n_inner
    return [(C, cfg.n_head * D, 2 * cfg.n_layer), (C, cfg.n_kv_head * D, 2 * cfg.n_layer),   # q and o; k and v
            (C, I, 2 * cfg.n_layer), (I, C, cfg.n_layer),                                      # gate, up; down
            (C, cfg.vocab_size, 1)]                                                            # head


def forward_flops(cfg, tokens, head_tokens, key_positions):
    """Matmul FLOPs of a forward over `tokens` positions, the head on `head_tokens` of them, by shape (in, out) ->
    FLOPs, with the attention's two matmuls (scores and values: 4 C FLOPs per query and key it sees, per layer,
    key_positions = sum over the queries of the keys each sees) under 'attention'."""
    out = {(k, m): 2 * k * m * count * (head_tokens if m == cfg.vocab_size else tokens)
           for k, m, count in linear_shapes(cfg)}
    out["attention"] = 4 * cfg.n_embd * cfg.n_layer * key_positions
    return out


def floor_seconds(flops, rates, cfg):
    """The least time for matmul FLOPs by shape at this machine's rate for each shape (TFLOP/s); the attention's
    small matmuls at the MLP's rate (an optimistic one for them)."""
    mlp = (cfg.n_embd, cfg.n_inner)
    return sum(f / (rates[mlp if shape == "attention" else shape] * 1e12) for shape, f in flops.items())


def add_flops(*parts):
    total = {}
    for part in parts:
        for k, v in part.items():
            total[k] = total.get(k, 0) + v
    return total


def bench_floor(tok, results_dir="results/bench"):
    """This machine's fp32 and bf16 matmul rates on the model's shapes (rows = the sampler's batch of 64, and the
    1024 positions of a training pass), and the least time the matmuls of two benchmarks can take at those rates:
    the sampler (batch 64 x 32 new tokens, bench sample) and a GRPO step of the comparison config (bench step:
    sampling, the reference pass, the policy's forward and backward = 2 more forwards' matmuls). Only the matmuls:
    the floor leaves out everything else (softmax, norms, the optimizer, Python), so no real run reaches it."""
    from model import GPTConfig
    cfg = GPTConfig()                               # SmolLM2-135M's shapes
    shapes = [(k, m) for k, m, _ in linear_shapes(cfg)]
    rates = {name: {rows: {s: round(matmul_tflops(rows, *s, dtype), 5) for s in shapes} for rows in (64, 1024)}
             for name, dtype in DTYPES.items()}
    out = {"rates_tflops": {d: {str(rows): {f"{k}x{m}": r for (k, m), r in by_rows.items()}
                                for rows, by_rows in v.items()} for d, v in rates.items()}}
    # the sampler: one prompt for all 64 rows (its first P - 1 tokens once, then one per row), 31 decode steps
    P, N, T = len(tok.chat_prompt(QUESTION)), 64, 32
    prefill = forward_flops(cfg, P - 1 + N, N, sum(range(1, P)) + N * P)
    decode = forward_flops(cfg, N * (T - 1), N * (T - 1), N * sum(range(P + 1, P + T)))
    sample = add_flops(prefill, decode)
    # the step: 8 prompts x G = 8 of add1 with the system prompt, the completion tokens that bench step measured
    # (else all 64 x 32): sampling, then 3 forwards' worth (reference, policy forward, its backward = 2 forwards)
    prompts = [tok.chat_prompt(p.question, system=DEFAULT_SYSTEM) for p in make_dataset("add1", seed=0)[0][:8]]
    step_file = Path(results_dir) / f"step-{machine_slug(machine())}.json"
    measured = json.loads(step_file.read_text())["result"] if step_file.exists() else {}
    out["sample"], out["step"] = {"tokens": N * T, "matmul_gflop": round(sum(sample.values()) / 1e9, 1)}, {}
    for name in DTYPES:
        tokens = measured.get(name, {}).get("completion_tokens", N * T)
        per_row = tokens / N
        Pm = sum(map(len, prompts)) / len(prompts)
        keys = N * per_row * (Pm + per_row / 2)               # each completion token sees its prompt and half of itself
        gen = add_flops(forward_flops(cfg, sum(map(len, prompts)), 8, sum(len(p) ** 2 / 2 for p in prompts)),
                        forward_flops(cfg, tokens, tokens, keys))
        fwd = add_flops(forward_flops(cfg, sum(map(len, prompts)), 0, sum(len(p) ** 2 / 2 for p in prompts)),
                        forward_flops(cfg, tokens, tokens, keys))
        step = add_flops(gen, fwd, fwd, fwd, fwd)
        r64, r1024 = rates[name][64], rates[name][1024]
        out["sample"][f"floor_{name}_s"] = round(floor_seconds(sample, r64, cfg), 3)
        out["sample"][f"floor_{name}_tok_s"] = round(N * T / floor_seconds(sample, r64, cfg), 1)
        out["step"][name] = {"completion_tokens": tokens, "completion_tokens_from": str(step_file) if measured
                             else "all 64 x 32", "matmul_gflop": round(sum(step.values()) / 1e9, 1),
                             "floor_s": round(floor_seconds(gen, r64, cfg) + 4 * floor_seconds(fwd, r1024, cfg), 3)}
    return out


def bench_tta(model, tok, steps=8, dtype_name="auto", seed=0, target=None):
    """Held-out greedy accuracy on add1 after each step of the comparison config, with training seconds; seed
    shifts the sampling seeds, and with a target accuracy the run stops at the first step that reaches it."""
    run = ComparisonRun(copy.deepcopy(model), tok, dtype_name)
    accuracy = lambda: evaluate(run.policy, run.tok, run.eval_set, system_prompt=DEFAULT_SYSTEM)["accuracy"]
    curve, train_s = [{"step": 0, "train_s": 0.0, "accuracy": accuracy()}], 0.0
    for step in range(1, steps + 1):
        if target is not None and curve[-1]["accuracy"] >= target:
            break
        train_s += run.step(step, seed)["step_s"]
        curve.append({"step": step, "train_s": round(train_s, 1), "accuracy": accuracy()})
    return {"dtype": str(run.dtype).removeprefix("torch."), "eval_prompts": len(run.eval_set), "seed": seed,
            "grader": GRADER, "curve": curve}


def _trl_worker(steps, dtype_name="fp32", max_completion_length=32):
    """TRL's GRPOTrainer on the comparison config, in this process; seconds per step and peak RSS."""
    import statistics
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from task import Prompt

    path = find_smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, padding_side="left")
    gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # Conversational prompts: TRL applies the chat template, which adds SmolLM2's default system turn
    # (~20 prompt tokens that our bench_step leaves out). The `answer` column reaches the reward as a kwarg.
    train_set, _ = make_dataset("add1", seed=0)
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p.question}], "answer": p.answer}
                              for p in train_set])

    def reward(prompts, completions, answer, **_):
        return get_reward([Prompt(p[-1]["content"], a) for p, a in zip(prompts, answer)],
                          [c[0]["content"] for c in completions])

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds = []

        def on_step_begin(self, *_, **__):
            self.t = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds.append(time.perf_counter() - self.t)

    with tempfile.TemporaryDirectory() as out:
        # TRL loads its reference model from a path, and its loader cannot read GGUF, so both models come from an
        # fp32 safetensors copy. The weights were dequantized on load, but the model still carries the GGUF
        # quantizer, with which Trainer refuses to train it and save_pretrained refuses to save it.
        gguf_model.hf_quantizer = None
        del gguf_model.config.quantization_config
        gguf_model.save_pretrained(f"{out}/model")
        del gguf_model
        args = trl.GRPOConfig(
            output_dir=out, report_to="none", logging_steps=1, save_strategy="no", max_steps=steps,
            use_cpu=True, bf16=dtype_name == "bf16",
            # per_device_train_batch_size counts completions: 64 = 8 prompts x num_generations 8, and with
            # gradient_accumulation_steps 1 the generation batch is those 64, so one optimizer step per rollout
            per_device_train_batch_size=64, num_generations=8, gradient_accumulation_steps=1, num_iterations=1,
            max_completion_length=max_completion_length, temperature=1.0, beta=0.04, learning_rate=1e-5,
            # as ours, where TRL's defaults differ: no activation checkpointing, per-sequence mean loss, prompts in
            # order, constant lr, torch AdamW's weight decay
            activation_checkpointing=False, loss_type="grpo", shuffle_dataset=False, lr_scheduler_type="constant",
            weight_decay=0.01,
            model_init_kwargs={"dtype": torch.float32})
        trainer = trl.GRPOTrainer(model=f"{out}/model", reward_funcs=reward, args=args, train_dataset=data,
                                  processing_class=tok, callbacks=[timer := StepTimer()])
        trainer.train()
    s = timer.seconds
    return {"trl_version": trl.__version__, "dtype": dtype_name, "threads": torch.get_num_threads(),
            "step_s_median": round(statistics.median(s[1:] if len(s) >= 3 else s), 2),
            "step_s": [round(x, 2) for x in s],
            "completion_mean_tokens": [round(h["completions/mean_length"], 1) for h in trainer.state.log_history
                                       if "completions/mean_length" in h],
            "peak_rss_gib": round(peak_rss_gib(), 2)}


def bench_trl(steps=3, dtype_name="fp32"):
    """TRL 1.16's GRPOTrainer on the comparison config, in a fresh process so that its peak RSS is its own."""
    code = f"import json, bench; print(json.dumps(bench._trl_worker({steps}, {dtype_name!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    if out.returncode:
        sys.exit(f"error: the TRL run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def bench_ratio(model, tok, rounds=3):
    """TRL's median seconds per step over ours, alternating: ours, TRL, ours, TRL, ..., ours. Each TRL run is
    compared with the mean of the two runs of ours around it."""
    dtype_name = "bf16" if pick_dtype("auto", "cpu") == torch.bfloat16 else "fp32"
    ours, trl = [bench_step(model, tok, dtype_name=dtype_name)["step_s"]], []
    for _ in range(rounds):
        trl.append(bench_trl(dtype_name=dtype_name)["step_s_median"])
        ours.append(bench_step(model, tok, dtype_name=dtype_name)["step_s"])
    ratios = [round(t / ((a + b) / 2), 2) for t, a, b in zip(trl, ours, ours[1:])]
    return {"dtype": dtype_name, "ours_step_s": ours, "trl_step_s": trl, "ratios": ratios,
            "median_ratio": sorted(ratios)[len(ratios) // 2]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="load,sample,fwdbwd,step,memory,tta",
                    help="comma-separated: load, sample, fwdbwd, step, memory, tta, tta_seeds, trl, ratio, default, "
                         "floor, default_floor")
    ap.add_argument("--out_dir", default="results/bench", help="where each benchmark's JSON file goes")
    ap.add_argument("--default_args", default="", help="options added to default's `python train.py`, e.g. "
                                                       "'--dtype=fp32' or '--steps=2'")
    ap.add_argument("--dtypes", default="fp32,bf16", help="the dtypes that sample, fwdbwd, step, trl and floor "
                    "measure: leave bf16 out where the CPU has no bf16 units (50-300x slower than fp32 there)")
    args = ap.parse_args()
    parts = args.only.split(",")
    if not args.dtypes or set(args.dtypes.split(",")) - set(DTYPES):
        sys.exit(f"error: --dtypes={args.dtypes}: choose from fp32, bf16")
    for name in set(DTYPES) - set(args.dtypes.split(",")):
        del DTYPES[name]
    try:
        import transformers  # noqa: F401
        hf = hf_model
    except ImportError:
        hf = None
    result = {"machine": machine()}
    command = command_line()
    model, tok = load_model() if set(parts) - {"default", "memory", "trl"} else (None, None)
    for name in parts:
        print(f"bench {name} ...", file=sys.stderr)
        t = time.perf_counter()
        if name == "load":
            result[name] = bench_load()
        elif name == "sample":
            result[name] = bench_sample(model, tok, hf)
        elif name == "fwdbwd":
            result[name] = bench_fwdbwd(model, hf)
        elif name == "step":
            result[name] = {d: bench_step(model, tok, dtype_name=d) for d in DTYPES}
            if "bf16" in DTYPES:
                result[name]["bf16_one_prompt_per_pass"] = bench_step(model, tok, dtype_name="bf16",
                                                                      prompts_per_pass=1)
        elif name == "tta":
            result[name] = bench_tta(model, tok)
        elif name == "tta_seeds":
            result[name] = [bench_tta(model, tok, seed=s, target=0.94) for s in range(1, 5)]
        elif name == "memory":
            result[name] = bench_memory()
        elif name == "trl":
            result[name] = {d: bench_trl(dtype_name=d) for d in DTYPES}
        elif name == "floor":
            result[name] = bench_floor(tok)
        elif name == "default":
            result[name] = bench_default(args.default_args)
        elif name == "default_floor":
            result[name] = bench_default_floor(args.default_args, args.out_dir)
        elif name == "ratio":
            result[name] = bench_ratio(model, tok)
        else:
            sys.exit(f"error: unknown benchmark {name!r}")
        path = write_result(args.out_dir, name, result[name], result["machine"], command)
        print(f"  {name}: {time.perf_counter() - t:.0f} s -> {path}", file=sys.stderr)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
