import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import task  # noqa: E402
from task import (SANITY_CASES, TASKS, Prompt, get_reward, get_task,  # noqa: E402
                  make_dataset, parse_answer, sanity_check)


@pytest.mark.parametrize("prompt,response,expected", SANITY_CASES,
                         ids=[repr(r)[:30] for _, r, _ in SANITY_CASES])
def test_sanity_case(prompt, response, expected):
    assert get_reward([prompt], [response]) == [expected]


def test_sanity_check_passes_compactly():
    lines = []
    assert sanity_check(print_fn=lines.append) is True
    assert len(lines) == len(SANITY_CASES)
    assert all("\n" not in line and len(line) < 140 for line in lines)


def test_sanity_check_reports_mismatch(monkeypatch):
    monkeypatch.setattr(task, "SANITY_CASES", [(Prompt("q", 1), "2", 1.0)])
    assert sanity_check(print_fn=lambda s: None) is False


@pytest.mark.parametrize("text,expected", [
    ("8", 8), ("8.", 8), ("The answer is 8.", 8), ("3 + 5 = 8", 8), ("3 + 5", 5),
    ("", None), ("   \n\t ", None), ("no digits here", None), ("eight", None),
    ("-3", -3), ("x=-3", -3), ("--3", -3), ("answer: -12.", -12),
    ("5-3", 3), ("10-20", 20), ("3 - 5", 5), ("- 5", 5), ("8-", 8),
    ("\u22128", 8),                       # Unicode minus sign is not a sign
    ("1,000", 0), ("7.5", 5), ("8.0", 0), ("-0", 0), ("08", 8), ("000", 0),
    ("\u0663", None), ("\uff18", None), ("7 and \u0663", 7),
    ("8? No, 9", 9), ("9? No, 8", 8), ("a1b2c3", 3), ("x42y", 42),
    ("12345678901234567890", 12345678901234567890),
    ("The sum is 13.\n\nFinal answer: 13", 13),
])
def test_parse_answer_table(text, expected):
    assert parse_answer(text) == expected


def test_parse_answer_long_inputs():
    n = 1_000_000
    assert parse_answer("a" * n + "8") == 8
    assert parse_answer("1 " * (n // 2) + "-7") == -7
    assert parse_answer("-" * n) is None
    assert parse_answer("0" * n + "5") == 5          # leading zeros are not significant
    assert parse_answer("9" * n) is None             # too long to ever be an answer
    assert parse_answer("9" * 4300) == int("9" * 4300)


def test_get_reward():
    p = Prompt("What is 3 + 5? Answer with just the number.", 8)
    assert get_reward([p, p, p], ["8", "9", ""]) == [1.0, 0.0, 0.0]
    assert get_reward([], []) == []
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        get_reward([p, p], ["8"])


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
    raise AssertionError(f"no recompute for {name}")


@pytest.mark.parametrize("name", list(TASKS))
def test_task_answers_are_correct(name):
    train, evals = make_dataset(name, seed=1)
    for p in train + evals:
        assert isinstance(p.answer, int) and recompute(name, p.question) == p.answer


def test_task_registry():
    assert {"add1", "add2", "larger", "count_items", "count_letter"} <= set(TASKS)
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


@pytest.mark.parametrize("name", [n for n in TASKS if n != "add1"])
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
