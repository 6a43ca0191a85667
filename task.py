"""Toy tasks, their verifiers, and the reward for GRPO.

    python task.py --audit          # every task's hard cases: each component's reward against the expected one

A task makes (question, answer) pairs with a seeded generator, and owns the verifier that decides whether a
reply is right. Answers are integers, strings or lists of integers. A verifier FAILS CLOSED: a reply is right
only if it commits to the right answer and asserts nothing false. So:
    "57", "57.", "The larger number is 57.", "57 is larger than 42.", "3 + 5 = 8"        right
    "15 is larger than 43." (a false comparison), "3 + 5 = 9 = 8" (a false equation)     wrong
    "57 or 42", "8? No, 9", "8. Or maybe 9" (two different candidate answers)            wrong
whatever number the reply ends on. verify_number states the exact rule for numeric answers, verify_reversal
and verify_list the rules for the string and list tasks.

The reward is a weighted sum of components, each a plain function of (prompts, responses):
    correct   1 if the task's verifier accepts the reply, else 0
    format    1 if the reply is exactly the answer as the prompt asks ("57" or "57."), and right; else 0
    judge     (optional, judge.py) the probability a judge model gives to "Yes, this answer is correct"
    reward    = sum_k w_k * component_k / sum_k w_k                                       in [0, 1]
With the default weights (correct 1, format 1): 1.0 for "57", 0.5 for "57 is larger than 42.", 0 for
anything wrong, false or hedged. Format is gated on correctness, so a well-formatted wrong answer earns 0.
"""

import argparse
import importlib.util
import json
import random
import re
import sys
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Prompt:
    question: str   # the user's chat message; the chat template is applied elsewhere
    answer: Any     # int, str, or a tuple of ints
    task: str = ""  # the task whose verifier grades it ("" = by the answer's type: see verifier_for)


@dataclass(frozen=True)
class Task:
    name: str
    description: str                              # one line, shown in logs
    make: Callable[[random.Random], Prompt]
    verify: Callable[[Prompt, str], bool]         # is this reply right? (fails closed)
    # held-out questions reworded, for eval.paraphrased only (training never uses them): (regex, replacement)
    paraphrases: tuple[tuple[str, str], ...] = ()


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
    return Prompt(f"How many items are in this list: {', '.join(items)}?{SUFFIX}", len(items), "count_items")


def make_count_letter(rng: random.Random) -> Prompt:
    word = rng.choice(LETTER_WORDS)
    # Mostly a letter of the word (biased toward repeated letters, so answers 2 and
    # 3 show up), otherwise any letter (mostly answer 0).
    c = rng.choice(word) if rng.random() < 0.7 else rng.choice("abcdefghijklmnopqrstuvwxyz")
    return Prompt(f"How many times does the letter '{c}' appear in '{word}'?{SUFFIX}", word.count(c), "count_letter")


# More common words for `reverse`, so that its held-out set is large (4-7 letters, no palindromes).
MORE_WORDS = """
about above after again april black blue board boat bone brain brave brick brush cake camel card chain chalk
cloud clock coast coat cold corn couch crown dance desk dream dress drink drum eagle earth field fire flag
floor fruit glass glove goose grass happy heart horse hotel juice king knife lake lamp laugh leaf light lunch
magic maple metal milk money mouth movie nest night north novel ocean olive paint party piano pilot plant
plate pride prize quiet radio range robot roof rose round sand scarf shape sheep shell shirt shoe silver
skirt sleep smile snake snow socks sound south space spoon sport stamp star stone storm story sunny sweet
tiger toast tooth towel tower train tree truck uncle voice watch whale wheel white wind wolf world write
young zone animal answer breeze butter camera circle coffee cousin danger editor farmer finger forest
frozen ginger guitar hammer helmet insect jungle kettle ladder lizard marble meadow mitten nature orange
oyster pepper pirate planet rabbit saddle silent singer spirit summer ticket timber violin wallet winner
""".split()
REVERSE_WORDS = sorted({w for w in LETTER_WORDS + ITEM_WORDS + MORE_WORDS if 4 <= len(w) <= 7 and w != w[::-1]})


def make_reverse(rng: random.Random) -> Prompt:
    word = rng.choice(REVERSE_WORDS)
    return Prompt(f"Write the word '{word}' backwards. Answer with just the reversed word.", word[::-1], "reverse")


def make_sort(rng: random.Random) -> Prompt:
    numbers = rng.sample(range(1, 100), rng.randint(3, 5))
    return Prompt(f"Sort these numbers from smallest to largest: {', '.join(map(str, numbers))}. "
                  "Answer with just the sorted numbers, separated by commas.", tuple(sorted(numbers)), "sort")


# ----------------------------------------------------------------------------- reading numbers and claims

# A number: a run of decimal digits (\d: any script's, so '٥٧' and fullwidth '５７' are 57), with an optional
# decimal part ("8.0" is 8) and a '-' sign only when no digit comes right before it ("5-3" is a subtraction,
# "x=-3" is -3). Thousands separators are not read: "1,000" is the two numbers 1 and 0.
NUMBER_RE = re.compile(r"(?:(?<!\d)(?<!\d )-)?\d+(?:\.\d+)?")
MAX_DIGITS = 100          # no answer is longer; a longer run reads as a number equal to nothing

# What may stand between two numbers, read as one claim: an operator joins them into an expression
# ("3 + 5", "the sum of 3 and 5"), a relation states something checkable ("= 8", "is larger than 42").
OPERATOR_RE = re.compile(r"\s*(\+|plus|and|-|−|minus|\*|×|x|times|/|÷|divided by)\s*", re.I)
WHICH = r"(?:,?\s*which)?"      # "57, which is larger than 42"
RELATIONS = [(name, re.compile(pattern, re.I)) for name, pattern in [   # tried in order on the text between two numbers
    ("<=", WHICH + r"\s*(?:is\s+)?not\s+(?:larger|bigger|greater|more|higher)\s+than\s*|\s*(?:<=|≤)\s*"),
    (">=", WHICH + r"\s*(?:is\s+)?not\s+(?:smaller|less|lower|fewer)\s+than\s*|\s*(?:>=|≥)\s*"),
    (">", WHICH + r"\s*(?:is\s+)?(?:larger|bigger|greater|more|higher)\s+than\s*|\s*>\s*"),
    ("<", WHICH + r"\s*(?:is\s+)?(?:smaller|less|lower|fewer)\s+than\s*|\s*<\s*"),
    ("=", r"\s*(?:=|is equal to|equals|is|makes?|gives)\s*"),
]]
NEGATION_RE = re.compile(r"\b(?:not|n't|never|no)\s*$", re.I)     # "not 57": a number denied, not asserted
HOLDS = {"=": lambda a, b: a == b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
         ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}

UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_U, _T, _D = "|".join(sorted(UNITS, key=len, reverse=True)), "|".join(TENS), "|".join(UNITS[1:10])
NUMBER_WORDS_RE = re.compile(
    rf"\b(?:(?:{_D})\s+hundred(?:(?:\s+and)?\s+(?=(?:{_T}|{_U})\b))?)?(?:(?:{_T})(?:[\s-](?:{_D}))?|(?:{_U}))?\b", re.I)
NOT_A_NUMBER_ONE = re.compile(r"\b(?:the|which|that|this|each|any|no|larger|bigger|greater|smaller|other)\s+$", re.I)


def word_value(phrase: str) -> int:
    """'one hundred and ninety-eight' -> 198; 'seven' -> 7 (the phrases NUMBER_WORDS_RE matches)."""
    total = 0
    for w in re.split(r"[\s-]+", phrase.lower()):
        if w == "hundred":
            total *= 100
        elif w != "and":
            total += UNITS.index(w) if w in UNITS else 10 * (TENS.index(w) + 2)
    return total


def words_to_digits(text: str) -> str:
    """Number words as digits, in a reply that has no digits at all ("fifty-seven" -> "57"). Where the reply
    has digits its words are left alone, so "the larger one is 57" is not read as two answers; "one" after
    "the", "which", "larger", ... is a pronoun, not a number."""
    if re.search(r"\d", text):
        return text

    def digits(m):
        if not m.group().strip() or (m.group().lower() == "one" and
                                     NOT_A_NUMBER_ONE.search(text[max(0, m.start() - 10):m.start()])):
            return m.group()
        return str(word_value(m.group()))
    return NUMBER_WORDS_RE.sub(digits, text)


def number_value(s: str) -> Fraction | None:
    """The value of one NUMBER_RE match, exactly; None for a run of more than MAX_DIGITS digits."""
    if len(s) > MAX_DIGITS + 2:
        return None
    ascii_digits = "".join(str(unicodedata.digit(c)) if c.isdigit() else c for c in s)
    return Fraction(ascii_digits)


def evaluate_expression(values: list, operators: list) -> Fraction | None:
    """values [3, 5, 2], operators ['+', '*'] -> 3 + 5 * 2 = 13 (* and / first); None if undefined."""
    if any(v is None for v in values):
        return None
    ops = [{"plus": "+", "and": "+", "minus": "-", "−": "-", "times": "*", "×": "*", "x": "*",
            "÷": "/", "divided by": "/"}.get(o.lower(), o) for o in operators]
    terms, signs = [values[0]], []
    for op, v in zip(ops, values[1:]):
        if op in "*/":
            if op == "/" and v == 0:
                return None
            terms[-1] = terms[-1] * v if op == "*" else terms[-1] / v
        else:
            terms.append(v)
            signs.append(op)
    return terms[0] + sum(t if s == "+" else -t for s, t in zip(signs, terms[1:]))


def read_claims(text: str) -> tuple[list, bool]:
    """(the numbers the reply commits to, whether everything it asserts holds).

    The reply's numbers are split into claims at whatever stands between two of them: an operator or a
    relation continues a claim, anything else starts a new one. Then per claim:
        "57"                      commits to 57
        "3 + 5 = 8", "3 and 5 make 8"      an equation: must hold; commits to its result, 8
        "57 is larger than 42", "42 < 57"  a comparison: must hold; commits to its larger side, 57
        "3 + 5", "42 and 57"      an expression with no relation only restates the question: commits to nothing
        "not 57", "isn't 42"      a denied number: the reply does not hold (fails closed, whatever it denies)
    """
    text = words_to_digits(text)
    matches = list(NUMBER_RE.finditer(text))
    commitments, all_hold = [], True
    i = 0
    while i < len(matches):
        if NEGATION_RE.search(text[max(0, matches[i].start() - 8):matches[i].start()]):
            all_hold = False
        sides, relations = [([number_value(matches[i].group())], [])], []      # [(values, operators)]
        while i + 1 < len(matches):
            gap = text[matches[i].end():matches[i + 1].start()]
            value = number_value(matches[i + 1].group())
            if (op := OPERATOR_RE.fullmatch(gap)) is not None:
                sides[-1][0].append(value)
                sides[-1][1].append(op.group(1))
            elif (rel := next((name for name, r in RELATIONS if r.fullmatch(gap)), None)) is not None:
                relations.append(rel)
                sides.append(([value], []))
            else:
                break
            i += 1
        i += 1
        side_values = [evaluate_expression(v, ops) for v, ops in sides]
        if relations:
            if None in side_values:
                all_hold = False
                continue
            all_hold &= all(HOLDS[r](a, b) for r, a, b in zip(relations, side_values, side_values[1:]))
            commitments.append(side_values[-1] if set(relations) == {"="} else max(side_values))
        elif len(sides[0][0]) == 1:
            commitments.append(side_values[0])
    return commitments, all_hold


# ----------------------------------------------------------------------------- verifiers (fail closed)

def verify_number(prompt: Prompt, response: str) -> bool:
    """Right iff every claim in the reply holds and all the numbers it commits to equal the answer (read_claims).

    - Numbers: digits of any script ('٥٧', '５７'); decimals by value ("8.0" is 8, "7.5" is not); number words
      ("fifty-seven", up to "nine hundred ninety-nine") only in a reply with no digits at all.
    - Claims must hold: "15 is larger than 43." and "3 + 5 = 9" are wrong whatever they end on.
    - A denied number ("not 57", "isn't 42") makes the reply wrong: the verifier does not read negations.
    - One answer only: a second different candidate ("57 or 42", "8? No, 9", "8. Or maybe 9", "the answer is 8
      and 1") is wrong; so is a reply that commits to nothing ("3 + 5", "", "I don't know").
    - Known strictness (false negatives): a true aside with another number ("There are 10 letters and 3 r's"),
      an enumeration ("1. apple 2. pear"), restating the question's list in a count task.
    """
    commitments, all_hold = read_claims(response)
    return all_hold and len(commitments) > 0 and all(c == prompt.answer for c in commitments)


def verify_list(prompt: Prompt, response: str) -> bool:
    """Right iff the reply's numbers, in order, are exactly the answer's, and every claim holds
    ("7, 19, 42", "7 < 19 < 42", "The sorted list is 7, 19, 42."). Restating the unsorted input, or any other
    number, is wrong: the reply must not contain two candidate lists."""
    numbers = [number_value(m.group()) for m in NUMBER_RE.finditer(words_to_digits(response))]
    return read_claims(response)[1] and numbers == [Fraction(a) for a in prompt.answer]


def verify_reversal(prompt: Prompt, response: str) -> bool:
    """Right iff the reply contains the answer as a word (any case, quotes allowed) and no rival: another word
    of about the same letters ("torac or torrac", the unreversed "carrot", a wrong anagram), unless that word
    is the question's word followed by "reversed" / "backwards" ("carrot backwards is torrac")."""
    answer = prompt.answer.casefold()
    words = [(m.group().casefold(), m.end()) for m in re.finditer(r"[^\W\d_]+", response)]
    if answer not in (w for w, _ in words):
        return False
    for w, end in words:
        if w == answer:
            continue
        rival = abs(len(w) - len(answer)) <= 2 and _common_letters(w, answer) >= max(3, len(answer) - 2)
        named = w == answer[::-1] and re.match(r"['\"]?\s*(?:reversed|backwards|spelled backwards)\b",
                                               response[end:], re.I)
        if rival and not named:
            return False
    return True


def _common_letters(a: str, b: str) -> int:
    return sum(min(a.count(c), b.count(c)) for c in set(a))


def verify_text(prompt: Prompt, response: str) -> bool:
    """Any string answer (a data file's): right iff the reply, stripped of quotes, a final period and a leading
    "The answer is" / "Answer:", equals the answer, ignoring case and surrounding spaces."""
    return _bare(response).casefold() == str(prompt.answer).strip().casefold()


def _bare(response: str) -> str:
    s = re.sub(r"^\s*(?:the answer is|answer:)\s*", "", response.strip(), flags=re.I).strip()
    return s.removesuffix(".").strip().strip("'\"`").strip()


def verifier_for(prompt: Prompt) -> Callable[[Prompt, str], bool]:
    """The prompt's task's verifier, or, for a prompt of no registered task, the one for its answer's type."""
    if prompt.task in TASKS:
        return TASKS[prompt.task].verify
    if isinstance(prompt.answer, (list, tuple)):
        return verify_list
    return verify_text if isinstance(prompt.answer, str) else verify_number


def answer_text(answer) -> str:
    """The answer as the prompt asks for it: '57', 'torrac', '7, 19, 42'."""
    return ", ".join(map(str, answer)) if isinstance(answer, (list, tuple)) else str(answer)


# ----------------------------------------------------------------------------- reward components

def is_correct(prompt: Prompt, response: str) -> bool:
    """The task's verifier: what every accuracy this project reports counts."""
    return verifier_for(prompt)(prompt, response)


def correct_reward(prompts: list[Prompt], responses: list[str]) -> list[float]:
    """1.0 where the task's verifier accepts the reply, else 0.0."""
    return [float(is_correct(p, r)) for p, r in zip(prompts, responses)]


def is_exact(prompt: Prompt, response: str) -> bool:
    """The reply is exactly the answer as the prompt asks: "57" or "57." (spaces around it and after commas
    aside)."""
    return re.sub(r"\s*,\s*", ", ", response.strip()).removesuffix(".") == answer_text(prompt.answer)


def format_reward(prompts: list[Prompt], responses: list[str]) -> list[float]:
    """1.0 where the reply is exactly the answer (is_exact) AND the verifier accepts it; else 0.0. Gated on
    correctness: format alone never pays."""
    return [float(is_exact(p, r) and is_correct(p, r)) for p, r in zip(prompts, responses)]


SHORT_SPAN = 40      # characters beyond the answer at which a right reply's `short` credit reaches 0


def short_reward(prompts: list[Prompt], responses: list[str]) -> list[float]:
    """Partial format credit, paid only to a right reply: max(0, 1 - extra / SHORT_SPAN), extra = the reply's
    characters beyond the answer's (spaces and a final '.' aside). 1.0 for exactly the answer, 0.65 for "The
    answer is 57." (14 extra), 0.0 from 40 extra on, and 0.0 for ANY reply the verifier rejects. A group of right
    sentences then differs in reward (the shorter ones beat the longer ones), so GRPO walks toward the bare
    answer even before a sample shows it (format alone pays nothing until one does)."""
    def credit(p, r):
        extra = len(re.sub(r"\s*,\s*", ", ", r.strip()).removesuffix(".")) - len(answer_text(p.answer))
        return max(0.0, 1.0 - max(extra, 0) / SHORT_SPAN)
    return [credit(p, r) if is_correct(p, r) else 0.0 for p, r in zip(prompts, responses)]


COMPONENTS: dict[str, Callable[[list, list], list[float]]] = {"correct": correct_reward, "format": format_reward,
                                                              "short": short_reward}
DEFAULT_WEIGHTS = {"correct": 1.0, "format": 1.0}


def parse_weights(text: str) -> dict[str, float]:
    """'correct:1,format:0.5' -> {'correct': 1.0, 'format': 0.5}; one clear error for anything else."""
    weights = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition(":")
        if name not in COMPONENTS and name != "judge":
            raise ValueError(f"--reward_weights: unknown component {name!r}; known: correct, format, short, judge")
        try:
            weights[name] = float(value) if sep else float("nan")
        except ValueError:
            weights[name] = float("nan")
        if not weights[name] >= 0:
            raise ValueError(f"--reward_weights: {item!r} needs a weight >= 0, as in {name}:1")
    if not weights or sum(weights.values()) <= 0:
        raise ValueError(f"--reward_weights={text!r}: give at least one positive weight, e.g. correct:1,format:1")
    return weights


class WeightedReward:
    """reward = sum_k w_k * component_k / sum_k w_k, in [0, 1]; callable like get_reward.

    components() returns each component's rewards too, so that a run can log each one's mean beside the total
    (TRL's rewards/<name>/mean). `judge` is a component function (judge.make_judge); needed iff weighted.
    `functions` replaces COMPONENTS' functions by name (the notebook grades with its own copies)."""

    def __init__(self, weights: dict[str, float] | None = None, judge=None, functions=None):
        self.weights = dict(DEFAULT_WEIGHTS if weights is None else weights)
        if self.weights.get("judge", 0) > 0 and judge is None:
            raise ValueError("the judge component needs a judge model (see judge.py)")
        self.functions = COMPONENTS | (functions or {}) | ({"judge": judge} if judge is not None else {})

    def components(self, prompts: list[Prompt], responses: list[str]) -> dict[str, list[float]]:
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        return {name: self.functions[name](prompts, responses) for name, w in self.weights.items() if w > 0}

    def combine(self, parts: dict[str, list[float]]) -> list[float]:
        total = sum(self.weights[name] for name in parts)
        n = len(next(iter(parts.values())))
        return [sum(self.weights[name] * parts[name][i] for name in parts) / total for i in range(n)]

    def __call__(self, prompts: list[Prompt], responses: list[str]) -> list[float]:
        return self.combine(self.components(prompts, responses))


def get_reward(prompts: list[Prompt], responses: list[str]) -> list[float]:
    """r = (correct + format) / 2, the default --reward_weights written out (WeightedReward computes any
    weighting): 1.0 for exactly the right answer ("57"), 0.5 for a right answer in a true sentence ("57 is larger
    than 42."), 0.0 for anything wrong, false or hedged."""
    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    correct, exact = correct_reward(prompts, responses), format_reward(prompts, responses)
    return [(c + f) / 2 for c, f in zip(correct, exact)]


# ----------------------------------------------------------------------------- tasks and datasets

ADD_PARAPHRASES = ((r"^What is (\d+) \+ (\d+)\?", r"Add \1 and \2."),
                   (r"^What is (\d+) \+ (\d+)\?", r"Compute the sum of \1 and \2."),
                   (r"^What is (\d+) \+ (\d+)\?", r"\1 plus \2 makes how much?"))
TASKS: dict[str, Task] = {t.name: t for t in [
    Task("add1", "one-digit addition, a + b with a, b in 0..9", make_add(0, 9, "add1"), verify_number, ADD_PARAPHRASES),
    Task("add2", "two-digit addition, a + b with a, b in 10..99", make_add(10, 99, "add2"), verify_number, ADD_PARAPHRASES),
    Task("larger", "the larger of two distinct two-digit numbers", make_larger, verify_number, (
        (r"^Which is larger, (\d+) or (\d+)\?", r"Between \1 and \2, name the greater one."),
        (r"^Which is larger, (\d+) or (\d+)\?", r"Of the numbers \1 and \2, which is bigger?"),
        (r"^Which is larger, (\d+) or (\d+)\?", r"Tell me the greater number: \1 or \2."))),
    Task("count_items", "count the items in a list of 3..9 words", make_count_items, verify_number, (
        (r"^How many items are in this list: (.*)\?", r"Count the words in this list: \1."),
        (r"^How many items are in this list: (.*)\?", r"Here is a list: \1. How many entries does it have?"),
        (r"^How many items are in this list: (.*)\?", r"What is the number of items in \1?"))),
    Task("count_letter", "count a letter's occurrences in a common word (0..3)", make_count_letter, verify_number, (
        (r"^How many times does the letter '(.)' appear in '(\w+)'\?",
         r"Count how often the letter '\1' occurs in the word '\2'."),
        (r"^How many times does the letter '(.)' appear in '(\w+)'\?", r"In '\2', how many times do you see '\1'?"),
        (r"^How many times does the letter '(.)' appear in '(\w+)'\?", r"What is the number of '\1' letters in '\2'?"))),
    Task("reverse", "write a 4-7 letter word backwards (a string answer)", make_reverse, verify_reversal, (
        (r"^Write the word '(\w+)' backwards\.", r"Spell '\1' in reverse order."),
        (r"^Write the word '(\w+)' backwards\.", r"Reverse the letters of the word '\1'."),
        (r"^Write the word '(\w+)' backwards\.", r"What is '\1' written from right to left?"))),
    Task("sort", "sort 3-5 numbers in 1..99 (a list answer)", make_sort, verify_list, (
        (r"^Sort these numbers from smallest to largest: (.*?)\.", r"Put \1 in increasing order."),
        (r"^Sort these numbers from smallest to largest: (.*?)\.", r"Arrange these numbers in ascending order: \1."),
        (r"^Sort these numbers from smallest to largest: (.*?)\.", r"Order \1 from lowest to highest."))),
]}


def get_task(name: str) -> Task:
    """A built-in task by name, or your own: a .py module or a .jsonl data file (see load_task_file)."""
    if name in TASKS:
        return TASKS[name]
    if name.endswith((".py", ".jsonl")):
        return load_task_file(name)
    raise ValueError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}, or a path to a .py or .jsonl file")


def load_task_file(path: str) -> Task:
    """Your own task, registered under its path so that its prompts find their verifier.

    - a .py module defining `make_prompt(rng: random.Random)` that returns a Prompt or a (question, answer)
      pair, and optionally `verify(prompt, response) -> bool` (default: by the answer's type, see verifier_for)
      and `description`;
    - a .jsonl file, one {"question": ..., "answer": ...} per line (answer: int, string or list of ints), each
      question once; graded by the answer's type. It is split like the built-in tasks (make_dataset).
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--task={path}: no such file")
    by_answer_type = lambda p, r: verifier_for(Prompt(p.question, p.answer))(p, r)
    if file.suffix == ".jsonl":
        records = read_jsonl_task(file, path)
        task = Task(path, f"{len(records)} questions from {file.name}", lambda rng: rng.choice(records),
                    by_answer_type)
    else:
        spec = importlib.util.spec_from_file_location(f"tinygrpo_task_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ValueError(f"--task={path}: importing it failed: {type(e).__name__}: {e}") from None
        if not callable(getattr(module, "make_prompt", None)):
            raise ValueError(f"--task={path}: the module defines no make_prompt(rng) function")
        verify = getattr(module, "verify", None)
        if verify is not None and not callable(verify):
            raise ValueError(f"--task={path}: verify must be a function (prompt, response) -> bool")

        def make(rng, make_prompt=module.make_prompt):
            try:
                p = make_prompt(rng)
            except Exception as e:
                raise ValueError(f"--task={path}: make_prompt failed: {type(e).__name__}: {e}") from None
            if not (isinstance(p, Prompt) or (isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str))):
                raise ValueError(f"--task={path}: make_prompt returned {p!r:.60}, not a (question, answer) pair")
            question, answer = (p.question, p.answer) if isinstance(p, Prompt) else p
            return Prompt(question, tuple(answer) if isinstance(answer, list) else answer, path)
        make(random.Random(0))                    # a broken generator says so now, before any model is loaded
        task = Task(path, getattr(module, "description", f"custom task {file.name}"), make, verify or by_answer_type)
    TASKS[path] = task
    return task


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
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f'{file}:{n}: "question" must be a non-empty string')
        ok_list = isinstance(answer, list) and answer and all(isinstance(a, int) for a in answer)
        if isinstance(answer, bool) or not (isinstance(answer, (int, str)) or ok_list):
            raise ValueError(f'{file}:{n}: "answer" must be an integer, a string or a list of integers')
        if question in first_line:
            raise ValueError(f"{file}:{n}: repeats the question of line {first_line[question]}; each question "
                             "once, so that the held-out questions never appear in training")
        first_line[question] = n
        records.append(Prompt(question, tuple(answer) if isinstance(answer, list) else answer, name))
    if len(records) < 2:
        raise ValueError(f"{file}: {len(records)} question(s); a train and a held-out split need at least 2")
    return records


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
    A .jsonl task is drawn the same way from its lines.
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


# ----------------------------------------------------------------------------- the verifier audit

_ADD = Prompt(f"What is 3 + 5?{SUFFIX}", 8, "add1")
_ADD2 = Prompt(f"What is 42 + 57?{SUFFIX}", 99, "add2")
_LARGER = Prompt(f"Which is larger, 42 or 57?{SUFFIX}", 57, "larger")
_LARGER2 = Prompt(f"Which is larger, 15 or 43?{SUFFIX}", 43, "larger")
_ITEMS = Prompt(f"How many items are in this list: apple, pear, fox?{SUFFIX}", 3, "count_items")
_LETTER = Prompt(f"How many times does the letter 'r' appear in 'strawberry'?{SUFFIX}", 3, "count_letter")
_REVERSE = Prompt("Write the word 'carrot' backwards. Answer with just the reversed word.", "torrac", "reverse")
_SORT = Prompt("Sort these numbers from smallest to largest: 42, 7, 19. Answer with just the sorted numbers, "
               "separated by commas.", (7, 19, 42), "sort")
LONG = "Let me think about this step by step. " * 300

# (prompt, response, kind, expected correct, expected format): hand-written hard cases for every task.
# The expected values are what a fair grader says; the audit counts where the verifier disagrees.
AUDIT_CASES: list[tuple[Prompt, str, str, int, int]] = [
    (_LARGER, "57", "right", 1, 1),
    (_LARGER, "57.", "right", 1, 1),
    (_LARGER, "42", "wrong", 0, 0),
    (_LARGER, "57 is larger than 42.", "right, a true sentence", 1, 0),
    (_LARGER, "42 is smaller than 57.", "right, a true sentence", 1, 0),
    (_LARGER, "The larger number is 57.", "right, a true sentence", 1, 0),
    (_LARGER2, "15 is larger than 43.", "false claim ending on the right answer", 0, 0),
    (_LARGER, "42 is larger than 57, so 57.", "false claim, then the right answer", 0, 0),
    (_LARGER, "57 or 42", "hedged", 0, 0),
    (_LARGER, "Not 57.", "denies the right answer", 0, 0),
    (_LARGER, "It is not 42, it is 57.", "known false negative: a denial", 1, 0),
    (_LARGER, "42? No, 57", "hedged", 0, 0),
    (_LARGER, "fifty-seven", "right answer in words", 1, 0),
    (_LARGER, "\uff15\uff17", "right answer in fullwidth digits", 1, 0),
    (_LARGER, "57. I hope this helps!", "chatter after the answer", 1, 0),
    (_LARGER, "Between 42 and 57, 57 is larger.", "restates the question, then right", 1, 0),
    (_LARGER, "57, which is larger than 42.", "right, a true sentence", 1, 0),
    (_LARGER, "57 is larger than 42 because 5 > 4.", "known false negative: a true aside", 1, 0),
    (_LARGER, "", "empty", 0, 0),
    (_LARGER, LONG + "57", "very long", 1, 0),
    (_ADD, "8", "right", 1, 1),
    (_ADD, " 8. ", "right", 1, 1),
    (_ADD, "9", "wrong", 0, 0),
    (_ADD, "3 + 5 = 8", "right, a true equation", 1, 0),
    (_ADD, "The sum of 3 and 5 is 8.", "right, a true sentence", 1, 0),
    (_ADD, "8 (because 3 and 5 make 8)", "right, then a true reason", 1, 0),
    (_ADD, "3 + 5 = 9 = 8", "false claim ending on the right answer", 0, 0),
    (_ADD, "3 + 5", "restates the question only", 0, 0),
    (_ADD, "8? No, 9", "hedged", 0, 0),
    (_ADD, "9? No, 8", "hedged", 0, 0),
    (_ADD, "8. Or maybe 9", "hedged", 0, 0),
    (_ADD, "8, since 5 + 3 is 8 and 1", "false claim", 0, 0),
    (_ADD, "eight", "right answer in words", 1, 0),
    (_ADD, "8.0", "right, as a decimal", 1, 0),
    (_ADD, "-8", "wrong sign", 0, 0),
    (_ADD, "\u0668", "right answer in Arabic-Indic digits", 1, 0),
    (_ADD, "8\n\nLet me know if you have any other questions!", "chatter after the answer", 1, 0),
    (_ADD, "  \n ", "empty", 0, 0),
    (_ADD, "8" + "!" * 100000, "very long", 1, 0),
    (_ADD2, "99", "right", 1, 1),
    (_ADD2, "42 + 57 = 99", "right, a true equation", 1, 0),
    (_ADD2, "ninety-nine", "right answer in words", 1, 0),
    (_ADD2, "42 + 57 = 89", "false claim", 0, 0),
    (_ITEMS, "3", "right", 1, 1),
    (_ITEMS, "There are 3 items in the list.", "right, a true sentence", 1, 0),
    (_ITEMS, "three", "right answer in words", 1, 0),
    (_ITEMS, "4", "wrong", 0, 0),
    (_ITEMS, "3 or 4", "hedged", 0, 0),
    (_LETTER, "3", "right", 1, 1),
    (_LETTER, "There are 3 r's in strawberry.", "right, a true sentence", 1, 0),
    (_LETTER, "2", "wrong", 0, 0),
    (_LETTER, "The letter 'r' appears 2 times, so 3.", "hedged", 0, 0),
    (_LETTER, "Strawberry has 10 letters and 3 r's.", "known false negative: a true aside", 1, 0),
    (_REVERSE, "torrac", "right", 1, 1),
    (_REVERSE, "torrac.", "right", 1, 1),
    (_REVERSE, "The reversed word is 'torrac'.", "right, a true sentence", 1, 0),
    (_REVERSE, "carrot backwards is torrac", "right, restates the question", 1, 0),
    (_REVERSE, "TORRAC", "right, other case", 1, 0),
    (_REVERSE, "torrca", "wrong", 0, 0),
    (_REVERSE, "carrot", "wrong: the word itself", 0, 0),
    (_REVERSE, "torrca or torrac", "hedged", 0, 0),
    (_REVERSE, "t-o-r-r-a-c", "right letters, not a word", 0, 0),
    (_REVERSE, "", "empty", 0, 0),
    (_SORT, "7, 19, 42", "right", 1, 1),
    (_SORT, "7,19,42.", "right", 1, 1),
    (_SORT, "The sorted numbers are 7, 19, 42.", "right, a true sentence", 1, 0),
    (_SORT, "7 < 19 < 42", "right, a true chain", 1, 0),
    (_SORT, "7, 42, 19", "wrong order", 0, 0),
    (_SORT, "7, 19", "incomplete", 0, 0),
    (_SORT, "7, 19, 42 or 7, 42, 19", "hedged", 0, 0),
    (_SORT, "", "empty", 0, 0),
]


def _short(text: str, n: int) -> str:
    r = repr(text)
    return r if len(r) <= n else r[:n - 3] + "..."


def audit(cases=None, weights=None, print_fn: Callable[[str], None] = print, functions=None) -> tuple[int, int]:
    """Grade every audit case with each component, one row each, and return (false positives, false
    negatives): replies the reward pays more than a fair grader would (the expected values), and less. A row
    whose kind starts with "known" is a documented strictness of the verifier: marked and counted apart.
    functions: {component name: function} to grade with instead of COMPONENTS' (see WeightedReward)."""
    cases = AUDIT_CASES if cases is None else cases
    reward = WeightedReward(weights, functions=functions)
    false_pos = false_neg = known = 0
    task = None
    for prompt, response, kind, want_correct, want_format in cases:
        if prompt.task != task:
            task = prompt.task
            print_fn(f"\n{task}: {prompt.question[:100]}\n  {'reply':40} {'kind':38} correct format reward (expected)")
        parts = reward.components([prompt], [response])
        got = {name: values[0] for name, values in parts.items()}
        want = {"correct": want_correct, "format": want_format}
        wrong = [name for name in parts if got[name] != want[name]]
        mark = ""
        if wrong and kind.startswith("known"):
            known, mark = known + 1, "  (known)"
        elif wrong:
            false_pos += any(got[n] > want[n] for n in wrong)
            false_neg += any(got[n] < want[n] for n in wrong)
            mark = "  <-- MISMATCH: " + ", ".join(wrong)
        total, expected = (reward.combine({name: [v[name]] for name in parts})[0] for v in (got, want))
        print_fn(f"  {_short(response, 40):40} {kind[:38]:38} {got.get('correct', '-'):>7} "
                 f"{got.get('format', '-'):>6} {total:.2f} ({expected:.2f}){mark}")
    print_fn(f"\n{len(cases)} cases: {false_pos} false positives, {false_neg} false negatives"
             + (f" (and {known} known, documented false negatives: see verify_number)" if known else ""))
    return false_pos, false_neg


def sanity_check(task: str = "larger", print_fn: Callable[[str], None] = print, functions=None) -> bool:
    """One task's part of the audit; True iff the verifier and format agree with every expected value."""
    return audit([c for c in AUDIT_CASES if c[0].task == task], print_fn=print_fn, functions=functions) == (0, 0)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Audit every task's verifier on hand-written hard cases.")
    ap.add_argument("--audit", action="store_true", help="print the audit table (the default action)")
    ap.add_argument("--task", default=None, help="only this task's cases")
    args = ap.parse_args(argv)
    cases = [c for c in AUDIT_CASES if args.task in (None, c[0].task)]
    sys.exit(0 if audit(cases) == (0, 0) else 1)


if __name__ == "__main__":
    main()
