"""The default recipe's parts: the `short` reward component (partial format credit, never for a wrong reply),
the paraphrase templates (held-out questions reworded, never seen in training), the periodic held-out check,
and the same system prompt and format example at train and at eval."""
import json
import re

import pytest

import eval as eval_script
import train
from conftest import tiny_config
from eval import paraphrased
from task import FORMAT_EXAMPLE, TASKS, Prompt, WeightedReward, is_correct, is_exact, make_dataset, short_reward
from verify import audit_cases

AUDIT_CASES = audit_cases()


def test_short_never_pays_a_wrong_reply_on_any_audit_case():
    for prompt, response, kind, want_correct, _ in AUDIT_CASES:
        got = short_reward([prompt], [response])[0]
        if not want_correct or not is_correct(prompt, response):
            assert got == 0.0, (prompt.question, response, kind)
        assert 0.0 <= got <= 1.0
        if is_correct(prompt, response) and is_exact(prompt, response):
            assert got == 1.0, (response, kind)


def test_short_pays_a_shorter_right_reply_more_by_hand_values():
    p = Prompt("Which is larger, 42 or 57? Answer with just the number.", 57, "larger")
    replies = ["57.", "The answer is 57.", "57 is larger than 42.", "The larger number is 57.", "42",
               "42 is larger than 57.", "Well, " * 10 + "57"]
    # 14, 18 and 21 characters beyond "57" of SHORT_SPAN = 40; the wrong and the false get nothing
    assert short_reward([p] * len(replies), replies) == [1.0, 0.65, 0.55, 0.475, 0.0, 0.0, 0.0]
    both = WeightedReward({"correct": 1, "format": 1, "short": 1})
    assert both([p, p, p], ["57", "The answer is 57.", "42"]) == [1.0, pytest.approx(1.65 / 3), 0.0]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_paraphrases_reword_every_held_out_question_and_training_never_sees_them(task):
    train_set, eval_set = make_dataset(task, 1000, 200, seed=0)
    reworded = paraphrased(eval_set)
    assert len(TASKS[task].paraphrases) == 3 and len(reworded) == len(eval_set)
    train_questions = {p.question for p in train_set}
    for p, q in zip(eval_set, reworded):
        assert q.question != p.question and q.question not in train_questions
        assert (q.answer, q.task) == (p.answer, p.task)
    # no wording of theirs is a training one: the questions with their numbers, quoted words and word lists
    # masked ("Between # and #, name the greater one. ...") have no shape in common with training's
    shape = lambda q: re.sub(r"'[^']*'|\b\w+(?:, \w+)+\b|\d+", "#", q)
    train_shapes, new_shapes = {shape(q) for q in train_questions}, {shape(q.question) for q in reworded}
    assert len(new_shapes) == 3 and not train_shapes & new_shapes, (train_shapes, new_shapes)
    # all three templates are used, and the right answer stays right
    assert len({q.question.split()[0] for q in reworded}) >= 2
    assert all(is_correct(q, str(q.answer) if not isinstance(q.answer, tuple) else ", ".join(map(str, q.answer)))
               for q in reworded[:20])


def test_eval_every_logs_held_out_accuracy_and_the_end_prints_paraphrases(tiny_checkpoint, tmp_path, capsys):
    cfg = tiny_config(tiny_checkpoint, tmp_path, eval_every=2, eval_subset=3, steps=4)
    train.train(cfg)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert ["eval_accuracy" in m for m in log] == [False, True, False, True]
    assert all(0 <= m["eval_accuracy"] <= 1 for m in log if "eval_accuracy" in m)
    printed = capsys.readouterr().out
    assert "on the same questions reworded" in printed and printed.count("| eval_accuracy ") == 2


def test_eval_uses_the_system_prompt_the_run_trained_with(tiny_checkpoint, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_checkpoint, tmp_path, steps=1, eval_before=False, eval_paraphrase=False)
    cfg.grpo.system_prompt = "Reply with the answer only."
    train.train(cfg)
    seen = {}

    def fake_evaluate(model, tok, prompts, samples, temperature, max_new_tokens, system_prompt, **kw):
        seen["system"], seen["questions"], seen["prompts"] = system_prompt, [p.question for p in prompts], prompts
        return {"accuracy": 0, "format": 0, "reward": 0, "completion_chars": 0, "examples": []}
    monkeypatch.setattr(eval_script, "evaluate", fake_evaluate)
    eval_script.main([f"--checkpoint={tmp_path}", "--paraphrase", "--n_eval=4", "--dtype=fp32", "--device=cpu"])
    assert seen["system"] == "Reply with the answer only."
    assert seen["questions"][0].startswith("Add ")          # add1's first paraphrase template
    assert train.TrainConfig().format_example and all(p.format_example == FORMAT_EXAMPLE for p in seen["prompts"])


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_format_example_is_on_every_prompt_and_is_no_task_question(task):
    train_set, eval_set = make_dataset(task, 1000, 200, seed=0, format_example=True)
    plain_train, plain_eval = make_dataset(task, 1000, 200, seed=0)
    assert train_set == plain_train and eval_set == plain_eval    # the same questions; only what is shown before
    for p in train_set + eval_set + paraphrased(eval_set):
        assert p.format_example == FORMAT_EXAMPLE
    assert all(p.format_example is None for p in plain_train + plain_eval)
    # it tells no answer of the task: its question is none of them, and it is graded by no task's verifier
    questions = {p.question for p in train_set + eval_set}
    assert FORMAT_EXAMPLE[0] not in questions and all(FORMAT_EXAMPLE[0] not in q for q in questions)
    assert FORMAT_EXAMPLE[1] == "3" and FORMAT_EXAMPLE[0].endswith("Answer with just the number.")


def test_eval_follows_the_run_on_the_format_example(tiny_checkpoint, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_checkpoint, tmp_path, steps=1, eval_before=False, eval_paraphrase=False)
    cfg.format_example = False
    train.train(cfg)
    seen = []
    monkeypatch.setattr(eval_script, "evaluate", lambda model, tok, prompts, *a, **kw: seen.append(prompts) or {
        "accuracy": 0, "format": 0, "reward": 0, "completion_chars": 0, "examples": []})
    for flag in [], ["--format_example=true"]:
        eval_script.main([f"--checkpoint={tmp_path}", "--n_eval=4", "--dtype=fp32", "--device=cpu"] + flag)
    assert [p.format_example for p in seen[0]] == [None] * 4            # the run had none: neither has its eval
    assert [p.format_example for p in seen[1]] == [FORMAT_EXAMPLE] * 4  # unless asked


def test_pass_at_k_is_the_share_of_k_subsets_holding_a_right_sample():
    """Oracle: every k-subset of n samples enumerated (scripts/pass_at_k.py's unbiased estimate)."""
    import itertools
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from pass_at_k import pass_at_k
    for n, c, k in [(4, 1, 2), (6, 2, 3), (6, 0, 4), (6, 6, 1), (8, 3, 1), (8, 5, 4), (5, 1, 5)]:
        samples = [1] * c + [0] * (n - c)
        subsets = list(itertools.combinations(samples, k))
        assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets), abs=1e-12)
    assert pass_at_k(4, 1, 2) == 0.5
