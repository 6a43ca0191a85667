"""LLM-as-a-judge: a reward component that asks a frozen model whether a reply answers the question correctly.

    judge = P(Yes) / (P(Yes) + P(No))      the judge's next-token probabilities after the question below

One forward pass per reply (batched), no sampling: the judge reads the question and the reply and we take the
probability of its first answer token being "Yes" rather than "No". The judge is the frozen reference model
by default (train.py --reward_weights=correct:1,judge:1), or any checkpoint (--judge=runs/other).

    python judge.py --checkpoint=runs/default      # agreement with the task's verifier, base and trained replies

A 135M judge is a weak one: the agreement it measures (results/judge_agreement.json) is the lesson, and why
this project's default reward is the rule-based verifier.
"""
import argparse
import copy
import json
import os
import sys
from pathlib import Path

import torch

from engine import left_pad

JUDGE_QUESTION = ("Here is a question and a proposed answer.\nQuestion: {question}\nProposed answer: {reply}\n"
                  "Is the proposed answer correct? Answer Yes or No.")
MAX_REPLY_CHARS = 300      # a reply longer than this is judged on its beginning


def verdict_token_ids(tok):
    """The token ids of "Yes" and "No" as the first token of the judge's answer (after "A:" for plain models,
    whose next word comes with its space)."""
    space = "" if tok.chat else " "
    return tok.encode(space + "Yes")[0], tok.encode(space + "No")[0]


def judge_prompt(tok, question, reply):
    """Token ids of the judge's one-turn conversation about one reply."""
    return tok.chat_prompt(JUDGE_QUESTION.format(question=question, reply=reply[:MAX_REPLY_CHARS]), system=None)


@torch.no_grad()
def judge_probabilities(model, tok, prompts, responses, batch_size=32):
    """P(Yes) / (P(Yes) + P(No)) for each (prompt, reply): a list of len(prompts) floats in [0, 1]."""
    yes, no = verdict_token_ids(tok)
    device = model.embed.weight.device
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = [judge_prompt(tok, p.question, r) for p, r in zip(prompts[i:i + batch_size], responses[i:i + batch_size])]
        for p, prompt_ids in zip(prompts[i:i + batch_size], ids):
            if len(prompt_ids) > model.cfg.block_size:
                raise ValueError(f"the judge's prompt about the question {p.question!r:.60} is {len(prompt_ids)} "
                                 f"tokens, longer than the judge model's context ({model.cfg.block_size})")
        x, mask = left_pad(ids, tok.pad_id, device)
        logits = model(x, attention_mask=mask, logits_to_keep=1)[:, -1].float()       # (b, V), the next token
        out += torch.softmax(logits[:, [yes, no]], dim=-1)[:, 0].tolist()
    return out


def make_judge(model, tok, batch_size=32):
    """The judge as a reward component, (prompts, responses) -> list[float], for task.WeightedReward."""
    return lambda prompts, responses: judge_probabilities(model, tok, prompts, responses, batch_size)


def run_judge(cfg, ref_model, policy, tok, device):
    """train.py's judge component: --judge=ref asks the frozen start (the reference model, or a frozen copy of
    the policy when beta = 0 left none), --judge=runs/other that run's checkpoint."""
    if cfg.judge == "ref":
        model = ref_model if ref_model is not None else copy.deepcopy(policy).requires_grad_(False)
    else:
        from eval import load_policy
        model = load_policy(cfg.model, cfg.judge, device)[0].requires_grad_(False)
    return make_judge(model, tok)


def agreement(judged, verdicts):
    """How often (judge probability > 0.5) equals the verifier's verdict, with the two kinds of disagreement."""
    says_yes = [p > 0.5 for p in judged]
    n = len(verdicts)
    return {"n": n, "agreement": sum(a == b for a, b in zip(says_yes, verdicts)) / n,
            "judge_yes_verifier_no": sum(a and not b for a, b in zip(says_yes, verdicts)),
            "judge_no_verifier_yes": sum(b and not a for a, b in zip(says_yes, verdicts)),
            "mean_judge_if_right": _mean([p for p, v in zip(judged, verdicts) if v]),
            "mean_judge_if_wrong": _mean([p for p, v in zip(judged, verdicts) if not v]),
            "auc": ranking_auc(judged, verdicts)}


def ranking_auc(judged, verdicts):
    """P(a right reply gets a higher judge probability than a wrong one), ties half: 0.5 is a judge that cannot
    tell them apart at all, whatever its threshold; None without both kinds."""
    right = [p for p, v in zip(judged, verdicts) if v]
    wrong = [p for p, v in zip(judged, verdicts) if not v]
    if not right or not wrong:
        return None
    return sum((a > b) + 0.5 * (a == b) for a in right for b in wrong) / (len(right) * len(wrong))


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _fmt(x):
    return "-" if x is None else f"{x:.3f}"


def check_out(out):
    """--out can be written (checked before any judging, creating nothing): not a folder, and its nearest
    existing folder writable."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out={out}: is a folder; name a .json file")
    existing = out.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ValueError(f"--out={out}: cannot write there")


def main(argv=None):
    from configurator import check_option
    from device import pick_device, pick_dtype
    from eval import load_policy
    from load_weights import load_model
    from task import get_task, make_dataset

    ap = argparse.ArgumentParser(description="Agreement of the LLM judge with the task's verifier.")
    ap.add_argument("--checkpoint", default=None, help="a trained run folder: its replies are judged too")
    ap.add_argument("--task", default="larger", help="a task name or a .py / .jsonl task file (a .py "
                                                      "file is code: loading it runs it)")
    ap.add_argument("--n_eval", type=int, default=100)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--out", default="results/judge_agreement.json")
    args = ap.parse_args(argv)
    try:
        check_option("n_eval", args.n_eval)
        check_out(args.out)
        task = get_task(args.task)
        device = pick_device("auto")                # as train.py and eval.py: cuda, then mps, then cpu
        dtype = pick_dtype("auto", device)
        judge, tok = load_model(args.model, device)
        judge = judge.to_compute_dtype(dtype)
        _, eval_set = make_dataset(task, n_eval=args.n_eval)
        policies = {"base": judge}
        if args.checkpoint:
            policies["trained"] = load_policy(args.model, args.checkpoint, device)[0].to_compute_dtype(dtype)
        report = judge_policies(policies, judge, tok, eval_set, args, argv)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"written to {args.out}")


def judge_policies(policies, judge, tok, eval_set, args, argv):
    """The agreement report: each policy's greedy replies to the held-out prompts, judged and verified."""
    from eval import complete
    from task import is_correct
    report = {"command": "python judge.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "task": args.task, "judge": f"{args.model} (the frozen base model), {JUDGE_QUESTION!r}",
              "grader": f"task verifier ({args.task})"}
    for name, policy in policies.items():
        replies = complete(policy, tok, eval_set, max_new_tokens=32)
        judged = judge_probabilities(judge, tok, eval_set, replies)
        verdicts = [is_correct(p, r) for p, r in zip(eval_set, replies)]
        report[name] = agreement(judged, verdicts) | {"examples": [
            {"question": p.question, "reply": r, "verifier": v, "judge": round(j, 3)}
            for p, r, v, j in list(zip(eval_set, replies, verdicts, judged))[:8]]}
        a = report[name]
        print(f"{name} replies: the judge agrees with the verifier on {a['agreement']:.1%} of {a['n']} "
              f"(judge yes / verifier no: {a['judge_yes_verifier_no']}, judge no / verifier yes: "
              f"{a['judge_no_verifier_yes']}); mean P(Yes) on right replies {_fmt(a['mean_judge_if_right'])}, "
              f"on wrong ones {_fmt(a['mean_judge_if_wrong'])}; ranking AUC {_fmt(a['auc'])}")
    return report


if __name__ == "__main__":
    main()
