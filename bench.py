"""Speed figures as JSON (not a test). Each figure names the machine; compare only within one run.

    python bench.py                       # everything below except tta_seeds, trl and ratio
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
from device import pick_dtype
from engine import generate
from eval import GRADER, evaluate
from grpo import GRPOConfig, rollout
from load_weights import DEFAULT_SYSTEM, find_smollm2_gguf, load_model, load_smollm2
from optim import MasterAdamW, cast_for_training
from train import TrainConfig, optimize
from task import get_reward, make_dataset

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
QUESTION = "What is 3 + 5? Answer with just the number."


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?") \
        if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cpu": cpu, "threads": torch.get_num_threads(), "amx": bool(torch._C._cpu._init_amx()),
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
    else:   # 'Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz' and 2 threads -> intel-core-i7-8700-2threads
        name = re.sub(r"\((r|tm)\)|\b(cpu|processor)\b|@.*", " ", m["cpu"], flags=re.I) + f" {m['threads']}threads"
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
                    help="comma-separated: load, sample, fwdbwd, step, memory, tta, tta_seeds, trl, ratio")
    ap.add_argument("--out_dir", default="results/bench", help="where each benchmark's JSON file goes")
    args = ap.parse_args()
    parts = args.only.split(",")
    try:
        import transformers  # noqa: F401
        hf = hf_model
    except ImportError:
        hf = None
    result = {"machine": machine()}
    command = command_line()
    model, tok = load_model()
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
            result[name] = {"fp32": bench_step(model, tok, dtype_name="fp32"),
                            "bf16": bench_step(model, tok, dtype_name="bf16"),
                            "bf16_one_prompt_per_pass": bench_step(model, tok, dtype_name="bf16", prompts_per_pass=1)}
        elif name == "tta":
            result[name] = bench_tta(model, tok)
        elif name == "tta_seeds":
            result[name] = [bench_tta(model, tok, seed=s, target=0.94) for s in range(1, 5)]
        elif name == "memory":
            result[name] = bench_memory()
        elif name == "trl":
            result[name] = {d: bench_trl(dtype_name=d) for d in ("fp32", "bf16")}
        elif name == "ratio":
            result[name] = bench_ratio(model, tok)
        else:
            sys.exit(f"error: unknown benchmark {name!r}")
        path = write_result(args.out_dir, name, result[name], result["machine"], command)
        print(f"  {name}: {time.perf_counter() - t:.0f} s -> {path}", file=sys.stderr)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
