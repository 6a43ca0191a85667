"""Toy tasks and the reward for GRPO: seeded prompt generators plus an auto-grader.

Each task makes (question, answer) pairs whose answer is one integer, so any
response can be graded by a program, with no human or reward model involved.

The rubric (the whole of it):
    reward = 1.0 if the LAST integer in the response equals the answer, else 0.0

"Last integer" means the last run of ASCII digits, with a '-' sign only when
the minus sits directly before the digits and is not itself preceded by a digit
(see parse_answer for the exact rule and its edge cases).

Why the last integer rather than an exact string match: a model that answers
"The answer is 8." or restates the sum "3 + 5 = 8" still earns credit, so the
reward measures correctness, not formatting. Why the last rather than the first:
the final number is where a sentence, or a worked calculation, lands. The rule
is still strict: "3 + 5" alone ends in 5 and is wrong, and so is "8? No, 9".
The reward is binary on purpose: GRPO only needs to tell better completions in a
group from worse ones, and partial credit on toy arithmetic would invite hacks.
"""

import random
import re
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Prompt:
    question: str  # the user's chat message; the chat template is applied elsewhere
    answer: int


@dataclass(frozen=True)
class Task:
    name: str
    description: str  # one line, shown in logs
    make: Callable[[random.Random], Prompt]


SUFFIX = " Answer with just the number."

ITEM_WORDS = [
    "apple", "banana", "pear", "plum", "grape", "lemon", "mango", "peach",
    "cherry", "melon", "cat", "dog", "cow", "horse", "sheep", "goat", "duck",
    "fish", "bird", "lion", "tiger", "bear", "wolf", "fox", "frog", "mouse",
]

# Common words in which no letter occurs more than 3 times, so answers are 0..3.
# Why 130 words: train and eval must be distinct questions, and a word has only ~5
# distinct letters, so with ~60 words most of 1200 distinct questions would be
# answer-0 ones. With 130, answers come out roughly 0: 47%, 1: 44%, 2: 8%, 3: 1%.
LETTER_WORDS = """
apple banana strawberry letter coffee balloon bookkeeper committee pepper cheese
engineer tomorrow successful little happy hello school yellow butter dinner
summer rabbit puppy giraffe kitten jelly window garden orange purple
river forest pizza bubble mammal cotton parrot carrot pencil paper
bottle mirror planet rocket music doctor sister brother family friend
people tennis zebra monkey water table chair house green street
queen moon book assistant elephant chocolate computer teacher morning evening
kitchen bedroom holiday birthday umbrella sandwich potato tomato cookie cereal
chicken turtle spider dolphin penguin rainbow thunder weather winter autumn
mountain island ocean desert valley bridge castle village market station
airplane bicycle library hospital museum picture address pillow blanket button
basket jacket pocket ribbon candle dragon flower squirrel yogurt noodle
bread sugar salt lemon cherry grape melon peach onion garlic
""".split()


def make_add(lo: int, hi: int) -> Callable[[random.Random], Prompt]:
    """Addition of two integers drawn uniformly from lo..hi."""
    def make(rng: random.Random) -> Prompt:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        return Prompt(f"What is {a} + {b}?{SUFFIX}", a + b)
    return make


def make_larger(rng: random.Random) -> Prompt:
    a, b = rng.sample(range(10, 100), 2)  # distinct, so there is always a larger one
    return Prompt(f"Which is larger, {a} or {b}?{SUFFIX}", max(a, b))


def make_count_items(rng: random.Random) -> Prompt:
    # Distinct words: with repeats, "how many items" vs "how many kinds" is ambiguous.
    items = rng.sample(ITEM_WORDS, rng.randint(3, 9))
    return Prompt(f"How many items are in this list: {', '.join(items)}?{SUFFIX}", len(items))


def make_count_letter(rng: random.Random) -> Prompt:
    word = rng.choice(LETTER_WORDS)
    # Mostly a letter of the word (biased toward repeated letters, so answers 2 and
    # 3 show up), otherwise any letter (mostly answer 0).
    c = rng.choice(word) if rng.random() < 0.7 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    return Prompt(f"How many times does the letter '{c}' appear in '{word}'?{SUFFIX}", word.count(c))


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("add1", "one-digit addition, a + b with a, b in 0..9", make_add(0, 9)),
    Task("add2", "two-digit addition, a + b with a, b in 10..99", make_add(10, 99)),
    Task("larger", "the larger of two distinct two-digit numbers", make_larger),
    Task("count_items", "count the items in a list of 3..9 words", make_count_items),
    Task("count_letter", "count a letter's occurrences in a common word (0..3)", make_count_letter),
]}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def make_dataset(task_name: str, n_train: int = 1000, n_eval: int = 200,
                 seed: int = 0) -> tuple[list[Prompt], list[Prompt]]:
    """Deterministic (train, eval) prompt lists, disjoint by question text.

    We draw prompts from random.Random(seed) and keep each question the first time
    it appears, until we hold n_eval + n_train distinct questions; eval takes the
    first n_eval, train the next n_train. Disjointness matters: an eval question
    seen in training measures memorisation, not skill.

    Small tasks run out: add1 has only 10 * 10 = 100 distinct questions. We stop
    drawing after 1000 draws in a row bring nothing new, and then split what we
    have with eval going first: eval gets min(n_eval, 20% of the distinct
    questions) and train samples WITH repetition from the rest up to n_train.
    So train may repeat questions, but never contains an eval question.
    """
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"need n_train >= 1 and n_eval >= 1, got n_train={n_train}, n_eval={n_eval}")
    task, rng = get_task(task_name), random.Random(seed)
    seen: dict[str, Prompt] = {}  # dicts keep insertion order, so this is deterministic
    misses = 0
    while len(seen) < n_train + n_eval and misses < 1000:
        p = task.make(rng)
        misses = misses + 1 if p.question in seen else 0
        seen.setdefault(p.question, p)
    distinct = list(seen.values())
    if len(distinct) >= n_train + n_eval:
        return distinct[n_eval:n_eval + n_train], distinct[:n_eval]
    if len(distinct) < 2:
        raise ValueError(f"task {task_name!r} has too few distinct questions to split")
    k = min(n_eval, max(1, len(distinct) // 5))
    eval_set, pool = distinct[:k], distinct[k:]
    return [rng.choice(pool) for _ in range(n_train)], eval_set


# An optional '-' counts as a sign only if no digit sits right before it ("5-3" is
# a subtraction). [0-9], not \d: \d would also match non-ASCII digits like '٣'.
INT_RE = re.compile(r"(?:(?<![0-9])-)?[0-9]+")
MAX_DIGITS = 4300  # Python refuses int(str) beyond this many digits


def parse_answer(text: str) -> int | None:
    """The last integer in text, or None if there is none. This is THE answer rule.

    - An integer is a run of ASCII digits 0-9, with leading zeros ignored ("08" -> 8).
    - A '-' directly before the digits is a sign ("-3" -> -3, "x=-3" -> -3), unless
      a digit directly precedes the '-': then it is an operator ("5-3" -> 3).
      "3 - 5" -> 5 (the sign must touch the digits); a Unicode minus is not a sign.
    - Thousands separators are not supported: "1,000" -> 0 (two runs, "1" and "000").
    - Decimals are not answers: "7.5" -> 5 and "8.0" -> 0. That is deliberate
      strictness; the prompt asks for "just the number" and answers are integers.
    - Number words ("seven") and non-ASCII digits ('٣', '８') do not count.
    - Empty, whitespace-only or digit-free text -> None.
    - A final run of more than 4300 significant digits -> None: no answer is that
      long, and converting it would be slow (Python refuses to by default).
    One regex pass, linear in len(text), so 1e6-character responses are cheap.
    """
    last = None
    for last in INT_RE.finditer(text):
        pass
    if last is None:
        return None
    s = last.group()
    sign, digits = (-1, s[1:]) if s.startswith("-") else (1, s)
    digits = digits.lstrip("0") or "0"
    if len(digits) > MAX_DIGITS:
        return None
    return sign * int(digits)


def is_correct(prompt: Prompt, response: str) -> bool:
    return parse_answer(response) == prompt.answer


def get_reward(prompts: list[Prompt], responses: list[str]) -> list[float]:
    """Binary correctness reward: 1.0 if the last integer equals the answer, else 0.0."""
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    return [1.0 if is_correct(p, r) else 0.0 for p, r in zip(prompts, responses)]


_ADD = Prompt(f"What is 3 + 5?{SUFFIX}", 8)
_LARGER = Prompt(f"Which is larger, 42 or 57?{SUFFIX}", 57)
_LETTER = Prompt(f"How many times does the letter 'r' appear in 'strawberry'?{SUFFIX}", 3)

# (prompt, response, expected reward): hand-checked good, bad and edge cases.
SANITY_CASES: list[tuple[Prompt, str, float]] = [
    (_ADD, "8", 1.0),
    (_ADD, "8.", 1.0),
    (_ADD, "The answer is 8.", 1.0),
    (_ADD, "3 + 5 = 8", 1.0),
    (_ADD, "3 + 5", 0.0),                           # only restates the question
    (_ADD, "9", 0.0),
    (_ADD, "", 0.0),
    (_ADD, "  \n ", 0.0),
    (_ADD, "8? No, 9", 0.0),                        # last number wins
    (_ADD, "9? No, 8", 1.0),
    (_ADD, "eight", 0.0),                           # number words do not count
    (_ADD, "-8", 0.0),
    (_ADD, "\uff18", 0.0),                          # fullwidth '８' is not ASCII
    (_ADD, "8 (because 3 and 5 make 8)", 1.0),
    (_ADD, "8, since 5 + 3 is 8 and 1", 0.0),
    (_ADD, "a" * 10000 + "8", 1.0),
    (_ADD, "8.0", 0.0),                             # known strictness: last integer is 0
    (_ADD, "08", 1.0),
    (_LARGER, "57", 1.0),
    (_LARGER, "42", 0.0),
    (_LARGER, "57 is larger than 42.", 0.0),        # ends on 42
    (_LETTER, "There are 3 r's in strawberry.", 1.0),
    (_LETTER, "2", 0.0),
]


def _short(text: str, n: int) -> str:
    r = repr(text)
    return r if len(r) <= n else r[:n - 3] + "..."


def sanity_check(print_fn: Callable[[str], None] = print) -> bool:
    """Grade every SANITY_CASE, one line each; True iff all rewards are as expected."""
    ok = True
    for prompt, response, expected in SANITY_CASES:
        reward = get_reward([prompt], [response])[0]
        ok &= reward == expected
        mark = "" if reward == expected else "  <-- MISMATCH"
        q = _short(prompt.question.removesuffix(SUFFIX), 40)
        print_fn(f"{q} | {_short(response, 60)} | {reward} ({expected}){mark}")
    return ok
