"""The simplest honest rule for a numeric answer: the reply's only integer is the answer, and no
negation (`simple_rule` below). Measured on the 55 audit cases with an integer answer
(simple_rule_errors; SIMPLE_RULE holds the numbers and tests/test_task.py recomputes them): it has
0 false positives, but 17 false negatives, half of the 33 replies a fair grader calls right:
    "57 is larger than 42.", "3 + 5 = 8", "The sum of 3 and 5 is 8."   true claims: two integers
    "fifty-seven", "eight", "three"                                    the answer in words: none
    "8.0"                                                              a decimal: two integers
So this file reads claims. read_claims checks each equation and comparison and takes its result
as the answer, reads number words in a reply without digits and decimals by value, and fails a
reply with a second candidate: verify_number pays all of the above, still pays no wrong reply, and
misses 3 of the 33 (its documented "known" rows). That is why it is longer than one line.

    python verify.py --audit               # audit_cases.json: each component against a fair grader
    python verify.py --audit --task=add1   # one task's cases

A verifier is a function (prompt, reply) -> bool that reads only prompt.answer (task.py names each
task's). It FAILS CLOSED: a reply is right only if it commits to the right answer and asserts
nothing false, whatever number it ends on:
    "57", "57.", "The larger number is 57.", "57 is larger than 42.", "3 + 5 = 8"    right
    "15 is larger than 43." (a false comparison), "3 + 5 = 9 = 8" (a false equation) wrong
    "57 or 42", "8? No, 9", "8. Or maybe 9" (two different candidate answers)        wrong
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:              # task.py imports this module; the audit imports task.py as it runs
    from task import Prompt

AUDIT_FILE = Path(__file__).resolve().parent / "audit_cases.json"
SIMPLE_RULE = {"cases": 55, "false_positives": 0, "false_negatives": 17}   # simple_rule_errors()

# ----------------------------------------------------------------------------- reading numbers and claims

# A number: a run of decimal digits (\d: any script's, so '٥٧' and fullwidth '５７' are 57), with an
# optional decimal part ("8.0" is 8) and a '-' sign only when no digit comes right before it ("5-3" is
# a subtraction, "x=-3" is -3). Thousands separators are not read: "1,000" is the two numbers 1 and 0.
NUMBER_RE = re.compile(r"(?:(?<!\d)(?<!\d )-)?\d+(?:\.\d+)?")
MAX_DIGITS = 100          # no answer is longer; a longer run reads as a number equal to nothing

# What may stand between two numbers, read as one claim: an operator joins them into an expression
# ("3 + 5", "the sum of 3 and 5"), a relation states something checkable ("= 8", "is larger than
# 42"). The relations are tried in order on the text between two numbers.
OPERATOR_RE = re.compile(r"\s*(\+|plus|and|-|−|minus|\*|×|x|times|/|÷|divided by)\s*", re.I)
WHICH = r"(?:,?\s*which)?"      # "57, which is larger than 42"
RELATIONS = [(name, re.compile(pattern, re.I)) for name, pattern in [
    ("<=", WHICH + r"\s*(?:is\s+)?not\s+(?:larger|bigger|greater|more|higher)\s+than\s*"
                   r"|\s*(?:<=|≤)\s*"),
    (">=", WHICH + r"\s*(?:is\s+)?not\s+(?:smaller|less|lower|fewer)\s+than\s*|\s*(?:>=|≥)\s*"),
    (">", WHICH + r"\s*(?:is\s+)?(?:larger|bigger|greater|more|higher)\s+than\s*|\s*>\s*"),
    ("<", WHICH + r"\s*(?:is\s+)?(?:smaller|less|lower|fewer)\s+than\s*|\s*<\s*"),
    ("=", r"\s*(?:=|is equal to|equals|is|makes?|gives)\s*"),
]]
NEGATION_RE = re.compile(r"\b(?:not|n't|never|no)\s*$", re.I)     # "not 57": denied, not asserted
HOLDS = {"=": lambda a, b: a == b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
         ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b}

UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_U, _T, _D = "|".join(sorted(UNITS, key=len, reverse=True)), "|".join(TENS), "|".join(UNITS[1:10])
NUMBER_WORDS_RE = re.compile(rf"\b(?:(?:{_D})\s+hundred(?:(?:\s+and)?\s+(?=(?:{_T}|{_U})\b))?)?"
                             rf"(?:(?:{_T})(?:[\s-](?:{_D}))?|(?:{_U}))?\b", re.I)
NOT_A_NUMBER_ONE = re.compile(
    r"\b(?:the|which|that|this|each|any|no|larger|bigger|greater|smaller|other)\s+$", re.I)


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
    """Number words as digits, in a reply that has no digits at all ("fifty-seven" -> "57"). Where the
    reply has digits its words are left alone, so "the larger one is 57" is not read as two answers;
    "one" after "the", "which", "larger", ... is a pronoun, not a number."""
    if re.search(r"\d", text):
        return text

    def digits(m):
        before = text[max(0, m.start() - 10):m.start()]
        if not m.group().strip() or (m.group().lower() == "one" and NOT_A_NUMBER_ONE.search(before)):
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
    """values [3, 5, 2], operators ['+', '*'] -> 3 + 5 * 2 = 13 (* and / first); None: undefined."""
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

    The reply's numbers are split into claims at whatever stands between two of them: an operator or
    a relation continues a claim, anything else starts a new one. Then per claim:
        "57"                               commits to 57
        "3 + 5 = 8", "3 and 5 make 8"      an equation: must hold; commits to its result, 8 (only if a
                                           side is one number: "3 + 5 = 5 + 3" commits to nothing)
        "57 is larger than 42", "42 < 57"  a comparison: must hold; commits to its larger side, 57
        "3 + 5", "42 and 57"               no relation: restates the question, commits to nothing
        "not 57", "isn't 42"               denied: the reply does not hold (fails closed)
    """
    text = words_to_digits(text)
    matches = list(NUMBER_RE.finditer(text))
    commitments, all_hold = [], True
    i = 0
    while i < len(matches):
        if NEGATION_RE.search(text[max(0, matches[i].start() - 8):matches[i].start()]):
            all_hold = False
        sides = [([number_value(matches[i].group())], [])]         # [(values, operators)]
        relations = []
        while i + 1 < len(matches):
            gap = text[matches[i].end():matches[i + 1].start()]
            value = number_value(matches[i + 1].group())
            if (op := OPERATOR_RE.fullmatch(gap)) is not None:
                sides[-1][0].append(value)
                sides[-1][1].append(op.group(1))
            elif (rel := next((n for n, r in RELATIONS if r.fullmatch(gap)), None)) is not None:
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
            pairs = zip(relations, side_values, side_values[1:])
            all_hold &= all(HOLDS[r](a, b) for r, a, b in pairs)
            if set(relations) != {"="}:
                commitments.append(max(side_values))
            elif any(len(values) == 1 for values, _ in sides):   # "3 + 5 = 8" states 8; "14 + 90 = 14 +
                commitments.append(side_values[-1])              # 90" states no result: commits to nothing
        elif len(sides[0][0]) == 1:
            commitments.append(side_values[0])
    return commitments, all_hold


# ----------------------------------------------------------------------------- verifiers (fail closed)

def verify_number(prompt: Prompt, response: str) -> bool:
    """Right iff every claim in the reply holds and all the numbers it commits to equal the answer
    (read_claims).

    - Numbers: digits of any script ('٥٧', '５７'); decimals by value ("8.0" is 8, "7.5" is not);
      number words ("fifty-seven", up to "nine hundred ninety-nine") only in a reply with no digits.
    - Claims must hold: "15 is larger than 43." and "3 + 5 = 9" are wrong whatever they end on.
    - A denied number ("not 57", "isn't 42") makes the reply wrong: negations are not read.
    - One answer only: a second different candidate ("57 or 42", "8? No, 9", "8. Or maybe 9", "the
      answer is 8 and 1") is wrong; so is a reply that commits to nothing ("3 + 5", "", "I don't know").
    - Known strictness (false negatives): a true aside with another number ("There are 10 letters and
      3 r's"), an enumeration ("1. apple 2. pear"), restating the question's list in a count task.
    """
    commitments, all_hold = read_claims(response)
    return all_hold and len(commitments) > 0 and all(c == prompt.answer for c in commitments)


def verify_list(prompt: Prompt, response: str) -> bool:
    """Right iff the reply's numbers, in order, are exactly the answer's, and every claim holds
    ("7, 19, 42", "7 < 19 < 42", "The sorted list is 7, 19, 42."). Restating the unsorted input, or
    any other number, is wrong: the reply must not contain two candidate lists."""
    numbers = [number_value(m.group()) for m in NUMBER_RE.finditer(words_to_digits(response))]
    return read_claims(response)[1] and numbers == [Fraction(a) for a in prompt.answer]


def verify_reversal(prompt: Prompt, response: str) -> bool:
    """Right iff the reply contains the answer as a word (any case, quotes allowed) and no rival:
    another word of about the same letters ("torac or torrac", the unreversed "carrot", a wrong
    anagram), unless that word is the question's word followed by "reversed" / "backwards" ("carrot
    backwards is torrac")."""
    answer = prompt.answer.casefold()
    words = [(m.group().casefold(), m.end()) for m in re.finditer(r"[^\W\d_]+", response)]
    if answer not in (w for w, _ in words):
        return False
    for w, end in words:
        if w == answer:
            continue
        rival = (abs(len(w) - len(answer)) <= 2
                 and _common_letters(w, answer) >= max(3, len(answer) - 2))
        named = w == answer[::-1] and re.match(r"['\"]?\s*(?:reversed|backwards|spelled backwards)\b",
                                               response[end:], re.I)
        if rival and not named:
            return False
    return True


def _common_letters(a: str, b: str) -> int:
    return sum(min(a.count(c), b.count(c)) for c in set(a))


def verify_text(prompt: Prompt, response: str) -> bool:
    """Any string answer (a data file's): right iff the reply, stripped of quotes, a final period and a
    leading "The answer is" / "Answer:", equals the answer, ignoring case and surrounding spaces."""
    return _bare(response).casefold() == str(prompt.answer).strip().casefold()


def _bare(response: str) -> str:
    s = re.sub(r"^\s*(?:the answer is|answer:)\s*", "", response.strip(), flags=re.I).strip()
    return s.removesuffix(".").strip().strip("'\"`").strip()




def verifier_for_answer(answer) -> Callable[[Prompt, str], bool]:
    """The verifier for an answer of this type: a list's, a string's, or the numeric one."""
    if isinstance(answer, (list, tuple)):
        return verify_list
    return verify_text if isinstance(answer, str) else verify_number


# ----------------------------------------------------------------------------- the simplest rule, measured

NEGATION_WORD_RE = re.compile(r"\b(?:not|never|no)\b|n't", re.I)


def simple_rule(prompt: Prompt, response: str) -> bool:
    """The reply's only integer is the answer, and no negation."""
    integers = re.findall(r"-?\d+", response)
    return (len(integers) == 1 and int(integers[0]) == prompt.answer
            and not NEGATION_WORD_RE.search(response))


def simple_rule_errors(cases=None) -> dict:
    """simple_rule against a fair grader (the expected `correct`) on the audit cases with an integer
    answer: {"cases": how many, "false_positives": [reply...], "false_negatives": [reply...]}."""
    cases = [c for c in (audit_cases() if cases is None else cases) if isinstance(c[0].answer, int)]
    fp = [r for p, r, _, want, _ in cases if simple_rule(p, r) and not want]
    fn = [r for p, r, _, want, _ in cases if want and not simple_rule(p, r)]
    return {"cases": len(cases), "false_positives": fp, "false_negatives": fn}


# ----------------------------------------------------------------------------- the audit

def audit_cases(path=AUDIT_FILE) -> list:
    """audit_cases.json as (prompt, reply, kind, expected correct, expected format) rows. A reply
    there is a string, or [[text, times], ...] pieces joined (the very long ones)."""
    from task import Prompt
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    answer = lambda a: tuple(a) if isinstance(a, list) else a
    prompts = {name: Prompt(p["question"], answer(p["answer"]), p["task"])
               for name, p in data["prompts"].items()}
    join = lambda reply: reply if isinstance(reply, str) else "".join(t * n for t, n in reply)
    return [(prompts[c["prompt"]], join(c["reply"]), c["kind"], c["correct"], c["format"])
            for c in data["cases"]]


def _short(text: str, n: int) -> str:
    r = repr(text)
    return r if len(r) <= n else r[:n - 3] + "..."


def audit(cases=None, weights=None, print_fn: Callable[[str], None] = print,
          functions=None) -> tuple[int, int]:
    """Grade every audit case with each component, one row each, and return (false positives, false
    negatives): replies the reward pays more than a fair grader would (the expected values), and
    less. A row whose kind starts with "known" is a documented strictness of the verifier: marked
    and counted apart. functions: {component name: function} to grade with instead of COMPONENTS'
    (see task.WeightedReward)."""
    from task import WeightedReward
    cases = audit_cases() if cases is None else cases
    reward = WeightedReward(weights, functions=functions)
    false_pos = false_neg = known = 0
    task = None
    for prompt, response, kind, want_correct, want_format in cases:
        if prompt.task != task:
            task = prompt.task
            print_fn(f"\n{task}: {prompt.question[:100]}\n"
                     f"  {'reply':40} {'kind':38} correct format reward (expected)")
        parts = reward.components([prompt], [response])
        got = {name: values[0] for name, values in parts.items()}
        want = {"correct": want_correct, "format": want_format}
        if "short" in got:       # a shaped credit: its value is the reply's length's, but never for a wrong reply
            want["short"] = got["short"] if want_correct else 0.0
        wrong = [name for name in parts if got[name] != want[name]]
        mark = ""
        if wrong and kind.startswith("known"):
            known, mark = known + 1, "  (known)"
        elif wrong:
            false_pos += any(got[n] > want[n] for n in wrong)
            false_neg += any(got[n] < want[n] for n in wrong)
            mark = "  <-- MISMATCH: " + ", ".join(wrong)
        total, expected = (reward.combine({n: [v[n]] for n in parts})[0] for v in (got, want))
        print_fn(f"  {_short(response, 40):40} {kind[:38]:38} {got.get('correct', '-'):>7} "
                 f"{got.get('format', '-'):>6} {total:.2f} ({expected:.2f}){mark}")
    note = f" (and {known} known, documented false negatives: see verify_number)" if known else ""
    print_fn(f"\n{len(cases)} cases: {false_pos} false positives, {false_neg} false negatives{note}")
    return false_pos, false_neg


def sanity_check(task: str = "larger", print_fn: Callable[[str], None] = print,
                 functions=None) -> bool:
    """One task's part of the audit: True iff the verifier and format agree with every expected one."""
    cases = [c for c in audit_cases() if c[0].task == task]
    return audit(cases, print_fn=print_fn, functions=functions) == (0, 0)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Audit every task's verifier on the hand-written hard "
                                             "cases of audit_cases.json.")
    ap.add_argument("--audit", action="store_true", help="print the audit table (the default)")
    ap.add_argument("--task", default=None, help="only this task's cases")
    args = ap.parse_args(argv)
    cases = [c for c in audit_cases() if args.task in (None, c[0].task)]
    if not cases:
        sys.exit(f"error: --task={args.task}: no audit cases for it (the built-in tasks have them)")
    code = 0 if audit(cases) == (0, 0) else 1
    simple = simple_rule_errors(cases)
    if simple["cases"]:
        print(f"the simplest rule (the reply's only integer is the answer, no negation) on the "
              f"{simple['cases']} numeric cases: {len(simple['false_positives'])} false positives, "
              f"{len(simple['false_negatives'])} false negatives")
    sys.exit(code)


if __name__ == "__main__":
    main()
