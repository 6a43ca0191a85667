"""Toy tasks, their seeded train/held-out split, and the reward for GRPO.

A task makes (question, answer) pairs with a seeded generator, and names the verifier that decides
whether a reply is right (verify.py: the claim reader and the verifiers, which fail closed;
`python verify.py --audit` grades them on hand-written hard cases). Answers are integers, strings or
lists of integers. Your own task, a .py module or a .jsonl file, is loaded by custom_task.py.

The reward is a weighted sum of components, each a plain function of (prompts, responses):
    correct   1 if the task's verifier accepts the reply, else 0
    format    1 if the reply is exactly the answer the prompt asks for ("57" or "57."), and right
    short     a right reply's partial format credit, less for each character beyond the answer
    judge     (optional, judge.py) a judge model's probability of "Yes, this answer is correct"
    reward    = sum_k w_k * component_k / sum_k w_k                                  in [0, 1]
With correct 1, format 1 (get_reward): 1.0 for "57", 0.5 for "57 is larger than 42.", 0 for anything
wrong, false or hedged. Format is gated on correctness: a well-formatted wrong answer earns 0.
"""

import random
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from task_data import ITEM_WORDS, LETTER_WORDS, PARAPHRASES, REVERSE_WORDS
from verify import verifier_for_answer, verify_list, verify_number, verify_reversal


@dataclass(frozen=True)
class Prompt:
    question: str   # the user's chat message; the chat template is applied elsewhere
    answer: Any     # int, str, or a tuple of ints
    task: str = ""  # the task it comes from: a name of TASKS, or a task file's path
    # a task file's verifier, carried by its prompts (custom_task.py); None: the built-in task's
    # (TASKS[task].verify), else the one for the answer's type (verify.verifier_for_answer)
    verify: Callable[["Prompt", str], bool] | None = field(default=None, compare=False, repr=False)
    # (question, reply) shown as the chat turn before this one (make_dataset's format_example)
    format_example: tuple[str, str] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Task:
    name: str
    description: str                              # one line, shown in logs
    make: Callable[[random.Random], Prompt]
    verify: Callable[[Prompt, str], bool]         # is this reply right? (fails closed)
    # held-out questions reworded, for eval.paraphrased only (training never uses them):
    # (regex, replacement) pairs
    paraphrases: tuple[tuple[str, str], ...] = ()


SUFFIX = " Answer with just the number."
# A solved question of none of the tasks, shown before each question as an earlier chat turn (a run's
# --format_example, at train and at eval alike): it shows the bare reply the suffix asks for and says nothing
# about the question that follows (README: why the recipe has it)
FORMAT_EXAMPLE = ("How many letters are in the word 'cat'? Answer with just the number.", "3")


# ----------------------------------------------------------------------------- prompt generators

def make_add(lo: int, hi: int, task: str) -> Callable[[random.Random], Prompt]:
    """Addition of two integers drawn uniformly from lo..hi."""
    def make(rng: random.Random) -> Prompt:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        return Prompt(f"What is {a} + {b}?{SUFFIX}", a + b, task)
    return make


def make_larger(rng: random.Random) -> Prompt:
    a, b = rng.sample(range(10, 100), 2)  # distinct, so there is always a larger one
    return Prompt(f"Which is larger, {a} or {b}?{SUFFIX}", max(a, b), "larger")


def make_count_items(rng: random.Random) -> Prompt:
    # Distinct words: with repeats, "how many items" vs "how many kinds" is ambiguous.
    items = rng.sample(ITEM_WORDS, rng.randint(3, 9))
    question = f"How many items are in this list: {', '.join(items)}?{SUFFIX}"
    return Prompt(question, len(items), "count_items")


def make_count_letter(rng: random.Random) -> Prompt:
    word = rng.choice(LETTER_WORDS)
    # Mostly a letter of the word (biased toward repeated letters, so answers 2 and
    # 3 show up), otherwise any letter (mostly answer 0).
    c = rng.choice(word) if rng.random() < 0.7 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    question = f"How many times does the letter '{c}' appear in '{word}'?{SUFFIX}"
    return Prompt(question, word.count(c), "count_letter")




def make_reverse(rng: random.Random) -> Prompt:
    word = rng.choice(REVERSE_WORDS)
    question = f"Write the word '{word}' backwards. Answer with just the reversed word."
    return Prompt(question, word[::-1], "reverse")


def make_sort(rng: random.Random) -> Prompt:
    numbers = rng.sample(range(1, 100), rng.randint(3, 5))
    question = (f"Sort these numbers from smallest to largest: {', '.join(map(str, numbers))}. "
                "Answer with just the sorted numbers, separated by commas.")
    return Prompt(question, tuple(sorted(numbers)), "sort")


# ----------------------------------------------------------------------------- tasks and the split

TASKS: dict[str, Task] = {t.name: t for t in [
    Task("add1", "one-digit addition, a + b with a, b in 0..9", make_add(0, 9, "add1"),
         verify_number, PARAPHRASES["add1"]),
    Task("add2", "two-digit addition, a + b with a, b in 10..99", make_add(10, 99, "add2"),
         verify_number, PARAPHRASES["add2"]),
    Task("larger", "the larger of two distinct two-digit numbers", make_larger, verify_number,
         PARAPHRASES["larger"]),
    Task("count_items", "count the items in a list of 3..9 words", make_count_items, verify_number,
         PARAPHRASES["count_items"]),
    Task("count_letter", "count a letter's occurrences in a common word (0..3)", make_count_letter,
         verify_number, PARAPHRASES["count_letter"]),
    Task("reverse", "write a 4-7 letter word backwards (a string answer)", make_reverse,
         verify_reversal, PARAPHRASES["reverse"]),
    Task("sort", "sort 3-5 numbers in 1..99 (a list answer)", make_sort, verify_list,
         PARAPHRASES["sort"]),
]}


def get_task(name: str) -> Task:
    """A built-in task by name, or your own: a .py module or a .jsonl data file, loaded by
    custom_task.load_task_file (its prompts carry its verifier: nothing is registered)."""
    if name in TASKS:
        return TASKS[name]
    if name.endswith((".py", ".jsonl")):
        from custom_task import load_task_file
        return load_task_file(name)
    raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}, "
                     "or a path to a .py or .jsonl file")


def make_dataset(task_name: str | Task, n_train: int = 1000, n_eval: int = 200, seed: int = 0,
                 format_example: bool = False) -> tuple[list[Prompt], list[Prompt]]:
    """Deterministic (train, eval) prompt lists, disjoint by question text: an eval question seen in
    training would measure memorisation, not skill. task_name: a name for get_task, or a Task.

    Draw from random.Random(seed), keeping each question the first time it appears, until we hold
    n_eval + n_train distinct ones: eval takes the first n_eval, train the next n_train. Small tasks
    run out (add1 has 10 * 10 questions): after 1000 draws in a row bring nothing new, eval gets
    min(n_eval, 20% of the distinct questions) and train samples the rest WITH repetition.
    format_example=True: every prompt of both lists carries FORMAT_EXAMPLE (Prompt.format_example).
    """
    if n_train < 1 or n_eval < 1:
        raise ValueError(f"need n_train >= 1 and n_eval >= 1, "
                         f"got n_train={n_train}, n_eval={n_eval}")
    task = task_name if isinstance(task_name, Task) else get_task(task_name)
    rng = random.Random(seed)
    seen: dict[str, Prompt] = {}  # dicts keep insertion order, so this is deterministic
    misses = 0
    while len(seen) < n_train + n_eval and misses < 1000:
        p = task.make(rng)
        misses = misses + 1 if p.question in seen else 0
        seen.setdefault(p.question, p)
    distinct = list(seen.values())
    if len(distinct) >= n_train + n_eval:
        train_set, eval_set = distinct[n_eval:n_eval + n_train], distinct[:n_eval]
    elif len(distinct) < 2:
        raise ValueError(f"task {task.name!r} has too few distinct questions to split")
    else:
        k = min(n_eval, max(1, len(distinct) // 5))
        eval_set, pool = distinct[:k], distinct[k:]
        train_set = [rng.choice(pool) for _ in range(n_train)]
    if format_example:
        shown = lambda ps: [replace(p, format_example=FORMAT_EXAMPLE) for p in ps]
        train_set, eval_set = shown(train_set), shown(eval_set)
    return train_set, eval_set


# ----------------------------------------------------------------------------- reward components

def verifier_for(prompt: Prompt) -> Callable[[Prompt, str], bool]:
    """The verifier a prompt is graded by: its own (a task file's), else its built-in task's, else
    the one for its answer's type."""
    if prompt.verify is not None:
        return prompt.verify
    return TASKS[prompt.task].verify if prompt.task in TASKS else verifier_for_answer(prompt.answer)


def is_correct(prompt: Prompt, response: str) -> bool:
    """The task's verifier: what every accuracy this project reports counts."""
    return verifier_for(prompt)(prompt, response)


def correct_reward(prompts: list[Prompt], responses: list[str]) -> list[float]:
    """1.0 where the task's verifier accepts the reply, else 0.0."""
    return [float(is_correct(p, r)) for p, r in zip(prompts, responses)]


def answer_text(answer) -> str:
    """The answer as the prompt asks for it: '57', 'torrac', '7, 19, 42'."""
    return ", ".join(map(str, answer)) if isinstance(answer, (list, tuple)) else str(answer)


def is_exact(prompt: Prompt, response: str) -> bool:
    """The reply is exactly the answer as the prompt asks: "57" or "57." (spaces around it and after
    commas aside)."""
    return bare(response) == answer_text(prompt.answer)


def bare(response: str) -> str:
    """The reply as is_exact compares it: stripped, ", " after each comma, no final '.'."""
    return re.sub(r"\s*,\s*", ", ", response.strip()).removesuffix(".")


def format_reward(prompts: list[Prompt], responses: list[str]) -> list[float]:
    """1.0 where the reply is exactly the answer (is_exact) AND the verifier accepts it; else 0.0. Gated on
    correctness: format alone never pays."""
    return [float(is_exact(p, r) and is_correct(p, r)) for p, r in zip(prompts, responses)]


SHORT_SPAN = 40      # characters beyond the answer at which a right reply's short credit is 0


def short_reward(prompts: list[Prompt], responses: list[str]) -> list[float]:
    """Partial format credit, paid only to a right reply: max(0, 1 - extra / SHORT_SPAN), extra =
    the reply's characters beyond the answer's (spaces and a final '.' aside). 1.0 for exactly the
    answer, 0.65 for "The answer is 57." (14 extra), 0.0 from 40 extra on, and 0.0 for ANY reply
    the verifier rejects. A group of right sentences then differs in reward (the shorter ones beat
    the longer ones), so GRPO walks toward the bare answer even before a sample shows it (format
    alone pays nothing until one does)."""
    def credit(p, r):
        extra = len(bare(r)) - len(answer_text(p.answer))
        return max(0.0, 1.0 - max(extra, 0) / SHORT_SPAN)
    return [credit(p, r) if is_correct(p, r) else 0.0 for p, r in zip(prompts, responses)]


COMPONENTS: dict[str, Callable[[list, list], list[float]]] = {
    "correct": correct_reward, "format": format_reward, "short": short_reward}
DEFAULT_WEIGHTS = {"correct": 1.0, "format": 1.0}


def parse_weights(text: str) -> dict[str, float]:
    """'correct:1,format:0.5' -> {'correct': 1.0, 'format': 0.5}; one clear error for anything
    else."""
    weights = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition(":")
        if name not in COMPONENTS and name != "judge":
            raise ValueError(f"--reward_weights: unknown component {name!r}; "
                             "known: correct, format, short, judge")
        try:
            weights[name] = float(value) if sep else float("nan")
        except ValueError:
            weights[name] = float("nan")
        if not weights[name] >= 0:
            raise ValueError(f"--reward_weights: {item!r} needs a weight >= 0, as in {name}:1")
    if not weights or sum(weights.values()) <= 0:
        raise ValueError(f"--reward_weights={text!r}: give at least one positive weight, "
                         "e.g. correct:1,format:1")
    return weights


class WeightedReward:
    """reward = sum_k w_k * component_k / sum_k w_k, in [0, 1]; callable like get_reward.

    components() returns each component's rewards too, so that a run can log each one's mean
    beside the total (TRL's rewards/<name>/mean). `judge` is a component function
    (judge.make_judge); needed iff weighted. `functions` replaces COMPONENTS' functions by name (the
    notebook grades with its own copies)."""

    def __init__(self, weights: dict[str, float] | None = None, judge=None, functions=None):
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        if self.weights.get("judge", 0) > 0 and judge is None:
            raise ValueError("the judge component needs a judge model (see judge.py)")
        judged = {"judge": judge} if judge is not None else {}
        self.functions = COMPONENTS | (functions or {}) | judged

    def components(self, prompts: list[Prompt], responses: list[str]) -> dict[str, list[float]]:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        return {name: self.functions[name](prompts, responses)
                for name, w in self.weights.items() if w > 0}

    def combine(self, parts: dict[str, list[float]]) -> list[float]:
        total = sum(self.weights[name] for name in parts)
        n = len(next(iter(parts.values())))
        return [sum(self.weights[name] * parts[name][i] for name in parts) / total
                for i in range(n)]

    def __call__(self, prompts: list[Prompt], responses: list[str]) -> list[float]:
        return self.combine(self.components(prompts, responses))


def get_reward(prompts: list[Prompt], responses: list[str]) -> list[float]:
    """r = (correct + format) / 2 (train.py's default adds `short`): 1.0 for exactly the right answer
    ("57"), 0.5 for a right answer in a true sentence ("57 is larger than 42."), 0.0 for anything wrong,
    false or hedged. The components are named here, so that a copy of this function (the notebook's)
    grades with the copies of correct_reward and format_reward beside it."""
    components = {"correct": correct_reward, "format": format_reward}
    return WeightedReward(DEFAULT_WEIGHTS, functions=components)(prompts, responses)


if __name__ == "__main__":      # python task.py --audit: the verifier audit (verify.py)
    from verify import main
    main()
