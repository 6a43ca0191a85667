"""The effect of group size G at a fixed budget of completions per step (B * G constant).

    python scripts/sweep_group_size.py                       # G = 2, 4, 8, 16 with B*G = 64, 20 steps each
    python scripts/sweep_group_size.py --groups=4,8 --steps=10

Each run trains from the same base model on the same task, seed and number of sampled completions, then
measures held-out greedy accuracy. Per run it records: final accuracy, the share of zero-variance groups
(groups whose G rewards are all equal and so teach nothing), and the noise of the reward curve (std of the
step-to-step differences of the training reward). Results go to results/group_size_sweep.json.
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval import GRADER  # noqa: E402
from train import TrainConfig, train  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", default="2,4,8,16")
    ap.add_argument("--completions", type=int, default=64, help="B * G, the same for every run")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "results" / "group_size_sweep.json"))
    args = ap.parse_args()
    defaults = TrainConfig()
    results = {"command": "python scripts/sweep_group_size.py " + " ".join(sys.argv[1:]), "grader": GRADER,
               "reward_weights": defaults.reward_weights, "task": defaults.task, "steps": args.steps, "completions_per_step": args.completions,
               "lr": defaults.lr, "beta": defaults.grpo.beta, "runs": []}
    for i, G in enumerate(int(g) for g in args.groups.split(",")):
        cfg = TrainConfig(steps=args.steps, batch_prompts=args.completions // G, eval_before=i == 0,
                          out_dir=f"runs/sweep_G{G}", log_every=5, save_every=10**9)
        cfg.grpo.group_size = G
        print(f"\n=== G = {G}, B = {cfg.batch_prompts} ===", flush=True)
        t = time.time()
        out = train(cfg)
        rewards = [h["reward"] for h in out["history"]]
        diffs = [b - a for a, b in zip(rewards, rewards[1:])]
        if out["before"] is not None:
            results["accuracy_before"] = out["before"]["accuracy"]
        results["runs"].append({
            "G": G, "B": cfg.batch_prompts, "accuracy_after": out["after"]["accuracy"],
            "format_after": out["after"]["format"],
            "examples_after": [{"question": q, "reply": o, "right": ok} for q, o, _, ok in out["after"]["examples"]],
            "completion_chars_after": out["after"]["completion_chars"],
            "frac_zero_std_groups": statistics.fmean(h["frac_reward_zero_std"] for h in out["history"]),
            "reward_first5": statistics.fmean(rewards[:5]), "reward_last5": statistics.fmean(rewards[-5:]),
            "reward_curve_noise": statistics.pstdev(diffs) if diffs else 0.0,
            "kl_last": out["history"][-1]["kl"], "seconds": round(time.time() - t, 1),
            "s_per_step": round(statistics.fmean(h["s_per_step"] for h in out["history"]), 2),
            "rewards": [round(r, 4) for r in rewards]})
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}))
    for r in results["runs"]:
        print({k: v for k, v in r.items() if k != "rewards"})


if __name__ == "__main__":
    main()
