"""What GRPO does to one group: which completions won, which tokens it pushes up or down, and how far the policy
has moved from the reference on each token; and the run's picture.

    step_record(step, prompts, batch, G, stop, tok, cfg, kl)   a step's completions, each token's share and KL:
                                                a line of completions.jsonl
    group_table(record)                         one group of a step as a small console table (train.py prints it)
    token_contributions(logprobs, batch, cfg)   each token's share of the loss, via the advantage and via the KL
    group_view -> group_html, group_ansi        one group's tokens shaded by those shares (notebook, terminal)
    run_figure(history, evals, beta)            reward, loss, KL, length, truncated, zero-variance share

    python show.py runs/default [step]          the group table of a step of a run (default: its last)
    python show.py runs/default --html          the run's report.html (report.py)

Everything here is a pure function of its arguments except shade_group (a forward pass of the policy),
save_run_figure and main (files).
"""
import codecs
import html
import json
import sys
from pathlib import Path
from typing import NamedTuple

import torch

from grpo import aggregate_loss, kl_per_token, logprobs_by_chunk, ppo_clip_loss, zero_std_groups
from engine import stop_tensor

# ----------------------------------------------------------------------------- completions.jsonl and the console


def step_record(step, prompts, batch, group_size, stop_ids, tok=None, cfg=None, kl=None):
    """One line of completions.jsonl: {"step", "prompts": [{"question", "answer", "completions": [{"text", "reward",
    "parts": {component: value}, "advantage", "length" (tokens, EOS included), "truncated" (no EOS before
    max_new_tokens)} x G]} x B]}. prompts: the B task.Prompts of a grpo.Rollout of N = B*G rows.

    With tok and cfg (the run's GRPOConfig), each completion also gets one entry per token, each number to 3
    significant digits (report.html shades the tokens by them): "tokens" their texts (token_texts), "share" each
    one's share of the loss via the advantage (token_contributions; negative: GRPO pushes the token up) and, when
    kl (N, T) is given (optimize's: beta > 0), "kl" each one's KL to the reference (None out of the loss)."""
    rewards, advantages = batch.rewards.tolist(), batch.advantages.tolist()
    lengths = batch.completion_mask.sum(1).tolist()
    truncated = truncated_rows(batch.completion_ids, batch.completion_mask, stop_ids).tolist()
    components = {name: values.tolist() for name, values in batch.reward_components.items()}
    rows = [{"text": text, "reward": rewards[i], "parts": {name: v[i] for name, v in components.items()},
             "advantage": advantages[i], "length": lengths[i], "truncated": truncated[i]}
            for i, text in enumerate(batch.texts)]
    if tok is not None and cfg is not None:
        # sampled from pi = pi_old: the ratio is 1, so the share via the advantage, -A_i w_it, needs no
        # log-probs of the policy (any stand-in is its own pi_old); the KL term's share needs them: not used
        stand_in = batch.old_logprobs if batch.old_logprobs is not None else \
            torch.zeros(batch.completion_mask.shape, device=batch.completion_mask.device)
        by_advantage, _ = token_contributions(stand_in, batch, cfg)
        in_loss = batch.loss_mask.any(1).tolist()
        for i, row in enumerate(rows):
            n = lengths[i]
            row["tokens"] = token_texts(tok, batch.completion_ids[i, :n].tolist())
            row["share"] = rounded(by_advantage[i, :n])
            if kl is not None:      # None for a group out of the loss (dropped): its KL is not computed
                row["kl"] = rounded(kl[i, :n]) if in_loss[i] else None
    return {"step": step, "prompts": [{"question": p.question, "answer": p.answer,
                                       "completions": rows[b * group_size:(b + 1) * group_size]}
                                      for b, p in enumerate(prompts)]}


def rounded(values):
    """A (T,) tensor as a list of floats to 3 significant digits (no -0.0): completions.jsonl stays small."""
    return [float(f"{x:.3g}") + 0.0 for x in values.tolist()]


def pick_group(rewards_by_group):
    """The group to show: the first whose rewards differ (GRPO learns from it), else the first."""
    return next((b for b, r in enumerate(rewards_by_group) if max(r) != min(r)), 0)


def clip(text, width, keep_end=False):
    """text on one line of at most width characters; keep_end keeps its end (where an answer usually is)."""
    text = text.replace("\n", "\\n")
    if len(text) <= width:
        return text
    return "..." + text[-(width - 3):] if keep_end else text[:width - 3] + "..."


def group_table(record, width=60):
    """One group of a completions.jsonl record (pick_group's) as a table: sample #, reward and its components,
    advantage, length in tokens, truncated, and the completion on one line."""
    groups = record["prompts"]
    b = pick_group([[c["reward"] for c in g["completions"]] for g in groups])
    group, names = groups[b], list(groups[b]["completions"][0]["parts"])
    rewards = {c["reward"] for c in group["completions"]}
    why = "the first whose rewards differ" if len(rewards) > 1 else "every group's rewards are equal"
    lines = [f"  group {b + 1}/{len(groups)} of step {record['step']} ({why}): {clip(group['question'], width)!r} "
             f"answer {group['answer']!r}",
             f"  {'#':>2} {'reward':>6} " + "".join(f"{n[:7]:>7} " for n in names)
             + f"{'adv':>6} {'len':>4} {'trunc':>5}  completion"]
    for j, c in enumerate(group["completions"]):
        lines.append(f"  {j:2d} {c['reward']:6.2f} " + "".join(f"{c['parts'][n]:7.2f} " for n in names)
                     + f"{c['advantage']:+6.2f} {c['length']:4d} {'yes' if c['truncated'] else 'no':>5}  "
                     + repr(clip(c["text"], width, keep_end=True)))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- each token's share of the loss


def token_contributions(logprobs, batch, cfg):
    """Each generated token's share of the GRPO loss (grpo.grpo_loss), in two (N, T) tensors:

        via the advantage   w_it * -min(ratio_it A_i, clip(ratio_it, 1-eps, 1+eps) A_i)   = -A_i w_it when mu = 1
        via the KL term     w_it * beta * KL_it          (0 when beta = 0, or with kl_mode=reward: KL is in A_i)

    w = loss_weights(loss_mask, loss_agg, max_new_tokens): the token's weight in the aggregated loss, 0 on
    tokens out of the loss (padding, dropped groups). Summed over the batch, the two give grpo_loss's value.
    A negative share via the advantage: GRPO pushes the token's probability up (the loss falls as it rises).
    logprobs (N, T): log pi(o_it) under the policy (grpo.logprobs_by_chunk, no gradient needed); batch: the
    whole grpo.Rollout (w depends on all of it: tokens and rows in the normaliser); cfg: its GRPOConfig.
    """
    w = loss_weights(batch.loss_mask, cfg.loss_agg, cfg.max_new_tokens)
    old = batch.old_logprobs if batch.old_logprobs is not None else logprobs      # pi_old = pi when mu = 1
    by_advantage, _ = ppo_clip_loss(logprobs, old, batch.advantages, cfg.clip_eps)
    by_kl = torch.zeros_like(logprobs)
    if cfg.beta > 0 and cfg.kl_mode == "loss":
        by_kl = cfg.beta * kl_per_token(logprobs, batch.ref_logprobs, cfg.kl_estimator)
    return by_advantage * w, by_kl * w


class Token(NamedTuple):
    text: str              # its characters ('' while it holds only the first bytes of one)
    id: int
    special: bool          # a special token (EOS '<|im_end|>') or a stop token (a plain model's newline)
    by_advantage: float    # its share of the loss via the advantage (token_contributions)
    by_kl: float           # its share via the KL term


def token_texts(tok, ids):
    """Each token's text, one token at a time. A byte-level BPE token may hold part of a UTF-8 character: its
    bytes wait for the token that completes it (the earlier ones get ''), so the texts join to the decoded
    completion; bytes that never make a character become U+FFFD. Special tokens give their name."""
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return [utf8.decode(tok.enc.decode_single_token_bytes(i), final=k == len(ids) - 1) for k, i in enumerate(ids)]


def group_view(tok, batch, by_advantage, by_kl, group, group_size):
    """One group's completions for the renderers: G dicts {"sample", "reward", "advantage", "tokens": [Token]},
    the tokens those in the completion mask (EOS included). by_advantage, by_kl (N, T): token_contributions."""
    marked = set(tok.enc._special_tokens.values()) | set(tok.stop_ids)
    view = []
    for i in range(group * group_size, (group + 1) * group_size):
        n = int(batch.completion_mask[i].sum())                       # the mask is 1 up to and including EOS
        ids = batch.completion_ids[i, :n].tolist()
        tokens = [Token(text, t, t in marked, a, k) for text, t, a, k in
                  zip(token_texts(tok, ids), ids, by_advantage[i, :n].tolist(), by_kl[i, :n].tolist())]
        view.append({"sample": i - group * group_size, "reward": batch.rewards[i].item(),
                     "advantage": batch.advantages[i].item(), "tokens": tokens})
    return view


def shown(token):
    """A token's text as printed: a newline as ↵, a byte that waits for the rest of its character as ·."""
    return token.text.replace("\n", "↵") or "·"


def largest(view, key):
    """The largest |share| in the view (1 when all are 0): shading is relative to the group's strongest."""
    return max((abs(getattr(t, key)) for row in view for t in row["tokens"]), default=0.0) or 1.0


SHADES = 4     # the HTML's levels of shading: CSS classes, so that a group is a few KB in the notebook
UP, DOWN, KL = (0, 170, 0), (220, 0, 0), (0, 0, 255)      # pushed up, pushed down, the KL term's underline


def shade(share, big):
    """0..SHADES: a share's strength against big, the largest share on its scale (0 when big is 0)."""
    return min(SHADES, round(SHADES * abs(share) / big)) if big > 0 else 0


def tint(rgb, level):
    """The colour rgb at strength level/SHADES (at most 80%, so that black text stays readable) over white."""
    alpha = 0.8 * level / SHADES
    return "#" + "".join(f"{round(255 - alpha * (255 - c)):02x}" for c in rgb)


GROUP_CSS = ("<style>" + "".join(f".tg .u{i}{{background:{tint(UP, i)}}}.tg .d{i}{{background:{tint(DOWN, i)}}}"
                                 f".tg .k{i}{{border-bottom:3px solid {tint(KL, i)}}}" for i in range(1, SHADES + 1))
             + ".tg p{font-family:monospace;white-space:pre-wrap;margin:2px 0}</style>")


def group_html(view, numbers=False, css=True):
    """The group as HTML (the notebook): one row per completion, its reward and advantage first; each token on
    green where GRPO pushes it up (share via the advantage < 0), red where down. Each row is shaded on its own
    scale (its strongest token at full strength), so a losing row that spreads a small -A_i over many tokens is as
    visible as the winner; the row's A_i says how hard it is pushed. A blue underline as strong as the token's share
    via the KL term, on the group's scale (KL is compared across rows). Special tokens (EOS) in italics (<i>).
    numbers=True puts both shares in each token's tooltip (one span per token); otherwise neighbouring tokens
    shaded alike share a span. css=False leaves out the <style> block: its classes (scoped under .tg) apply to
    the whole page, so a notebook needs it once."""
    big_a = largest(view, "by_advantage")
    big_k = max((abs(t.by_kl) for row in view for t in row["tokens"]), default=0.0)

    def classes(t, row_big):
        a, k = shade(t.by_advantage, row_big), shade(t.by_kl, big_k)
        return " ".join(([f"{'u' if t.by_advantage < 0 else 'd'}{a}"] if a else []) + ([f"k{k}"] if k else []))

    def text(t):
        escaped = html.escape(shown(t), quote=False)
        return f"<i>{escaped}</i>" if t.special else escaped

    def span(c, body, tip):
        attrs = (f' class="{c}"' if " " in c else f" class={c}" if c else "") + (f' title="{tip}"' if numbers else "")
        return f"<span{attrs}>{body}</span>" if attrs else body

    def line(row):
        # a row's scale: its largest share, unless that is float noise next to the group's largest
        row_big = max((abs(t.by_advantage) for t in row["tokens"]), default=0.0)
        row_big = row_big if row_big > 1e-4 * big_a else 0.0
        runs = []                                     # [classes, html, tooltip]: one span each
        for t in row["tokens"]:
            c = classes(t, row_big)
            tip = f"token {t.id} {t.text!r}: via the advantage {t.by_advantage + 0:+.3e}, via KL {t.by_kl:+.3e}"
            if runs and not numbers and runs[-1][0] == c:
                runs[-1][1] += text(t)
            else:
                runs.append([c, text(t), html.escape(tip)])
        return (f"<p>#{row['sample']} reward {row['reward']:.2f} A {row['advantage']:+.2f} | "
                + "".join(span(*run) for run in runs) + "</p>")

    legend = ("<div class=tg>" + (GROUP_CSS if css else "") + "each token's share of the loss via the advantage, "
              f"each row on its own scale: <span class=u{SHADES}>pushed up</span> <span class=d{SHADES}>pushed down"
              f"</span>; via the KL term, on the group's scale: <span class=k{SHADES}>underline</span>")
    return "\n".join([legend, *map(line, view), "</div>"])


def group_ansi(view):
    """The group as terminal text: each token on a 24-bit background, green where GRPO pushes it up, red where
    down, the stronger the larger its share via the advantage; underlined where its share via the KL term is at
    least half the group's largest."""
    big_a, big_k = largest(view, "by_advantage"), largest(view, "by_kl")

    def coloured(t):
        s = abs(t.by_advantage) / big_a
        r, g, b = (0, 170, 0) if t.by_advantage < 0 else (220, 0, 0)
        blend = [round(255 - s * (255 - c)) for c in (r, g, b)]                       # white -> the colour
        underline = "\x1b[4m" if abs(t.by_kl) >= big_k / 2 and t.by_kl != 0 else ""
        return f"\x1b[48;2;{blend[0]};{blend[1]};{blend[2]}m\x1b[38;2;0;0;0m{underline}{shown(t)}\x1b[0m"

    legend = "green: pushed up, red: pushed down (share of the loss via the advantage); underlined: large KL term"
    return "\n".join([legend] + [f"#{row['sample']} reward {row['reward']:.2f} A {row['advantage']:+.2f} | "
                                 + "".join(coloured(t) for t in row["tokens"]) for row in view])


@torch.no_grad()
def shade_group(policy, tok, batch, cfg, group=None, as_html=True, numbers=False):
    """One group of a rollout (pick_group's when None) shaded by its tokens' shares of the loss under the
    policy's current log-probs: group_html for a notebook (IPython.display.HTML), group_ansi for a terminal."""
    logprobs = logprobs_by_chunk(policy, batch, cfg.group_size, cfg.prompts_per_pass, cfg.temperature)
    by_advantage, by_kl = token_contributions(logprobs, batch, cfg)
    if group is None:
        group = pick_group(batch.rewards.view(-1, cfg.group_size).tolist())
    view = group_view(tok, batch, by_advantage, by_kl, group, cfg.group_size)
    return group_html(view, numbers) if as_html else group_ansi(view)


# ----------------------------------------------------------------------------- the run's picture


def moving_average(values, k):
    """The mean of each value and the k - 1 before it (fewer at the start)."""
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def run_figure(history, evals, beta=None):
    """The run in one wide figure, 2 x 3 panels over the steps: the reward (its total and each component, and the
    held-out greedy accuracy before/after as points when evals has them); the loss's value (and beta * KL beside it
    when beta is given: with one gradient step per batch a group's advantages sum to 0, so the loss's value is
    about beta * KL); the KL to the reference; the completion length; the share truncated; the share of
    zero-variance groups. Each axis is labelled with what it plots. history: log.jsonl's records; evals:
    {name: (step, accuracy)}."""
    from matplotlib.figure import Figure          # no pyplot: nothing global, nothing to close
    from matplotlib.ticker import MaxNLocator
    steps = [h["step"] for h in history]
    series = lambda key: [h.get(key, float("nan")) for h in history]    # a run resumed from an older log lacks some
    fig = Figure(figsize=(13, 6))
    (reward_ax, loss_ax, kl_ax), (len_ax, truncated_ax, zero_ax) = fig.subplots(2, 3, sharex=True)
    k = max(1, len(steps) // 10)
    reward_ax.plot(steps, series("reward"), color="C0", alpha=0.35 if k > 1 else 1, label="reward (sampled)")
    if k > 1:
        reward_ax.plot(steps, moving_average(series("reward"), k), color="C0", label=f"its moving average ({k} steps)")
    for i, key in enumerate(sorted({key for h in history for key in h if key.startswith("reward/")})):
        reward_ax.plot(steps, series(key), color=f"C{i + 1}", lw=1, alpha=0.8, label=key.removeprefix("reward/"))
    for marker, (name, (step, acc)) in zip("os", evals.items()):
        reward_ax.scatter([step], [acc], marker=marker, color="k", zorder=3,
                          label=f"held-out greedy accuracy, {name}: {acc:.0%}")
    reward_ax.set_ylabel("reward / held-out accuracy" if evals else "reward")
    reward_ax.legend(loc="best", fontsize=7)
    loss_ax.plot(steps, series("loss"), color="C6", label="loss")
    if beta is not None:
        loss_ax.plot(steps, [beta * x for x in series("kl")], color="C4", ls="--", label=f"beta * KL (beta = {beta:g})")
        loss_ax.legend(loc="best", fontsize=7)
    loss_ax.set_ylabel("loss")
    kl_ax.plot(steps, series("kl"), color="C4")
    kl_ax.set_ylabel("KL(pi || pi_ref) per token")
    # the length's key: completion_length, or completion_len in older logs
    length = "completion_length" if any("completion_length" in h for h in history) else "completion_len"
    len_ax.plot(steps, series(length), color="C5")
    len_ax.set_ylabel("length (tokens)")
    truncated_ax.plot(steps, series("truncated"), color="C3")
    truncated_ax.set_ylabel("truncated (share)")
    zero_ax.plot(steps, series("frac_reward_zero_std"), color="C7")
    zero_ax.set_ylabel("zero-variance groups (share)")
    for ax in (truncated_ax, zero_ax):
        ax.set_ylim(-0.02, 1.02)
    for ax in (len_ax, truncated_ax, zero_ax):
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def save_run_figure(history, evals, path, beta=None):
    run_figure(history, evals, beta).savefig(path, dpi=110)


def read_records(path):
    """The records of a JSONL file written as a run went: a line that a kill cut short, and anything after it,
    is not read (as --resume reads it: checkpoint.cut_after)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            break
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            break
        records.append(record)
    return records


def main(argv):
    """python show.py RUN_FOLDER [STEP]: the group table of that step (default: the last) of completions.jsonl."""
    if "--html" in argv:                        # the run's report.html (report.py)
        import report
        return report.main([a for a in argv if a != "--html"])
    if not argv or len(argv) > 2:
        sys.exit("usage: python show.py runs/default [step]  |  python show.py runs/default --html")
    path = Path(argv[0]) / "completions.jsonl"
    if not path.is_file():
        sys.exit(f"error: {path} not found (a run of this tinygrpo writes it beside log.jsonl)")
    if len(argv) == 2 and not argv[1].isdigit():
        sys.exit(f"error: step {argv[1]!r} is not a number; usage: python show.py {argv[0]} [step]")
    records = read_records(path)
    chosen = [r for r in records if len(argv) < 2 or r["step"] == int(argv[1])]
    if not chosen:
        sys.exit(f"error: {path} has no step {argv[1]} (it has {records[0]['step']} to {records[-1]['step']})"
                 if records else f"error: {path} holds no complete step")
    print(group_table(chosen[-1]))



# ----------------------------------------------------------------------------- what a step logs


def loss_weights(mask, mode="seq_mean", max_tokens=None):
    """Each token's weight w (N, T) in the aggregated loss: aggregate_loss(L, mask, ...) = sum_it w_it * L_it.

    aggregate_loss is linear in L, so w is its gradient (computed from it: the modes are defined once, in grpo.py):
    seq_mean 1 / (|o_i| * sequences), token_mean 1 / tokens, seq_sum 1 / sequences, constant
    1 / (sequences * max_tokens), with sequences = those with a token in the mask; 0 outside the mask.
    """
    zeros = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return torch.func.grad(aggregate_loss)(zeros, mask, mode, max_tokens)


def truncated_rows(completion_ids, completion_mask, stop_ids):
    """(N,) bool: True on each completion that has no stop token (EOS) in its mask, i.e. was cut off at
    max_new_tokens (TRL's clipped_ratio counts these). completion_ids, completion_mask (N, T)."""
    stops = torch.isin(completion_ids, stop_tensor(stop_ids, completion_ids.device)) & completion_mask.bool()
    return ~stops.any(1)


@torch.no_grad()
def step_metrics(batch, kl, clipped, group_size, stop_ids):
    """A step's scalars, keyed as log.jsonl and the printed log name them (train.py's docstring explains each).
    batch: the step's grpo.Rollout; kl (N, T) or None; clipped (N, T) or None (grpo_step: no clipping at mu = 1)."""
    cm = batch.completion_mask.float()
    mask = batch.loss_mask.bool()
    return {
        "reward": batch.rewards.mean().item(),
        "reward_std": batch.rewards.view(-1, group_size).std(dim=1).mean().item(),
        "frac_reward_zero_std": zero_std_groups(batch.rewards, group_size).float().mean().item(),
        "kl": ((kl * mask).sum() / mask.sum().clamp(min=1)).item() if kl is not None else 0.0,
        "clip_ratio": ((clipped & mask).sum() / mask.sum().clamp(min=1)).item() if clipped is not None else 0.0,
        "completion_length": cm.sum(1).mean().item(),
    } | {f"reward/{name}": values.float().mean().item() for name, values in batch.reward_components.items()} | {
        "truncated": truncated_rows(batch.completion_ids, batch.completion_mask, stop_ids).float().mean().item()} | (
        {"reward_drawn": batch.drawn.rewards.mean().item()} if batch.drawn is not None else {})   # --oversample


# log.jsonl keys of older versions, and today's: a run resumed from an older checkpoint logs today's
RENAMED = {"clip_frac": "clip_ratio", "completion_len": "completion_length"}


def renamed(history):
    """history (log.jsonl's records, or a checkpoint's) with today's keys."""
    return [{RENAMED.get(k, k): v for k, v in h.items()} for h in history]


def format_log(step, steps, m):
    """train.py's line for a step: each logged number as `key value`, keyed as in log.jsonl (the legend is
    train.py's docstring)."""
    components = "".join(f" {k} {v:.2f}" for k, v in m.items() if k.startswith("reward/"))
    return (f"step {step:4d}/{steps} | reward {m['reward']:.3f}{components} reward_std "
            f"{m['reward_std']:.2f} frac_reward_zero_std {m['frac_reward_zero_std']:.2f}"
            + (f" reward_drawn {m['reward_drawn']:.3f}" if "reward_drawn" in m else "")
            + f" | loss {m['loss']:+.4f} kl {m['kl']:.4f} clip_ratio {m['clip_ratio']:.2f}"
            f" grad_norm {m['grad_norm']:.2f}"
            f" | completion_length {m['completion_length']:.1f} truncated {m['truncated']:.2f}"
            f" | tok_per_s {m['tok_per_s']:.0f} s_per_step {m['s_per_step']:.1f}"
            + (f" | eval_accuracy {m['eval_accuracy']:.2f}" if "eval_accuracy" in m else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
