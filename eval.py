"""Held-out evaluation: mean reward and accuracy of a model (the base model or a checkpoint) on a task.

    python eval.py                                   # the base model on the default task
    python eval.py --checkpoint=runs/default --samples=4

Accuracy is graded by the task's verifier (task.py: right only if the reply commits to the right answer and
asserts nothing false), whatever the reward's weights; `format` is the share of replies that are exactly the
answer as the prompt asks ("57"). Greedy decoding gives one number per prompt (accuracy); sampling k
completions per prompt at the training temperature shows what the policy does during training (sampled
accuracy = mean over the k samples).
"""
import argparse
import re
import sys
from dataclasses import asdict, replace

import torch

from checkpoint import run_config, weights_path
from configurator import check_option
from device import pick_device, pick_dtype
from load_weights import check_fits, load_model, read_safetensors
from engine import generate
from show import clip
from task import (TASKS, WeightedReward, get_reward, get_task, is_correct, is_exact, make_dataset,
                  parse_weights)

GRADER = "the task's verifier"     # what every accuracy below counts (task.py)


@torch.no_grad()
def complete(model, tok, prompts, num_samples=1, temperature=0.0, max_new_tokens=32, system_prompt=None,
             batch_size=64, seed=0):
    """Decoded completions for task prompts: a list of len(prompts) * num_samples strings (prompt-major)."""
    texts = []
    per_batch = max(1, batch_size // num_samples)
    for start in range(0, len(prompts), per_batch):
        chunk = prompts[start:start + per_batch]
        ids = [tok.chat_prompt(p.question, system=system_prompt, example=p.format_example) for p in chunk]
        seeds = [seed * 1_000_003 + start + i for i in range(len(chunk))]
        out, mask = generate(model, ids, num_samples=num_samples, max_new_tokens=max_new_tokens,
                             temperature=temperature, eos_id=tok.stop_ids, pad_id=tok.pad_id, seeds=seeds)
        texts += [tok.decode_completion(o, m) for o, m in zip(out.tolist(), mask.tolist())]
    return texts


def evaluate(model, tok, prompts, samples=0, temperature=1.0, max_new_tokens=32, system_prompt=None,
             n_examples=5, reward_fn=get_reward, progress=None):
    """{'accuracy': greedy accuracy (the task's verifier), 'format': share of greedy replies that are exactly the
    answer, 'reward': greedy mean reward (reward_fn), 'sampled_accuracy' (when samples > 0), 'completion_chars':
    mean greedy completion length in characters, 'examples': the first n_examples [(question, output, reward, right)],
    'wrong_examples': the first n_examples of those that are wrong}.
    progress: a function called with a line of text before each pass (train.py prints it)."""
    if progress:
        progress(f"  greedy completions for {len(prompts)} held-out prompts ...")
    greedy = complete(model, tok, prompts, 1, 0.0, max_new_tokens, system_prompt)
    rewards = reward_fn(prompts, greedy)
    right = [is_correct(p, t) for p, t in zip(prompts, greedy)]
    examples = list(zip([p.question for p in prompts], greedy, rewards, right))
    result = {"accuracy": sum(right) / len(prompts),
              "format": sum(ok and is_exact(p, t) for p, t, ok in zip(prompts, greedy, right)) / len(prompts),
              "reward": sum(rewards) / len(prompts),
              "completion_chars": sum(len(t) for t in greedy) / len(greedy),
              "examples": examples[:n_examples], "wrong_examples": [e for e in examples if not e[3]][:n_examples]}
    if samples > 0:
        if progress:
            progress(f"  {samples} sampled completions each ...")
        sampled = complete(model, tok, prompts, samples, temperature, max_new_tokens, system_prompt)
        repeated = [p for p in prompts for _ in range(samples)]
        result["sampled_accuracy"] = sum(is_correct(p, t) for p, t in zip(repeated, sampled)) / len(sampled)
    return result


def paraphrased(prompts):
    """The held-out prompts reworded by their task's paraphrase templates (task.Task.paraphrases: (regex,
    replacement) pairs that training never uses), prompt i by template i mod 3; same answers, same verifier.
    [] for a task without templates (a task file). Training never sees these: its questions all have the
    task's one wording, and the numbers and words here are those of held-out questions."""
    out = []
    for i, p in enumerate(prompts):
        templates = TASKS[p.task].paraphrases if p.task in TASKS else ()
        if not templates:
            return []
        pattern, replacement = templates[i % len(templates)]
        question, n = re.subn(pattern, replacement, p.question)
        if n != 1:
            raise ValueError(f"paraphrase template {pattern!r} does not match {p.question!r}")
        out.append(replace(p, question=question))           # the same answer, task, format example
    return out


def format_examples(examples, width=70):
    """One line per example: prompt -> output -> reward, right or wrong (the verifier). Long outputs keep
    their end, where an answer usually is."""
    return "\n".join(f"  {clip(q, width)} -> {clip(o, width, keep_end=True)!r} -> {r:.2f} "
                     f"{'right' if ok else 'wrong'}" for q, o, r, ok in examples)


def load_policy(model_name=None, checkpoint=None, device="cpu"):
    """The base model, with a trained checkpoint's weights (a run folder, a checkpoint folder or a
    model.safetensors) on top, read and checked by the loader train.py's --resume uses. Without a model name,
    the one the run was trained from (its config.json), else smollm2."""
    if checkpoint:
        checkpoint = weights_path(checkpoint)
        model_name = model_name or (run_config(checkpoint) or {}).get("model")
    model, tok = load_model(model_name or "smollm2", device)
    if checkpoint:
        weights, _ = read_safetensors(checkpoint, device)
        model.load_state_dict(check_fits(model, weights, checkpoint))
    return model, tok


def task_of_run(run, checkpoint):
    """The task a run was trained on (its config.json), unless it is a .py file: a task file is code, run only
    when you name it on the command line, never because a run folder (perhaps someone else's) names it."""
    task = run.get("task", "larger")
    if str(task).endswith(".py"):
        raise ValueError(f"{checkpoint} was trained on the task file {task}, which eval.py runs only when you "
                         f"name it (it is Python code: read it first): add --task={task}")
    return task


def prompting_of_run(run):
    """How a run (its config.json; {} for none) asked its questions, so that an evaluation asks them the same way:
    {'system_prompt', 'max_new_tokens' (its evaluations' budget; older runs: their training one), 'format_example'
    (older runs: none)}; without a run, TrainConfig's defaults."""
    from train import TrainConfig           # here: train.py imports this module
    recipe = run.get("grpo") or asdict(TrainConfig().grpo)
    return {"system_prompt": recipe["system_prompt"],
            "max_new_tokens": run.get("eval_max_new_tokens") or (
                recipe["max_new_tokens"] if run else TrainConfig().eval_max_new_tokens),
            "format_example": run.get("format_example", False) if run else TrainConfig().format_example}


def check_args(args):
    """Every flag checked before any model is loaded, by the rules train.py applies to the same options."""
    for name, value, like in [("n_eval", args.n_eval, None), ("seed", args.seed, None),
                              ("samples", args.samples, "eval_samples"), ("temperature", args.temperature, None),
                              ("max_new_tokens", args.max_new_tokens, None)]:
        if value is not None:           # max_new_tokens None: the run's own (or the default), filled in later
            check_option(name, value, like)
    if args.samples > 0 and args.temperature == 0:
        raise ValueError(f"--samples={args.samples} at --temperature=0 would repeat the greedy reply: sample "
                         "at a temperature > 0, or use --samples=0")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: the model of the --checkpoint's run, else smollm2")
    ap.add_argument("--checkpoint", default=None, help="a run folder (its current checkpoint), a checkpoint folder "
                                                       "or a model.safetensors written by train.py")
    ap.add_argument("--task", default=None, help="the task to evaluate (default: the --checkpoint run's task, else "
                                                 "larger); a task name or a .py / .jsonl task file (a .py file "
                                                 "is code: it runs only when named here)")
    ap.add_argument("--reward_weights", default=None, help="the weights of the mean reward shown "
                                                             "(default: the --checkpoint run's, else TrainConfig's)")
    ap.add_argument("--n_eval", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="the dataset seed used in training")
    ap.add_argument("--samples", type=int, default=0, help="also sample k completions per prompt")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max_new_tokens", type=int, default=None, help="default: the --checkpoint run's "
                                                                    "eval_max_new_tokens, else TrainConfig's")
    ap.add_argument("--system_prompt", default=None, help="default: the --checkpoint run's (what it trained with), "
                                                          "else the TrainConfig default")
    ap.add_argument("--format_example", default=None, choices=["true", "false"],
                    help="show task.FORMAT_EXAMPLE before each question (default: as the --checkpoint run did, "
                         "else TrainConfig's)")
    ap.add_argument("--paraphrase", action="store_true", help="evaluate the held-out questions reworded by the "
                                                              "task's paraphrase templates (never seen in training)")
    ap.add_argument("--dtype", default="auto", help="auto | fp32 | bf16")
    ap.add_argument("--device", default="auto", help="auto (the first of cuda, mps, cpu that is there) | cuda | "
                                                     "cuda:N | mps | cpu")
    args = ap.parse_args(argv)
    try:
        check_args(args)
        run = (run_config(args.checkpoint) or {}) if args.checkpoint else {}
        args.task = args.task or task_of_run(run, args.checkpoint)
        task = get_task(args.task)
        from train import TrainConfig       # here: train.py imports this module
        asked = prompting_of_run(run)       # what a flag leaves unset: as the run prompted, else the defaults
        args.system_prompt = asked["system_prompt"] if args.system_prompt is None else args.system_prompt
        args.max_new_tokens = asked["max_new_tokens"] if args.max_new_tokens is None else args.max_new_tokens
        args.format_example = (asked["format_example"] if args.format_example is None
                               else args.format_example == "true")
        weights = args.reward_weights or run.get("reward_weights") or TrainConfig().reward_weights
        reward_fn = WeightedReward(parse_weights(weights))
        device = pick_device(args.device)
        dtype = pick_dtype(args.dtype, device)
        name = args.model or (f"the model of {args.checkpoint}" if args.checkpoint else "smollm2")
        print(f"{name} in {str(dtype).removeprefix('torch.')}{' (auto)' if args.dtype == 'auto' else ''} "
              f"on {device}{' (auto: the first of cuda, mps, cpu)' if args.device == 'auto' else ''}")
        model, tok = load_policy(args.model, args.checkpoint, device)
        model = model.to_compute_dtype(dtype)
        _, eval_set = make_dataset(task, n_eval=args.n_eval, seed=args.seed, format_example=args.format_example)
        if args.paraphrase:
            eval_set = paraphrased(eval_set)
            if not eval_set:
                raise ValueError(f"--paraphrase: task {args.task!r} has no paraphrase templates")
        res = evaluate(model, tok, eval_set, args.samples, args.temperature, args.max_new_tokens, args.system_prompt,
                       reward_fn=reward_fn)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    line = (f"{args.task}: greedy accuracy {res['accuracy']:.1%} (graded by {GRADER}), exact format "
            f"{res['format']:.1%}, mean reward {res['reward']:.3f}")
    if "sampled_accuracy" in res:
        line += f", sampled accuracy {res['sampled_accuracy']:.1%} ({args.samples} per prompt, T={args.temperature})"
    print(f"{line}, mean completion {res['completion_chars']:.0f} chars on {len(eval_set)} held-out prompts"
          + (" reworded (--paraphrase)" if args.paraphrase else ""))
    print(format_examples(res["examples"]))



def report_run(before, after, paraphrase, history, steps, n_eval, out_dir, log=print):
    """The end of train.py's run: held-out accuracy before -> after (and reworded), examples of each, the
    run's figure (show.run_figure) and report.html (report.py). before/paraphrase: None when not run."""
    from checkpoint import current
    from report import write_report         # here: report.py imports this module
    from show import save_run_figure
    evals = {}
    if before is not None:
        log(f"\nheld-out greedy accuracy ({GRADER}): before {before['accuracy']:.1%} -> after "
            f"{after['accuracy']:.1%} ({after['accuracy'] - before['accuracy']:+.1%}); exact format "
            f"{before['format']:.1%} -> {after['format']:.1%}; mean completion "
            f"{before['completion_chars']:.0f} -> {after['completion_chars']:.0f} chars")
        log("before:\n" + format_examples(before["examples"]))
        evals["before"] = (0, before["accuracy"])
    if paraphrase is not None:
        log(f"held-out accuracy {after['accuracy']:.1%}; on the same questions reworded (templates "
            f"training never sees) {paraphrase['accuracy']:.1%}")
    log("after:\n" + format_examples(after["examples"]))
    evals["after"] = (steps, after["accuracy"])
    if history:
        save_run_figure(history, evals, out_dir / "reward_curve.png")
        log(f"reward curve: {out_dir / 'reward_curve.png'}; log: {out_dir / 'log.jsonl'}; completions: "
            f"{out_dir / 'completions.jsonl'}; weights: "
            f"{current(out_dir) / 'model.safetensors'}")
        evals = {"before": before, "after": after, "paraphrase": paraphrase, "n_eval": n_eval}
        log(f"report: {write_report(out_dir, evals)}")


if __name__ == "__main__":
    main()
