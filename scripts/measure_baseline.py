"""The base model on every task, graded by each task's verifier: README's baseline table.

    python scripts/measure_baseline.py                # all tasks, 100 held-out prompts, 4 samples each
    python scripts/measure_baseline.py --tasks=larger,sort --n_eval=50

Greedy (temperature 0) and sampled (temperature 1, k samples per prompt) accuracy, the share of greedy replies
that are exactly the answer ("57"), and the greedy mean reward with the default weights; no system prompt,
32 new tokens, the held-out split of make_dataset (seed 0). Writes results/baseline.json.
"""
import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import machine  # noqa: E402
from device import pick_device, pick_dtype  # noqa: E402
from eval import GRADER, evaluate  # noqa: E402
from load_weights import load_model  # noqa: E402
from task import TASKS, make_dataset  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--n_eval", type=int, default=100)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--out", default="results/baseline.json")
    args = ap.parse_args(argv)
    device = pick_device("auto")                    # as train.py and eval.py: cuda, then mps, then cpu
    model, tok = load_model("smollm2", device)
    dtype = pick_dtype("auto", device)
    model.to_compute_dtype(dtype)
    report = {"command": "python scripts/measure_baseline.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": time.strftime("%Y-%m-%d"), "machine": machine(),
              "dtype": str(dtype).removeprefix("torch."), "grader": GRADER, "tasks": {}}
    print(f"| task | greedy | sampled (k={args.samples}) | exact format (greedy) | mean reward (greedy) | held-out prompts |")
    print("|---|---|---|---|---|---|")
    for name in args.tasks.split(","):
        _, eval_set = make_dataset(name, n_eval=args.n_eval)
        t0 = time.time()
        res = evaluate(model, tok, eval_set, samples=args.samples)
        row = {k: res[k] for k in ("accuracy", "sampled_accuracy", "format", "reward")}
        report["tasks"][name] = row | {"held_out": len(eval_set), "seconds": round(time.time() - t0, 1),
                                       "examples": [{"question": q, "reply": o, "right": ok}
                                                    for q, o, _, ok in res["examples"]]}
        print(f"| `{name}` | {row['accuracy']:.0%} | {row['sampled_accuracy']:.1%} | {row['format']:.0%} | "
              f"{row['reward']:.3f} | {len(eval_set)} |", flush=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
