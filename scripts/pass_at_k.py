"""How much a task's right answers are already within a model's reach: pass@k on held-out prompts.

    OMP_NUM_THREADS=2 python scripts/pass_at_k.py --task=add2                                   # the base model
    OMP_NUM_THREADS=2 python scripts/pass_at_k.py --task=add2 --checkpoint=runs/tasks/add2      # a trained run

n samples per held-out prompt at the training temperature (asked as the run asked them: its system prompt, its
evaluations' reply budget and its format example, as eval.py does), each graded by the task's verifier; pass@k is
the unbiased estimate of Chen et al. (2021), 1 - C(n - c, k) / C(n, k) for c right of n, averaged over the
prompts. GRPO learns from a group only when some of its G samples are right: a prompt whose pass@G is near 0 gives
no signal, so greedy accuracy after GRPO sharpens what pass@k shows rather than passing it. Writes
results/pass_at_k-<task>-<machine>.json (one entry per model and settings) and prints the table.
"""
import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from checkpoint import run_config                                   # noqa: E402
from device import machine_name, pick_device, pick_dtype            # noqa: E402
from eval import complete, load_policy, prompting_of_run            # noqa: E402
from task import is_correct, make_dataset                           # noqa: E402
from train import TrainConfig                                       # noqa: E402


def pass_at_k(n, c, k):
    """Chen et al.'s unbiased estimate of P(at least one of k samples is right), from c right of n >= k."""
    return 1.0 if n - c < k else 1.0 - math.comb(n - c, k) / math.comb(n, k)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="add2")
    ap.add_argument("--checkpoint", default=None, help="a run folder; default: the base model")
    ap.add_argument("--n_eval", type=int, default=200)
    ap.add_argument("--samples", type=int, default=16, help="n samples per prompt")
    ap.add_argument("--temperature", type=float, default=TrainConfig().grpo.temperature)
    ap.add_argument("--max_new_tokens", type=int, default=None, help="default: the run's evaluations' budget, "
                                                                    "else TrainConfig's eval_max_new_tokens")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args(argv)
    cfg = TrainConfig()
    # the run's system prompt, reply budget and format example (eval.py's), else TrainConfig's
    asked = prompting_of_run((run_config(args.checkpoint) or {}) if args.checkpoint else {})
    format_example, max_new_tokens = asked["format_example"], args.max_new_tokens or asked["max_new_tokens"]
    device = pick_device("auto")
    dtype = pick_dtype(args.dtype, device)
    model, tok = load_policy(None, args.checkpoint, device)
    model = model.to_compute_dtype(dtype)
    _, prompts = make_dataset(args.task, cfg.n_train, args.n_eval, cfg.seed, format_example)
    print(f"{args.checkpoint or 'base model'}: {len(prompts)} held-out {args.task} prompts x {args.samples} "
          f"samples at T={args.temperature}, {str(dtype).removeprefix('torch.')}", flush=True)
    greedy = complete(model, tok, prompts, 1, 0.0, max_new_tokens, asked["system_prompt"])
    sampled = complete(model, tok, prompts, args.samples, args.temperature, max_new_tokens, asked["system_prompt"])
    right = [sum(is_correct(p, t) for t in sampled[i * args.samples:(i + 1) * args.samples])
             for i, p in enumerate(prompts)]
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= args.samples]
    entry = {"model": args.checkpoint or "base", "task": args.task, "n_eval": len(prompts),
             "samples": args.samples, "temperature": args.temperature, "dtype": str(dtype).removeprefix("torch."),
             "format_example": format_example,
             "greedy": sum(is_correct(p, t) for p, t in zip(prompts, greedy)) / len(prompts),
             "pass_at_k": {k: round(sum(pass_at_k(args.samples, c, k) for c in right) / len(prompts), 4)
                           for k in ks},
             "never_right": sum(c == 0 for c in right) / len(prompts),
             "command": "python scripts/pass_at_k.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    path = ROOT / "results" / f"pass_at_k-{args.task}-{machine_name()}.json"
    data = json.loads(path.read_text()) if path.exists() else {"entries": []}
    data["entries"] = [e for e in data["entries"] if e["command"] != entry["command"]] + [entry]
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"greedy {entry['greedy']:.1%} | " + " | ".join(f"pass@{k} {v:.1%}" for k, v in entry["pass_at_k"].items())
          + f" | never right in {args.samples}: {entry['never_right']:.1%} of prompts\nwrote {path}")


if __name__ == "__main__":
    main()
