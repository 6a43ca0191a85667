"""Your own task without editing the project: a .py module or a .jsonl file, and one line for a bad one."""
import json

import pytest

import task
from conftest import one_line
from task import TASKS, Prompt, get_reward, get_task, is_correct, make_dataset

MODULE = '''
description = "double a number"

def make_prompt(rng):
    n = rng.randint(1, 500)
    return f"What is twice {n}? Answer with just the number.", 2 * n
'''


@pytest.fixture(autouse=True)
def nothing_is_registered():
    """Loading a task file changes no table: its prompts carry their verifier."""
    before = dict(TASKS)
    yield
    assert TASKS == before and task.TASKS is TASKS


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_module_task(tmp_path):
    path = tmp_path / "double.py"
    path.write_text(MODULE)
    t = get_task(str(path))
    assert t.description == "double a number"
    train, held_out = make_dataset(str(path), n_train=50, n_eval=10)
    assert len(train) == 50 and len(held_out) == 10
    assert not {p.question for p in train} & {p.question for p in held_out}
    p = held_out[0]
    assert p.task == str(path) and p.answer % 2 == 0
    # no verify() in the module: the numeric verifier, by the answer's type
    assert get_reward([p, p, p], [str(p.answer), f"The answer is {p.answer}.", f"{p.answer} or 3"]) == [1.0, 0.5, 0.0]


def test_module_task_with_its_own_verifier(tmp_path):
    path = tmp_path / "yesno.py"
    path.write_text("def make_prompt(rng):\n    n = rng.randint(1, 99)\n"
                    "    return f'Is {n} even? Answer yes or no.', 'yes' if n % 2 == 0 else 'no'\n"
                    "def verify(prompt, response):\n    return response.lower().startswith(prompt.answer)\n")
    _, held_out = make_dataset(str(path), n_train=20, n_eval=5)
    p = held_out[0]
    assert is_correct(p, p.answer.upper() + ", because ...")        # the module's rule, not the default one
    assert not is_correct(p, "maybe")


def test_jsonl_task(tmp_path):
    rows = [{"question": f"Capital of country {i}?", "answer": f"City{i}"} for i in range(30)]
    rows += [{"question": f"Numbers {i}, {i + 2}, {i + 1} in order?", "answer": [i, i + 1, i + 2]} for i in range(10)]
    rows += [{"question": "What is 6 * 7?", "answer": 42}]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    train, held_out = make_dataset(path, n_train=100, n_eval=20, seed=0)
    assert len(held_out) == 8                                     # 20% of 41 distinct questions, as for add1
    assert not {p.question for p in train} & {p.question for p in held_out}
    assert {p.question for p in train} | {p.question for p in held_out} <= {r["question"] for r in rows}
    assert len({p.question for p in train}) > 25                 # train draws (with repeats) from the other 33
    by_q = {p.question: p for p in train + held_out}
    assert get_reward([by_q["Capital of country 3?"]] * 3, ["City3", "The answer is city3.", "City33"]) == [1.0, 0.5, 0.0]
    assert get_reward([by_q["Numbers 4, 6, 5 in order?"]] * 2, ["4, 5, 6", "4, 6, 5"]) == [1.0, 0.0]
    assert get_reward([by_q["What is 6 * 7?"]] * 2, ["42", "6 * 7 = 43"]) == [1.0, 0.0]


@pytest.mark.parametrize("rows,words", [
    ([], ["0 question(s)", "at least 2"]),
    ([{"question": "a?", "answer": 1}], ["1 question(s)"]),
    ([{"question": "a?"}, {"question": "b?", "answer": 2}], [":1:", '"answer"']),
    (["{not json", {"question": "b?", "answer": 2}], [":1:", "not JSON"]),
    ([{"question": "a?", "answer": 1}, {"question": "a?", "answer": 1}], [":2:", "repeats the question of line 1"]),
    ([{"question": "", "answer": 1}, {"question": "b?", "answer": 2}], [":1:", "non-empty"]),
    ([{"question": "a?", "answer": 1.5}, {"question": "b?", "answer": 2}], [":1:", "integer, a string or a list"]),
    ([{"question": "a?", "answer": True}, {"question": "b?", "answer": 2}], [":1:", "integer, a string or a list"]),
])
def test_bad_jsonl_gives_one_line(tmp_path, rows, words):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError) as e:
        get_task(path)
    one_line(e, *words)


@pytest.mark.parametrize("source,words", [
    ("x = 1\n", ["no make_prompt(rng)"]),
    ("make_prompt = 3\n", ["no make_prompt(rng)"]),
    ("def make_prompt(rng):\n    return 'q', 1\nverify = 'yes'\n", ["verify must be a function"]),
    ("import not_a_module_anywhere\n", ["importing it failed", "ModuleNotFoundError"]),
    ("def make_prompt(rng:\n", ["importing it failed", "SyntaxError"]),
])
def test_bad_module_gives_one_line(tmp_path, source, words):
    path = tmp_path / "mine.py"
    path.write_text(source)
    with pytest.raises(ValueError) as e:
        get_task(str(path))
    one_line(e, str(path), *words)


@pytest.mark.parametrize("body,words", [
    ("    return 'just a question'\n", ["make_prompt returned", "not a (question, answer) pair"]),
    ("    return 1 / 0\n", ["make_prompt failed", "ZeroDivisionError"]),
])
def test_bad_make_prompt_gives_one_line(tmp_path, body, words):
    path = tmp_path / "mine.py"
    path.write_text("def make_prompt(rng):\n" + body)
    with pytest.raises(ValueError) as e:
        get_task(str(path))                         # train.py checks the task before loading any model
    one_line(e, str(path), *words)


def test_jsonl_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"question": "caf\u00e9?", "answer": 1}\n'.encode("latin-1"))
    with pytest.raises(ValueError) as e:
        get_task(str(path))
    one_line(e, "not UTF-8")


def test_missing_task_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        get_task(str(tmp_path / "nope.jsonl"))
    one_line(e, "nope.jsonl", "no such file")


def test_prompt_without_task_is_graded_by_answer_type():
    assert get_reward([Prompt("q", 8), Prompt("q", "abc"), Prompt("q", (1, 2))], ["8", "ABC", "1, 2"]) == [1.0, 0.5, 1.0]


# ----------------------------------------------------------------------------- issue 21, item 9: a task file's failures

def test_make_prompt_that_never_returns_gives_one_line_before_loading(tmp_path, tiny_checkpoint):
    """python train.py --task=hang.py: one line naming the file after the time budget, before any model loads
    (train.py prints the model's size once it has loaded it)."""
    import subprocess
    import sys
    from pathlib import Path
    path = tmp_path / "hang.py"
    path.write_text("def make_prompt(rng):\n    while True:\n        pass\n")
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, str(root / "train.py"), f"--task={path}", f"--out_dir={tmp_path / 'run'}",
                          f"--model={tiny_checkpoint}", "--device=cpu"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
    assert f"--task={path}: make_prompt did not return within 5 s" in run.stderr and "parameters" not in run.stdout


def test_make_prompt_time_budget_interrupts_a_loop(tmp_path, monkeypatch):
    import custom_task
    monkeypatch.setattr(custom_task, "MAKE_PROMPT_SECONDS", 0.2)
    path = tmp_path / "slow.py"
    path.write_text("def make_prompt(rng):\n    while True:\n        try:\n            pass\n"
                    "        except Exception:\n            pass\n")      # its own except cannot swallow the alarm
    with pytest.raises(ValueError) as e:
        get_task(str(path))
    one_line(e, str(path), "make_prompt did not return within 0.2 s")


VERIFY_HEAD = "def make_prompt(rng):\n    n = rng.randint(1, 99)\n    return f'Say {n}.', n\n"


@pytest.mark.parametrize("verify_body,words", [
    ("    return 'no'\n", ["verify returned 'no'", "not True or False"]),
    ("    return float('nan')\n", ["verify returned nan"]),
    ("    return None\n", ["verify returned None"]),
    ("    return {}[response]\n", ["verify raised KeyError"]),
], ids=["string", "nan", "none", "raises"])
def test_verify_that_cannot_give_a_verdict_is_refused_when_the_file_loads(tmp_path, verify_body, words):
    path = tmp_path / "mine.py"
    path.write_text(VERIFY_HEAD + "def verify(prompt, response):\n" + verify_body)
    with pytest.raises(ValueError) as e:
        get_task(str(path))
    one_line(e, str(path), *words, "on the reply")


def test_verify_failing_in_a_run_gives_one_line_naming_task_function_and_reply(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(VERIFY_HEAD + "def verify(prompt, response):\n    if 'boom' in response:\n"
                    "        raise KeyError(response)\n    return response.strip() == str(prompt.answer)\n")
    _, held_out = make_dataset(str(path), n_train=5, n_eval=2)
    p = held_out[0]
    assert is_correct(p, str(p.answer)) and not is_correct(p, "nope")
    with pytest.raises(ValueError) as e:
        get_reward([p], ["it goes boom\nand on"])
    one_line(e, str(path), "verify raised KeyError", "'it goes boom\\nand on'")


def test_sys_exit_at_import_gives_one_line(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(ValueError) as e:
        get_task(str(path))
    one_line(e, str(path), "importing it called sys.exit(3)")


@pytest.mark.parametrize("answer,words", [
    ("", ["empty", "an empty reply would be graded right"]),
    ("   ", ["empty"]),
    (10 ** 107, ["108 digits", "at most 30"]),
    ([1, 10 ** 40], ["41 digits"]),
    ("x" * 500, ["500 characters", "at most 200"]),
], ids=["empty", "spaces", "108-digits", "list-41-digits", "500-chars"])
def test_jsonl_answer_that_can_never_be_right_is_refused_when_it_loads(tmp_path, answer, words):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "b?", "answer": 2}, {"question": "a?", "answer": answer}])
    with pytest.raises(ValueError) as e:
        get_task(path)
    one_line(e, ":2:", '"answer"', *words)


def test_jsonl_question_too_long_is_refused_when_it_loads(tmp_path):
    path = write_jsonl(tmp_path / "big.jsonl", [{"question": "q" * 20_001, "answer": 1}, {"question": "b?", "answer": 2}])
    with pytest.raises(ValueError) as e:
        get_task(path)
    one_line(e, ":1:", '"question"', "20,001 characters long", "at most 20,000")


def test_module_answer_that_can_never_be_right_is_refused_when_it_loads(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("def make_prompt(rng):\n    return f'q{rng.random()}', ''\n")
    with pytest.raises(ValueError) as e:
        get_task(str(path))
    one_line(e, str(path), "make_prompt returned an answer that is empty")


def test_a_task_file_prompt_carries_its_verifier(tmp_path):
    """No registry: the prompt itself knows how it is graded, wherever it goes."""
    path = tmp_path / "yesno.py"
    path.write_text("def make_prompt(rng):\n    return f'Is {rng.randint(1, 99)} a number?', 'yes'\n"
                    "def verify(prompt, response):\n    return response.lower().startswith('y')\n")
    p = get_task(str(path)).make(__import__("random").Random(0))
    assert str(path) not in TASKS and p.verify is not None
    assert is_correct(p, "Yep") and not is_correct(p, "no")


def test_a_task_file_is_imported_once_while_unchanged(tmp_path):
    """train.py asks for the task three times (check, log line, dataset): its module runs once; an edited
    file is loaded again."""
    counter, path = tmp_path / "imports.txt", tmp_path / "mine.py"
    path.write_text(f"open({str(counter)!r}, 'a').write('x')\n" + MODULE)
    assert get_task(str(path)) is get_task(str(path)) and counter.read_text() == "x"
    path.write_text(f"open({str(counter)!r}, 'a').write('x')\n" + MODULE.replace("double", "twice"))
    assert get_task(str(path)).description == "twice a number" and counter.read_text() == "xx"
