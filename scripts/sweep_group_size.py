"""The effect of group size G at a fixed budget of completions per step (B * G constant), over several seeds.

    python scripts/sweep_group_size.py                       # G = 2, 4, 8, 16 x seeds 0, 1, 2; B*G = 64, 20 steps
    python scripts/sweep_group_size.py --groups=4,8 --seeds=0 --steps=10 --out=/tmp/sweep.json

Each run trains from the same base model on the same task with the same number of sampled completions per step;
the seed decides the train / held-out split, the order of the prompts and the sampling. Per run it records:
held-out greedy accuracy (graded by the task's verifier) and exact-format share after training, the first held-out
replies and the first wrong ones, the training reward of every step (its peak and last value: a run can rise and
fall), the share of zero-variance groups (groups whose G rewards are all equal and so teach nothing), the noise of
the reward curve (std of its step-to-step differences) and the KL to the reference. The base model is evaluated
once per seed (the held-out set depends on the seed). Per G, `summary` gives each number's mean, min and max over
the seeds. Results go to results/group_size_sweep.json, rewritten after every run; a run already in that file
with the same settings is kept, not repeated, so an interrupted sweep continues where it stopped.

The runs compute in fp32 whatever the machine: dtype=auto could choose bf16 on one machine and fp32 on another.
They use the notebook's settings, which cell 8 reads beside this sweep (the paper's GRPOConfig: 32 new tokens,
temperature 1, advantages divided by the std; reward correct:1,format:1), not train.py's recipe.
"""
import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import machine  # noqa: E402
from eval import GRADER  # noqa: E402
from grpo import GRPOConfig  # noqa: E402
from train import TrainConfig, train  # noqa: E402

REWARD_WEIGHTS = "correct:1,format:1"      # the notebook's get_reward

SUMMARISED = ["accuracy_after", "format_after", "reward_last5", "reward_peak", "reward_final", "reward_curve_noise",
              "frac_zero_std_groups", "kl_last", "completion_chars_after"]


def run_record(G, seed, cfg, out, seconds):
    """What the sweep keeps of one run (train.train's return value)."""
    history = out["history"]
    rewards = [h["reward"] for h in history]
    diffs = [b - a for a, b in zip(rewards, rewards[1:])]
    replies = lambda examples: [{"question": q, "reply": o, "right": ok} for q, o, _, ok in examples]
    return {
        "G": G, "B": cfg.batch_prompts, "seed": seed,
        "accuracy_after": out["after"]["accuracy"], "format_after": out["after"]["format"],
        "completion_chars_after": out["after"]["completion_chars"],
        "examples_after": replies(out["after"]["examples"]), "wrong_after": replies(out["after"]["wrong_examples"]),
        "reward_first5": statistics.fmean(rewards[:5]), "reward_last5": statistics.fmean(rewards[-5:]),
        "reward_peak": max(rewards), "reward_peak_step": history[rewards.index(max(rewards))]["step"],
        "reward_final": rewards[-1], "reward_curve_noise": statistics.pstdev(diffs) if diffs else 0.0,
        "frac_zero_std_groups": statistics.fmean(h["frac_reward_zero_std"] for h in history),
        "kl_last": history[-1]["kl"], "seconds": round(seconds, 1),
        "rewards": [round(r, 4) for r in rewards],
        "frac_zero_std": [round(h["frac_reward_zero_std"], 4) for h in history],
        "kl": [round(h["kl"], 4) for h in history]}


def summarise(runs):
    """{G: {number: {mean, min, max}} over the seeds, plus the number of seeds}."""
    summary = {}
    for G in sorted({r["G"] for r in runs}):
        mine = [r for r in runs if r["G"] == G]
        summary[str(G)] = {"seeds": len(mine)} | {
            k: {"mean": statistics.fmean(r[k] for r in mine), "min": min(r[k] for r in mine),
                "max": max(r[k] for r in mine)} for k in SUMMARISED}
    return summary


def write(results, path):
    """The results with their per-G summary, the machine and the date (UTC), rewritten whole."""
    results |= {"machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime())}
    results["summary"] = summarise(results["runs"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", default="2,4,8,16")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--completions", type=int, default=64, help="B * G, the same for every run")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "results" / "group_size_sweep.json"))
    args = ap.parse_args(argv)
    groups = [int(g) for g in args.groups.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    bad = [G for G in groups if G < 2 or args.completions % G]
    if bad:
        sys.exit(f"error: --groups: each G must be >= 2 and divide --completions={args.completions} (not {bad})")
    defaults, paper = TrainConfig(), GRPOConfig()
    settings = {"grader": GRADER, "task": defaults.task, "reward_weights": REWARD_WEIGHTS,
                "steps": args.steps, "completions_per_step": args.completions, "lr": defaults.lr,
                "beta": paper.beta, "max_new_tokens": paper.max_new_tokens, "temperature": paper.temperature,
                "scale_rewards": paper.scale_rewards, "dtype": "fp32", "n_eval": defaults.n_eval}
    out_path = Path(args.out)
    results = {"command": "python scripts/sweep_group_size.py" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
               **settings, "accuracy_before": {}, "runs": []}
    if out_path.exists():                      # continue an interrupted sweep with the same settings
        old = json.loads(out_path.read_text())
        if all(old.get(k) == v for k, v in settings.items()):
            results["runs"] = [r for r in old.get("runs", []) if "seed" in r]
            results["accuracy_before"] = old.get("accuracy_before", {}) if results["runs"] else {}
    done = {(r["G"], r["seed"]) for r in results["runs"]}
    for seed in seeds:
        for G in groups:
            if (G, seed) in done:
                print(f"G = {G}, seed {seed}: already in {out_path}, kept")
                continue
            out_dir = ROOT / "runs" / f"sweep_G{G}_seed{seed}"
            cfg = TrainConfig(steps=args.steps, batch_prompts=args.completions // G, seed=seed, dtype="fp32",
                              reward_weights=REWARD_WEIGHTS, grpo=GRPOConfig(group_size=G),
                              eval_before=str(seed) not in results["accuracy_before"], eval_every=0,
                              eval_paraphrase=False, out_dir=str(out_dir), log_every=5, save_every=10**9)
            print(f"\n=== G = {G}, B = {cfg.batch_prompts}, seed {seed} ===", flush=True)
            t = time.time()
            out = train(cfg)
            if out["before"] is not None:
                results["accuracy_before"][str(seed)] = out["before"]["accuracy"]
            results["runs"].append(run_record(G, seed, cfg, out, time.time() - t))
            write(results, out_path)
            for folder in out_dir.glob("checkpoint-*"):     # 0.5 GB of weights a run: keep only the logs
                shutil.rmtree(folder)
    write(results, out_path)
    for G, s in results.get("summary", {}).items():
        print(f"G = {G:>2} ({s['seeds']} seeds): accuracy {s['accuracy_after']['mean']:.1%} "
              f"[{s['accuracy_after']['min']:.1%}, {s['accuracy_after']['max']:.1%}], format "
              f"{s['format_after']['mean']:.1%}, zero-variance groups {s['frac_zero_std_groups']['mean']:.0%}, "
              f"reward noise {s['reward_curve_noise']['mean']:.3f}")


if __name__ == "__main__":
    main()
