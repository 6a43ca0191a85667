"""How often the base model already answers in the requested format, under candidate system prompts and with
the format example (task.FORMAT_EXAMPLE, an earlier chat turn): the cheapest levers of the default recipe (GRPO can
only reinforce a form that some sample of a group shows).

    OMP_NUM_THREADS=1 python scripts/format_rate.py --task=larger --prompts=32 --samples=8 --temperature=1.2

For each candidate: k samples at temperature T for each of n training prompts (never held-out ones), graded by the
task's verifier; `exact` = right and exactly the answer (task.is_exact), `groups` = share of prompts with at least
one exact sample among their k (a group GRPO can learn the format from), `mixed` = share of prompts whose k samples
are neither all right nor all wrong (a group with something to learn at all).
Prints one line per candidate; writes nothing.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval import complete                                             # noqa: E402
from load_weights import load_model                                   # noqa: E402
from task import FORMAT_EXAMPLE, is_correct, is_exact, make_dataset  # noqa: E402

CANDIDATES = [       # (system prompt, format example turn)
    (None, False),
    ("Answer with only the final answer, nothing else.", False),
    ("Reply with only the answer itself: no words, no sentence, no explanation.", False),
    ("You are a calculator. You output only the answer, never a sentence.", False),
    (None, True),
]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="larger")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max_new_tokens", type=int, default=16)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--seed", type=int, default=0, help="the dataset's seed: its training prompts are asked")
    ap.add_argument("--system", action="append", help="a candidate system prompt (repeatable; default: built-in)")
    args = ap.parse_args(argv)
    model, tok = load_model("smollm2")
    if args.dtype == "bf16":
        model = model.to_compute_dtype(torch.bfloat16)
    k = args.samples
    candidates = [(system, False) for system in args.system] if args.system else CANDIDATES
    for system, shown in candidates:
        prompts = make_dataset(args.task, 1000, 200, seed=args.seed, format_example=shown)[0][:args.prompts]
        t = time.perf_counter()
        texts = complete(model, tok, prompts, k, args.temperature, args.max_new_tokens, system, seed=1)
        rep = [p for p in prompts for _ in range(k)]
        right = [is_correct(p, s) for p, s in zip(rep, texts)]
        exact = [r and is_exact(p, s) for p, s, r in zip(rep, texts, right)]
        groups = sum(any(exact[i * k:(i + 1) * k]) for i in range(len(prompts))) / len(prompts)
        mixed = sum(0 < sum(right[i * k:(i + 1) * k]) < k for i in range(len(prompts))) / len(prompts)
        greedy = complete(model, tok, prompts, 1, 0.0, args.max_new_tokens, system)
        g_exact = sum(is_correct(p, s) and is_exact(p, s) for p, s in zip(prompts, greedy)) / len(prompts)
        name = f"{system!r}" + (f" + example {FORMAT_EXAMPLE[1]!r}" if shown else "")
        print(f"{name}: T={args.temperature} right {sum(right) / len(rep):.1%} exact {sum(exact) / len(rep):.1%} "
              f"groups-with-exact {groups:.0%} mixed {mixed:.0%} | greedy exact {g_exact:.0%} | e.g. {texts[0]!r} "
              f"{texts[1]!r} ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
