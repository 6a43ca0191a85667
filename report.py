"""A run on one page: runs/<name>/report.html, one self-contained file (CSS inline, the figure as a base64 PNG, no
external URL) that opens offline in any browser.

    python report.py runs/default          # (re)write runs/default/report.html; train.py writes it at the end
    python show.py runs/default --html     # the same

From the run folder's files only (no model is loaded):
  eval.json          the held-out evaluations before and after (train.py writes it with write_report)
  log.jsonl          one line per step: the figure, the reward components over the steps
  completions.jsonl  each step's groups: the first, a middle and the last step's most informative group
  config.json        of the current checkpoint: the settings, the task (whose verifier audit is shown)
"""
import base64
import html
import io
import json
import os
import statistics
import sys
from pathlib import Path

from checkpoint import current, flat
from eval import GRADER
from show import GROUP_CSS, SHADES, renamed, run_figure, shade


def read_jsonl(path):
    """The records of a JSONL file ([] when there is none); a line a kill cut short ends it."""
    records = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                break
    return records


def read_evals(run):
    """A run folder's eval.json ({"grader", "before", "after", "paraphrase", "n_eval"}), {} if it has none."""
    path = Path(run) / "eval.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def read_run(run):
    """{"history", "records", "evals", "config"} of a run folder; one line when it holds no run."""
    run = Path(run)
    history = renamed(read_jsonl(run / "log.jsonl"))      # an older run's keys under today's names
    if not history:
        raise ValueError(f"{run} holds no run: {run / 'log.jsonl'} is missing or empty")
    evals = read_evals(run)
    folder = current(run)
    config = json.loads((folder / "config.json").read_text()) if folder and (folder / "config.json").is_file() else {}
    return {"history": history, "records": read_jsonl(run / "completions.jsonl"), "evals": evals, "config": config}


# ----------------------------------------------------------------------------- sections

esc = html.escape


def num(x, digits=3):
    """A number as the report prints it (the test reads it back: round(value, digits))."""
    return "–" if x is None else f"{x:.{digits}f}"


def pct(x):
    return "–" if x is None else f"{x:.1%}"


def headline(run, data):
    cfg, ev, h = data["config"], data["evals"], data["history"]
    before, after = ev.get("before"), ev.get("after")
    if after:
        acc = (f"{pct(before['accuracy'])} &rarr; " if before else "") + pct(after["accuracy"])
        line = f"<p class=big>held-out greedy accuracy <b>{acc}</b></p>"
    else:
        line = "<p class=big>no held-out evaluation (the run has not finished)</p>"
    return (f"<h1>tinygrpo run <code>{esc(str(run))}</code></h1>{line}<p>{esc(str(cfg.get('model', '?')))} trained "
            f"with GRPO on task <b>{esc(str(cfg.get('task', '?')))}</b> for {h[-1]['step']} steps; graded by "
            f"{esc(ev.get('grader', GRADER))}. Sections: <a href='#eval'>before/after</a> · "
            "<a href='#figure'>figure</a> · <a href='#examples'>examples</a> · <a href='#groups'>groups</a> · "
            "<a href='#components'>reward over steps</a> · <a href='#audit'>verifier audit</a> · "
            "<a href='#settings'>settings</a></p>")


def eval_section(data):
    ev = data["evals"]
    cols = [(name, ev.get(name)) for name in ("before", "after", "paraphrase") if ev.get(name)]
    rows = [("held-out greedy accuracy", "accuracy", pct), ("exact format (just the answer)", "format", pct),
            ("mean reward (greedy)", "reward", num), ("mean completion (chars)", "completion_chars",
                                                      lambda x: num(x, 0)),
            ("sampled accuracy", "sampled_accuracy", pct)]
    body = "".join(f"<tr><th>{label}</th>" + "".join(f"<td data-key='{name}.{key}'>{fmt(e.get(key))}</td>"
                                                     for name, e in cols) + "</tr>"
                   for label, key, fmt in rows if any(key in e for _, e in cols))
    n = ev.get("n_eval")
    heads = {"paraphrase": "after, reworded"}        # the same questions in templates training never sees
    table = (f"<table><tr><th></th>{''.join(f'<th>{heads.get(name, name)}</th>' for name, _ in cols)}</tr>"
             f"{body}</table>"
             if cols else "<p>no evaluation was written (eval.json is missing)</p>")
    return (f"<h2 id=eval>Before and after</h2><p>On {n or 'the'} held-out prompts (never trained on), greedy "
            f"decoding, accuracy graded by {esc(ev.get('grader', GRADER))}: right only if the reply commits to the "
            f"right answer and asserts nothing false. Exact format: the reply is just the answer."
            + (" After, reworded: the same questions in three templates training never sees (eval.paraphrased)."
               if ev.get("paraphrase") else "") + f"</p>{table}")


def figure_section(data):
    ev = data["evals"]
    last = data["history"][-1]["step"]
    points = {name: (step, ev[name]["accuracy"]) for name, step in (("before", 0), ("after", last)) if ev.get(name)}
    buf = io.BytesIO()
    run_figure(data["history"], points).savefig(buf, format="png", dpi=80)
    src = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return ("<h2 id=figure>The run</h2><p>Top row: the sampled reward and its components (the held-out accuracy "
            "before and after as black points), the loss, the KL to the reference model per token. Bottom row: the "
            "completion length in tokens, the share cut off at max_new_tokens, the share of groups whose rewards "
            f"were all equal (they teach nothing).</p><img alt='the run over the steps' src='{src}'>")


def examples_section(data):
    ev = data["evals"]
    before, after = ((ev.get(k) or {}).get("examples", []) for k in ("before", "after"))
    if not after:
        return "<h2 id=examples>Examples</h2><p>none (eval.json is missing)</p>"

    def cell(e):
        if not e:
            return "<td>–</td>"
        _, text, reward, right = e
        return (f"<td class={'right' if right else 'wrong'}><pre>{esc(text)}</pre>"
                f"<small>reward {num(reward, 2)}, {'right' if right else 'wrong'}</small></td>")

    rows = "".join(f"<tr><td>{esc(a[0])}</td>{cell(before[i] if i < len(before) else None)}{cell(a)}</tr>"
                   for i, a in enumerate(after))
    return ("<h2 id=examples>Examples</h2><p>The first held-out prompts, the greedy reply before and after "
            "training (green: right by the verifier, red: wrong).</p>"
            f"<table><tr><th>prompt</th><th>before</th><th>after</th></tr>{rows}</table>")


def informative_group(groups):
    """The group to show: the one whose rewards spread most (the largest std: the most for GRPO to learn from), the
    first of equals; a step whose groups all have equal rewards shows its first."""
    spreads = [statistics.pstdev([c["reward"] for c in g["completions"]]) for g in groups]
    return spreads.index(max(spreads))


def level(value, big):
    """1..SHADES: a value's strength against the group's largest |value| (0 only for 0: a small share stays
    visible)."""
    return max(1, shade(value, big)) if value and big else 0


def token_cell(c, big_share, big_kl):
    """A completion as its tokens, each on green (pushed up: share < 0) or red (pushed down) as strong as its share of
    the update, underlined in blue as strong as its KL to the reference; both numbers in its tooltip and in
    data-share / data-kl (as completions.jsonl holds them). The stop token (EOS) in italics."""
    kls = c.get("kl")
    spans = []
    for t, (text, share) in enumerate(zip(c["tokens"], c["share"])):
        kl = kls[t] if kls else None
        up = "u" if share < 0 else "d"
        classes = ([f"{up}{level(share, big_share)}"] if share else []) + \
                  ([f"k{level(kl, big_kl)}"] if kl else [])
        body = esc(text.replace("\n", "↵") or "·")
        if t == len(c["tokens"]) - 1 and not c.get("truncated"):
            body = f"<i>{body}</i>"
        tip = f"{text!r}: share of the update {share:+.3g}" + (f", KL {kl:.3g}" if kls else "")
        data = f" data-share='{share!r}'" + (f" data-kl='{kl!r}'" if kls else "")
        spans.append(f"<span class='t {' '.join(classes)}'{data} title='{esc(tip)}'>{body}</span>")
    return f"<td class=tokens>{''.join(spans)}</td>"


def group_block(record):
    groups = record["prompts"]
    b = informative_group(groups)
    group = groups[b]
    comps = group["completions"]
    names = list(comps[0]["parts"]) if comps else []
    by_token = bool(comps) and all("tokens" in c for c in comps)      # an older completions.jsonl has no tokens
    big = max((abs(c["advantage"]) for c in comps), default=0.0) or 1.0
    big_share = max((abs(x) for c in comps for x in c.get("share", ())), default=0.0)
    big_kl = max((abs(x) for c in comps for x in c.get("kl") or ()), default=0.0)
    why = "the one whose rewards differ most" if len({c["reward"] for c in comps}) > 1 else \
        "every group's rewards are equal: A = 0, nothing to learn"
    rows = []
    for j, c in enumerate(comps):
        a = c["advantage"]
        if by_token:
            text = token_cell(c, big_share, big_kl)
        else:                                         # the whole completion coloured by its advantage
            colour = f"rgba({'0,170,0' if a > 0 else '220,0,0'},{0.45 * abs(a) / big:.2f})"
            text = f"<td style='background:{colour}'><pre>{esc(c['text'])}</pre></td>"
        rows.append(f"<tr><td>{j}</td><td>{num(c['reward'], 2)}</td>"
                    + "".join(f"<td>{num(c['parts'][n], 2)}</td>" for n in names)
                    + f"<td>{a:+.2f}</td><td>{c['length']}{' (cut)' if c.get('truncated') else ''}</td>{text}</tr>")
    head = "".join(f"<th>{esc(n)}</th>" for n in names)
    kl_note = ("" if not by_token else "; no KL (beta = 0)" if "kl" not in comps[0] else
               "; out of the loss (drop_zero_std_groups): no KL" if comps[0]["kl"] is None else
               "; KL 0: the policy is still the reference" if big_kl == 0 else f"; largest KL {big_kl:.3g}")
    return (f"<h3>step {record['step']}: group {b + 1} of {len(groups)} ({why}{kl_note})</h3><p><b>"
            f"{esc(group['question'])}</b> answer <code>{esc(str(group['answer']))}</code></p><table><tr><th>#</th>"
            f"<th>reward</th>{head}<th>advantage A</th><th>tokens</th><th>completion</th></tr>{''.join(rows)}</table>")


def groups_section(data):
    records = data["records"]
    if not records:
        return "<h2 id=groups>Groups</h2><p>none (completions.jsonl is missing)</p>"
    chosen = sorted({0, len(records) // 2, len(records) - 1})
    by_token = any("tokens" in c for g in records[-1]["prompts"] for c in g["completions"])
    intro = ("<h2 id=groups>What GRPO saw: one group at the start, middle and end</h2><p>G completions of one "
             "prompt, its reward and the reward's components beside each; each one's advantage A = its reward "
             "minus the group's mean (divided by the group's std with scale_rewards).</p>")
    if not by_token:
        return (intro + "<p>Each completion is coloured by its advantage: <span style='background:rgba(0,170,0,.45)'>"
                "green</span> where GRPO pushes its tokens up, <span style='background:rgba(220,0,0,.45)'>red</span> "
                "where down, the stronger the larger |A|. (This run's completions.jsonl has no per-token records: a "
                "run of today's train.py shades each token.)</p>" + "".join(group_block(records[i]) for i in chosen))
    grpo_cfg = data["config"].get("grpo", {})
    agg, estimator = grpo_cfg.get("loss_agg", "seq_mean"), grpo_cfg.get("kl_estimator", "k3")
    return (intro + f"<div class=tg>{GROUP_CSS}<p>Each token is shaded by its share of the update, on the group's "
            f"scale: <span class=u{SHADES}>green</span> where GRPO pushes it up (A &gt; 0), <span class=d{SHADES}>"
            f"red</span> where down. As the batch is sampled every token of a completion gets the same share, -A "
            f"times its weight in the loss (loss_agg {esc(agg)}: {esc(AGG_WEIGHT.get(agg, '?'))}). <span "
            f"class=k{SHADES}>A blue underline</span>: the token's KL to the reference model ({esc(estimator)}, on "
            "the group's scale): where the policy has moved from where it started. Hover over a token for both "
            "numbers.</p>" + "".join(group_block(records[i]) for i in chosen) + "</div>")


# each token's weight in the loss by grpo.GRPOConfig.loss_agg (show.loss_weights)
AGG_WEIGHT = {"seq_mean": "1 / (its completion's length x completions), so a short completion's tokens weigh more "
                          "each",
              "token_mean": "1 / the batch's tokens, the same for every token",
              "seq_sum": "1 / completions, the same for every token",
              "constant": "1 / (completions x max_new_tokens), the same for every token"}


COLUMNS = [(key, key) for key in ("reward", "reward_std", "frac_reward_zero_std", "kl", "completion_length",
                                  "truncated")]       # labelled by their log.jsonl keys, as train.py prints them


def components_section(data):
    history = data["history"]
    parts = sorted({k for h in history for k in h if k.startswith("reward/")})
    cols = COLUMNS[:1] + [(k.removeprefix("reward/"), k) for k in parts] + COLUMNS[1:]
    head = "".join(f"<th>{esc(label)}</th>" for label, _ in cols)
    rows = "".join(f"<tr><td>{h['step']}</td>" + "".join(f"<td data-key='{key}'>{num(h.get(key))}</td>"
                                                          for _, key in cols) + "</tr>" for h in history)
    return ("<h2 id=components>The reward and its components over the steps</h2><p>From log.jsonl: the mean of "
            "each step's sampled completions; reward_std the mean within-group std of the reward (the signal GRPO "
            "learns from), frac_reward_zero_std the share of groups with equal rewards, kl the mean per-token KL "
            "to the reference, completion_length the mean length in tokens, truncated the share cut off.</p><table class=steps><tr><th>step</th>"
            f"{head}</tr>{rows}</table>")


def audit_section(data):
    from task import parse_weights
    from verify import audit, audit_cases
    task = data["config"].get("task", "larger")
    cases = [c for c in audit_cases() if c[0].task == task]
    if not cases:
        return (f"<h2 id=audit>The verifier's audit</h2><p>task {esc(task)} has no hand-written audit cases "
                "(python verify.py --audit lists every built-in task's)</p>")
    try:
        weights = parse_weights(data["config"].get("reward_weights", "correct:1,format:1"))
        weights = weights if "judge" not in weights else None     # a judge needs a model
    except ValueError:
        weights = None
    lines = []
    false_pos, false_neg = audit(cases, weights=weights, print_fn=lines.append)
    verdict = "agrees with every expected value" if (false_pos, false_neg) == (0, 0) else \
        f"disagrees: {false_pos} false positives, {false_neg} false negatives"
    return (f"<h2 id=audit>The verifier's audit</h2><p>Hand-written hard replies to task {esc(task)}'s prompts (a "
            f"false claim ending on the right number, a hedge, words for digits) graded by each reward component "
            f"against what a fair grader says (verify.audit): the verifier <b>{verdict}</b>.</p>"
            f"<pre class=audit>{esc(chr(10).join(lines).strip())}</pre>")


def settings_section(data):
    cfg = flat(data["config"])
    if not cfg:
        return "<h2 id=settings>Settings</h2><p>none (the run has no checkpoint)</p>"
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(json.dumps(v))}</td></tr>" for k, v in cfg.items())
    return (f"<h2 id=settings>Settings</h2><p>Every option of the run (python train.py --help says what each "
            f"means).</p><table>{rows}</table>")


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}h3{font-size:1em}
.big{font-size:1.6em;margin:.3em 0}table{border-collapse:collapse;font-size:.9em}
td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:top}
pre{margin:0;white-space:pre-wrap;font-size:.9em}.right{background:#e6f5e6}.wrong{background:#fbe4e4}
.steps td{text-align:right}.audit{font-size:.8em;background:#f6f6f6;padding:.5em}img{max-width:100%}
.tokens{font-family:monospace;white-space:pre-wrap}.t{margin-right:1px}div.tg p{font-family:inherit;white-space:normal}"""


def render(run, data):
    sections = [headline(run, data), eval_section(data), figure_section(data), examples_section(data),
                groups_section(data), components_section(data), audit_section(data), settings_section(data)]
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>tinygrpo: " + esc(str(run)) + "</title>"
            f"<style>{STYLE}</style></head><body>" + "\n".join(sections) + "</body></html>\n")


def replace_text(path, text):
    """The file's text replaced in one rename: a reader sees the old file or the new one."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(run, evals=None):
    """runs/<name>/report.html; with evals ({"before", "after": eval.evaluate's results, "n_eval"}) also
    eval.json first, which a later `python report.py` reads. A "before" of None (a resumed run does not evaluate
    the base model again) keeps the one eval.json has."""
    run = Path(run)
    if evals is not None:
        if evals.get("before") is None:             # --resume: the base model's, if the first part wrote it
            evals = evals | {"before": read_evals(run).get("before")}
        replace_text(run / "eval.json", json.dumps({"grader": GRADER} | evals, indent=1, default=str))
    path = run / "report.html"
    replace_text(path, render(run, read_run(run)))
    return path


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python report.py runs/default")
    try:
        path = write_report(argv[0])
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} KB)")
    return path


if __name__ == "__main__":
    main()
