import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import task  # noqa: E402
from task import (TASKS, Prompt, WeightedReward, correct_reward, format_reward, get_reward,  # noqa: E402
                  get_task, is_correct, make_dataset, parse_weights)
from verify import audit, audit_cases, read_claims, sanity_check, words_to_digits  # noqa: E402

AUDIT_CASES = audit_cases()

LARGER = Prompt("Which is larger, 42 or 57? Answer with just the number.", 57, "larger")


@pytest.mark.parametrize("prompt,response,kind,want_correct,want_format", AUDIT_CASES,
                         ids=[f"{p.task}:{r[:25]!r}" for p, r, *_ in AUDIT_CASES])
def test_audit_row(prompt, response, kind, want_correct, want_format):
    """Every audit row: each component as a fair grader would score it, except the documented known rows,
    where the verifier is stricter (if one starts passing, update its row)."""
    got = (correct_reward([prompt], [response])[0], format_reward([prompt], [response])[0])
    if kind.startswith("known"):
        assert got[0] < want_correct
    else:
        assert got == (want_correct, want_format)


def test_audit_counts_and_prints_every_row():
    lines = []
    assert audit(print_fn=lines.append) == (0, 0)
    rows = [l for l in lines if l.startswith("  '") or l.startswith('  "')]
    assert len(rows) == len(AUDIT_CASES)
    assert "0 false positives, 0 false negatives" in lines[-1] and "known" in lines[-1]
    assert all(len(l) < 150 for l in "\n".join(lines).splitlines())
    assert {p.task for p, *_ in AUDIT_CASES} == set(TASKS)          # every task has its part


def test_audit_reports_a_lenient_verifier(monkeypatch):
    """A verifier that pays the last integer (the old rule) shows up as false positives in the audit."""
    last_integer = lambda p, r: bool(re.findall(r"\d+", r)) and int(re.findall(r"\d+", r)[-1]) == p.answer
    monkeypatch.setitem(TASKS, "larger", task.Task("larger", "d", task.make_larger, last_integer))
    fp, fn = audit([c for c in AUDIT_CASES if c[0].task == "larger"], print_fn=lambda s: None)
    assert fp >= 2
    assert sanity_check("larger", print_fn=lambda s: None) is False


def test_audit_grades_with_the_functions_given():
    """The notebook audits its own pasted copies: a lenient correct component given by name is the one graded."""
    cases = [c for c in AUDIT_CASES if c[0].task == "larger"]
    lenient = lambda prompts, replies: [float(str(p.answer) in r) for p, r in zip(prompts, replies)]
    assert audit(cases, print_fn=lambda s: None) == (0, 0)
    assert audit(cases, print_fn=lambda s: None, functions={"correct": lenient})[0] >= 2
    assert sanity_check("larger", print_fn=lambda s: None, functions={"correct": lenient}) is False
    assert sanity_check("larger", print_fn=lambda s: None, functions={"correct": correct_reward}) is True


def test_the_issue_examples_score_as_a_fair_grader_would():
    assert get_reward([Prompt("Which is larger, 15 or 43? Answer with just the number.", 43, "larger")],
                      ["15 is larger than 43."]) == [0.0]
    assert get_reward([LARGER], ["57 is larger than 42."]) == [0.5]
    assert get_reward([LARGER], ["57"]) == [1.0]


def test_get_reward_range_and_errors():
    responses = [r for p, r, *_ in AUDIT_CASES]
    rewards = get_reward([p for p, *_ in AUDIT_CASES], responses)
    assert all(0.0 <= r <= 1.0 for r in rewards) and {0.0, 0.5, 1.0} <= set(rewards)
    assert get_reward([], []) == []
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        get_reward([LARGER, LARGER], ["57"])


def test_get_reward_is_the_default_weighted_reward():
    """Oracle: WeightedReward with the default weights (what train.py uses) on every audit case."""
    prompts, responses = [p for p, *_ in AUDIT_CASES], [r for _, r, *_ in AUDIT_CASES]
    assert get_reward(prompts, responses) == WeightedReward()(prompts, responses)


def test_format_alone_never_pays():
    """A wrong answer in exactly the requested format earns nothing, under any weights."""
    for weights in [None, {"correct": 1, "format": 0.5}, {"format": 1}, {"correct": 0, "format": 3}]:
        assert WeightedReward(weights)([LARGER], ["42"]) == [0.0]
        assert WeightedReward(weights)([LARGER], ["57"]) == [1.0]


def test_weights_and_components():
    r = WeightedReward({"correct": 1, "format": 0.5})
    parts = r.components([LARGER, LARGER, LARGER], ["57", "The larger number is 57.", "42"])
    assert parts == {"correct": [1.0, 1.0, 0.0], "format": [1.0, 0.0, 0.0]}
    assert r.combine(parts) == [1.0, pytest.approx(1 / 1.5), 0.0]
    assert WeightedReward({"correct": 1})([LARGER], ["57 is larger than 42."]) == [1.0]
    assert set(WeightedReward({"correct": 1, "format": 0}).components([LARGER], ["57"])) == {"correct"}
    with pytest.raises(ValueError, match="judge model"):
        WeightedReward({"judge": 1})


@pytest.mark.parametrize("text,expected", [
    ("correct:1,format:0.5", {"correct": 1.0, "format": 0.5}),
    ("correct:2", {"correct": 2.0}), (" correct:1 , judge:0.5 ", {"correct": 1.0, "judge": 0.5})])
def test_parse_weights(text, expected):
    assert parse_weights(text) == expected


@pytest.mark.parametrize("text,words", [
    ("correct:1,style:1", ["'style'", "correct, format, short, judge"]), ("correct", ["'correct'", ">= 0"]),
    ("correct:-1", [">= 0"]), ("correct:x", ["'correct:x'"]), ("correct:0", ["positive"]), ("", ["positive"])])
def test_parse_weights_errors(text, words):
    with pytest.raises(ValueError) as e:
        parse_weights(text)
    msg = str(e.value)
    assert "\n" not in msg and "--reward_weights" in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("text,commitments,holds", [
    ("57", [57], True), ("57 is larger than 42.", [57], True), ("42 < 57", [57], True),
    ("15 is larger than 43", [43], False), ("3 + 5 = 8", [8], True), ("3 + 5 = 9", [9], False),
    ("2 + 3 * 4 = 14", [14], True), ("10 - 4 = 6", [6], True), ("10-4 = 6", [6], True), ("x = -3", [-3], True),
    ("3 + 5", [], True), ("57 or 42", [57, 42], True), ("8/0 = 1", [], False), ("7 < 19 < 42", [42], True),
    ("57 is not larger than 42", [57], False), ("2.5 + 2.5 = 5", [5], True), ("", [], True),
    ("the larger one is fifty-seven", [57], True), ("one hundred and ninety-eight", [198], True),
])
def test_read_claims(text, commitments, holds):
    assert read_claims(text) == (commitments, holds)


def test_number_words_only_without_digits():
    assert words_to_digits("seven and twenty-one") == "7 and 21"
    assert words_to_digits("which one is larger? 57") == "which one is larger? 57"
    assert words_to_digits("Which one? seventeen") == "Which one? 17"
    assert words_to_digits("someone often") == "someone often"      # no number inside words


def test_verifiers_are_linear_on_long_replies():
    n = 1_000_000
    assert is_correct(LARGER, "a" * n + "57")
    assert not is_correct(LARGER, "9" * n)                          # a number far too long equals nothing
    assert not is_correct(LARGER, "57 " + "-" * n + " 42")


def recompute(name: str, question: str) -> int:
    """Independent answer from the question text alone."""
    suffix = r"\? Answer with just the number\.$"
    if name in ("add1", "add2"):
        a, b = map(int, re.fullmatch(r"What is (\d+) \+ (\d+)" + suffix, question).groups())
        lo, hi = (0, 9) if name == "add1" else (10, 99)
        assert lo <= a <= hi and lo <= b <= hi
        return a + b
    if name == "larger":
        a, b = map(int, re.fullmatch(r"Which is larger, (\d+) or (\d+)" + suffix, question).groups())
        assert a != b and 10 <= min(a, b) and max(a, b) <= 99
        return max(a, b)
    if name == "count_items":
        items = re.fullmatch(r"How many items are in this list: (.+)" + suffix, question).group(1).split(", ")
        assert 3 <= len(items) <= 9 and all(w.isalpha() for w in items)
        return len(items)
    if name == "count_letter":
        c, word = re.fullmatch(r"How many times does the letter '([a-z])' appear in '([a-z]+)'" + suffix,
                               question).groups()
        return word.count(c)
    if name == "reverse":
        word = re.fullmatch(r"Write the word '([a-z]+)' backwards\. Answer with just the reversed word\.", question).group(1)
        assert 4 <= len(word) <= 7 and word != word[::-1]
        return word[::-1]
    if name == "sort":
        numbers = re.fullmatch(r"Sort these numbers from smallest to largest: ([\d, ]+)\. Answer with just the "
                               r"sorted numbers, separated by commas\.", question).group(1).split(", ")
        assert 3 <= len(numbers) <= 5
        return tuple(sorted(map(int, numbers)))
    raise AssertionError(f"no recompute for {name}")


@pytest.mark.parametrize("name", list(TASKS))
def test_task_answers_are_correct(name):
    train, evals = make_dataset(name, seed=1)
    for p in train + evals:
        assert recompute(name, p.question) == p.answer and p.task == name
        assert is_correct(p, task.answer_text(p.answer))               # the answer itself passes its verifier


def test_task_registry():
    assert {"add1", "add2", "larger", "count_items", "count_letter", "reverse", "sort"} <= set(TASKS)
    for name, t in TASKS.items():
        assert t.name == name and t.description and "\n" not in t.description
    assert get_task("add2") is TASKS["add2"]


def test_count_letter_answers_cover_0_to_3():
    train, evals = make_dataset("count_letter")
    assert {p.answer for p in train + evals} == {0, 1, 2, 3}
    assert all(max(w.count(c) for c in w) <= 3 for w in task.LETTER_WORDS)


def test_get_task_unknown():
    with pytest.raises(ValueError) as e:
        get_task("add3")
    msg = str(e.value)
    assert "'add3'" in msg and "\n" not in msg
    assert all(name in msg for name in TASKS)


@pytest.mark.parametrize("name", [n for n in TASKS if n not in ("add1", "reverse")])
def test_make_dataset_full_tasks(name):
    train, evals = make_dataset(name)
    assert len(train) == 1000 and len(evals) == 200
    qtrain, qeval = [p.question for p in train], [p.question for p in evals]
    assert len(set(qtrain)) == 1000 and len(set(qeval)) == 200
    assert not set(qtrain) & set(qeval)


def test_make_dataset_add1_small_space():
    train, evals = make_dataset("add1")
    assert len(train) == 1000 and 1 <= len(evals) <= 200
    qtrain, qeval = {p.question for p in train}, {p.question for p in evals}
    assert not qtrain & qeval
    assert len(qtrain | qeval) == 100              # all 10 * 10 questions are used
    assert len(evals) == 20                        # 20% of the distinct questions


@pytest.mark.parametrize("name", list(TASKS))
def test_make_dataset_deterministic(name):
    assert make_dataset(name, 50, 10, seed=3) == make_dataset(name, 50, 10, seed=3)
    assert make_dataset(name, 50, 10, seed=3) != make_dataset(name, 50, 10, seed=4)


def test_make_dataset_sizes_and_validation():
    train, evals = make_dataset("add2", n_train=7, n_eval=3)
    assert len(train) == 7 and len(evals) == 3
    for bad in [dict(n_train=0), dict(n_eval=0), dict(n_train=-1)]:
        with pytest.raises(ValueError, match="n_train >= 1 and n_eval >= 1"):
            make_dataset("add2", **bad)
    with pytest.raises(ValueError, match="unknown task"):
        make_dataset("nope")


def test_the_simple_rule_is_measured_as_verify_py_says():
    """verify.py's docstring opens with the simplest honest rule and what it gets wrong on the audit cases:
    the numbers there are recomputed here, and the claim reader pays what the rule misses (bar the known rows)."""
    import verify
    errors = verify.simple_rule_errors()
    measured = {"cases": errors["cases"], "false_positives": len(errors["false_positives"]),
                "false_negatives": len(errors["false_negatives"])}
    assert measured == verify.SIMPLE_RULE
    assert (f"{measured['cases']} audit cases" in verify.__doc__
            and f"{measured['false_positives']} false positives, but {measured['false_negatives']} false negatives"
            in verify.__doc__)
    known = {r for _, r, kind, *_ in AUDIT_CASES if kind.startswith("known")}
    by_reply = {r: p for p, r, *_ in AUDIT_CASES}
    assert all(is_correct(by_reply[r], r) for r in errors["false_negatives"] if r not in known)
    assert verify.simple_rule(LARGER, "57") and not verify.simple_rule(LARGER, "Not 57.")


@pytest.mark.parametrize("script", ["verify.py", "task.py"])
def test_audit_command(script):
    import subprocess
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(root / script), "--audit", "--task=sort"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and "8 cases: 0 false positives, 0 false negatives" in run.stdout, run.stdout
    bad = subprocess.run([sys.executable, str(root / script), "--audit", "--task=nope"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "--task=nope" in bad.stderr
