"""Your own task without editing the project: a .py module or a .jsonl data file, for --task=PATH.

    python train.py --task=path/to/my_task.py  # make_prompt(rng) -> (question, answer) or a Prompt;
                                               # optionally verify(prompt, response) -> bool, description
    python train.py --task=path/to/data.jsonl  # one {"question": ..., "answer": ...} per line

A .py task file is Python code: loading it imports it, which runs it. train.py, eval.py and judge.py
load one only when you name it with --task, never because a run folder's config.json names it.

What can be checked is checked when the file loads, before any model does: the file imports; its first
CHECKED_PROMPTS prompts come back in time and are well formed; verify returns a bool. A bad file, or a
make_prompt or verify that fails later in a run, is one line naming the file, the function, the reply.
Nothing is registered anywhere: a task file's prompts carry their verifier (Prompt.verify).
"""
import hashlib
import importlib.util
import json
import random
import signal
import threading
from pathlib import Path

from task import Prompt, Task, answer_text
from verify import verifier_for_answer

MAX_QUESTION_CHARS = 20_000    # a longer question is a mistake (SmolLM2 reads 8,192 tokens in all)
MAX_ANSWER_DIGITS = 30         # ~1 token a digit: no reply of 32 new tokens (the default) holds more
MAX_ANSWER_CHARS = 200         # the same for a string or a list answer
MAKE_PROMPT_SECONDS = 5.0      # a make_prompt call taking longer is a generator that never returns
CHECKED_PROMPTS = 20           # prompts drawn and checked when the file loads
_LOADED: dict[tuple, Task] = {}   # (path, sha256 of the file): imported once while it is unchanged


def load_task_file(path: str) -> Task:
    """Your own task from its file, loaded (imported) once per process while the file is unchanged:

    - a .py module defining `make_prompt(rng: random.Random)` that returns a Prompt or a
      (question, answer) pair, and optionally `verify(prompt, response) -> bool` (default: by the
      answer's type, verify.verifier_for_answer) and `description`;
    - a .jsonl file, one {"question": ..., "answer": ...} per line (answer: int, string or list of
      ints), each question once; graded by the answer's type. Split like the built-in tasks.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--task={path}: no such file")
    key = (str(file.resolve()), path, hashlib.sha256(file.read_bytes()).hexdigest())
    if key not in _LOADED:
        _LOADED[key] = _load(file, path)
    return _LOADED[key]


def _load(file: Path, path: str) -> Task:
    if file.suffix == ".jsonl":
        records = read_jsonl_task(file, path)
        return Task(path, f"{len(records)} questions from {file.name}",
                    lambda rng: rng.choice(records), _by_answer_type)
    module = import_task_module(file, path)
    verify = checked_verify(module.verify, path) if getattr(module, "verify", None) else None
    where = f"--task={path}: make_prompt"

    def make(rng, make_prompt=module.make_prompt):
        try:
            p = time_limited(lambda: make_prompt(rng), MAKE_PROMPT_SECONDS)
        except _OutOfTime:
            raise ValueError(f"{where} did not return within {MAKE_PROMPT_SECONDS:g} s "
                             "(a loop that never ends?)") from None
        except Exception as e:
            raise ValueError(f"{where} failed: {type(e).__name__}: {_first_line(e)}") from None
        pair = isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
        if not (isinstance(p, Prompt) or pair):
            raise ValueError(f"{where} returned {p!r:.60}, not a (question, answer) pair")
        question, answer = (p.question, p.answer) if isinstance(p, Prompt) else p
        answer = tuple(answer) if isinstance(answer, list) else answer
        check_question(question, f"{where} returned a question that")
        if verify is None:                 # graded by the answer's type: it must be gradable
            check_answer(answer, f"{where} returned an answer that")
        return Prompt(question, answer, path, verify)

    rng = random.Random(0)
    first = [make(rng) for _ in range(CHECKED_PROMPTS)]   # a broken generator says so now
    if verify is not None:
        verify(first[0], answer_text(first[0].answer))      # and a verify that gives no verdict
    description = getattr(module, "description", f"custom task {file.name}")
    return Task(path, description, make, verify or _by_answer_type)


def _by_answer_type(prompt: Prompt, response: str) -> bool:
    return verifier_for_answer(prompt.answer)(prompt, response)


def import_task_module(file: Path, path: str):
    """The task module, imported (its code runs); one line for an import that fails or exits."""
    spec = importlib.util.spec_from_file_location(f"tinygrpo_task_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SystemExit as e:
        raise ValueError(f"--task={path}: importing it called sys.exit({e.code!r})") from None
    except Exception as e:
        raise ValueError(f"--task={path}: importing it failed: "
                         f"{type(e).__name__}: {_first_line(e)}") from None
    if not callable(getattr(module, "make_prompt", None)):
        raise ValueError(f"--task={path}: the module defines no make_prompt(rng) function")
    verify = getattr(module, "verify", None)
    if verify is not None and not callable(verify):
        raise ValueError(f"--task={path}: verify must be a function (prompt, response) -> bool")
    return module


def checked_verify(verify, path: str):
    """The module's verify, with one line naming the task, verify and the reply when it raises or
    returns anything but a bool (a string, None, NaN: none of them is a verdict)."""
    def verify_checked(prompt: Prompt, response: str) -> bool:
        try:
            verdict = verify(prompt, response)
        except Exception as e:
            raise ValueError(f"--task={path}: verify raised {type(e).__name__}: {_first_line(e)} "
                             f"on the reply {response!r:.80}") from None
        if type(verdict).__name__ not in ("bool", "bool_"):          # bool, or numpy's
            raise ValueError(f"--task={path}: verify returned {verdict!r:.40}, not True or False, "
                             f"on the reply {response!r:.80}")
        return bool(verdict)
    return verify_checked


class _OutOfTime(BaseException):
    """The alarm's exception: a BaseException, so that an `except Exception` in make_prompt cannot
    swallow it."""


def time_limited(fn, seconds: float):
    """fn(), or _OutOfTime once `seconds` of wall-clock time have passed (SIGALRM, so POSIX and the
    main thread only; elsewhere fn() runs unlimited)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        return fn()

    def out_of_time(signum, frame):
        raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, out_of_time)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return fn()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check_question(question, where: str):
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where} is not a non-empty string")
    if len(question) > MAX_QUESTION_CHARS:
        raise ValueError(f"{where} is {len(question):,} characters long "
                         f"(at most {MAX_QUESTION_CHARS:,})")


def check_answer(answer, where: str):
    """An answer that the verifier for its type grades and that a reply can hold: not empty (an empty
    answer would pay an empty reply), no integer of more than MAX_ANSWER_DIGITS digits, at most
    MAX_ANSWER_CHARS characters written out."""
    ok_list = isinstance(answer, (list, tuple)) and answer and all(isinstance(a, int) for a in answer)
    if isinstance(answer, bool) or not (isinstance(answer, (int, str)) or ok_list):
        raise ValueError(f"{where} is not an integer, a string or a list of integers")
    if isinstance(answer, str) and not answer.strip():
        raise ValueError(f"{where} is empty: an empty reply would be graded right")
    integers = [] if isinstance(answer, str) else answer if ok_list else [answer]
    digits = max((len(str(abs(a))) for a in integers), default=0)
    if digits > MAX_ANSWER_DIGITS:
        raise ValueError(f"{where} has {digits} digits: no reply of max_new_tokens (32 by default) "
                         f"tokens can hold it; at most {MAX_ANSWER_DIGITS}")
    if len(answer_text(answer)) > MAX_ANSWER_CHARS:
        raise ValueError(f"{where} is {len(answer_text(answer)):,} characters long: no reply of "
                         f"max_new_tokens tokens can hold it; at most {MAX_ANSWER_CHARS}")


def read_jsonl_task(file: Path, name: str) -> list[Prompt]:
    """The prompts of a .jsonl task file; one line naming the problem for a bad file."""
    records, first_line = [], {}
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{file}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or "question" not in row or "answer" not in row:
            raise ValueError(f'{file}:{n}: each line needs "question" and "answer" fields')
        question, answer = row["question"], row["answer"]
        check_question(question, f'{file}:{n}: "question"')
        check_answer(answer, f'{file}:{n}: "answer"')
        if question in first_line:
            raise ValueError(f"{file}:{n}: repeats the question of line {first_line[question]}; each "
                             "question once, so that no held-out question appears in training")
        first_line[question] = n
        records.append(Prompt(question, tuple(answer) if isinstance(answer, list) else answer, name))
    if len(records) < 2:
        raise ValueError(f"{file}: {len(records)} question(s); a train and a held-out split need "
                         "at least 2")
    return records


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]
