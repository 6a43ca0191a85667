"""What GRPO does to one group: which completions won, which tokens it pushes up or down, and how far the policy
has moved from the reference on each token; and the run's picture.

    step_record(step, prompts, batch, G)       one step's prompts and completions: a line of completions.jsonl
    group_table(record)                         one group of a step as a small console table (train.py prints it)
    token_contributions(logprobs, batch, cfg)   each token's share of the loss, via the advantage and via the KL
    group_view -> group_html, group_ansi        one group's tokens shaded by those shares (notebook, terminal)
    run_figure(history, evals)                  reward, KL, length, zero-variance share over the steps

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

from grpo import kl_per_token, logprobs_by_part, loss_weights, ppo_clip_loss

# ----------------------------------------------------------------------------- completions.jsonl and the console


def step_record(step, prompts, batch, group_size):
    """One line of completions.jsonl: {"step", "prompts": [{"question", "answer", "completions": [{"text", "reward",
    "parts": {component: value}, "advantage", "length" (tokens, EOS included), "truncated" (no EOS before
    max_new_tokens)} x G]} x B]}. prompts: the B task.Prompts of a grpo.Rollout of N = B*G rows."""
    rewards, advantages = batch.rewards.tolist(), batch.advantages.tolist()
    lengths = batch.completion_mask.sum(1).tolist()
    truncated = batch.truncated.tolist() if batch.truncated is not None else [None] * len(lengths)
    parts = {name: values.tolist() for name, values in batch.reward_parts.items()}
    rows = [{"text": text, "reward": rewards[i], "parts": {name: v[i] for name, v in parts.items()},
             "advantage": advantages[i], "length": lengths[i], "truncated": truncated[i]}
            for i, text in enumerate(batch.texts)]
    return {"step": step, "prompts": [{"question": p.question, "answer": p.answer,
                                       "completions": rows[b * group_size:(b + 1) * group_size]}
                                      for b, p in enumerate(prompts)]}


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

    w = grpo.loss_weights(loss_mask, loss_agg, max_new_tokens): the token's weight in the aggregated loss, 0 on
    tokens out of the loss (padding, dropped groups). Summed over the batch, the two give grpo_loss's value.
    A negative share via the advantage: GRPO pushes the token's probability up (the loss falls as it rises).
    logprobs (N, T): log pi(o_it) under the policy (grpo.logprobs_by_part, no gradient needed); batch: the
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


def shade(share, big):
    """0..SHADES: a share's strength against the group's largest."""
    return min(SHADES, round(SHADES * abs(share) / big))


def group_html(view, numbers=False):
    """The group as HTML (the notebook): one row per completion, its reward and advantage first; each token on
    green where GRPO pushes it up (share via the advantage < 0), red where down, in SHADES steps of strength; a blue
    underline as strong as its share via the KL term; numbers=True puts both shares in each token's tooltip. Short
    class names scoped under .tg, and no span for an unshaded token: a group is a few KB in the notebook."""
    big_a, big_k = largest(view, "by_advantage"), largest(view, "by_kl")

    def span(t):
        a, k = shade(t.by_advantage, big_a), shade(t.by_kl, big_k)
        classes = " ".join(([f"{'u' if t.by_advantage < 0 else 'd'}{a}"] if a else []) + ([f"k{k}"] if k else [])
                           + (["s"] if t.special else []))
        tip = f"token {t.id} {t.text!r}: via the advantage {t.by_advantage + 0:+.3e}, via KL {t.by_kl:+.3e}"
        text = html.escape(shown(t))
        if not classes and not numbers:
            return text
        return f'<span class="{classes}"' + (f' title="{html.escape(tip)}"' if numbers else "") + f">{text}</span>"

    style = "".join(f".tg .u{i}{{background:rgba(0,170,0,{i / SHADES:.2f})}}"
                    f".tg .d{i}{{background:rgba(220,0,0,{i / SHADES:.2f})}}"
                    f".tg .k{i}{{border-bottom:3px solid rgba(0,0,255,{i / SHADES:.2f})}}" for i in range(1, SHADES + 1))
    legend = (f"<div class=tg><style>{style}.tg .s{{color:#777;font-style:italic}}.tg p{{font-family:monospace;"
              "white-space:pre-wrap;margin:2px 0}</style>each token's share of the loss: <span class=u3>pushed up</span> "
              "<span class=d3>pushed down</span> (via the advantage), <span class=k3>KL term</span>")
    rows = [f"<p>#{row['sample']} reward {row['reward']:.2f} A {row['advantage']:+.2f} | "
            + "".join(span(t) for t in row["tokens"]) + "</p>" for row in view]
    return "\n".join([legend, *rows, "</div>"])


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
    logprobs = logprobs_by_part(policy, batch, cfg.group_size, cfg.prompts_per_pass)
    by_advantage, by_kl = token_contributions(logprobs, batch, cfg)
    if group is None:
        group = pick_group(batch.rewards.view(-1, cfg.group_size).tolist())
    view = group_view(tok, batch, by_advantage, by_kl, group, cfg.group_size)
    return group_html(view, numbers) if as_html else group_ansi(view)


# ----------------------------------------------------------------------------- the run's picture


def moving_average(values, k):
    """The mean of each value and the k - 1 before it (fewer at the start)."""
    return [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]


def run_figure(history, evals):
    """The run in one figure of 4 panels over the steps: the reward (its total and each component, and the
    held-out greedy accuracy before/after as points); KL to the reference; the completion length (and the share
    truncated); the share of zero-variance groups. history: log.jsonl's records; evals: {name: (step, acc)}."""
    from matplotlib.figure import Figure          # no pyplot: nothing global, nothing to close
    from matplotlib.ticker import MaxNLocator
    steps = [h["step"] for h in history]
    series = lambda key: [h.get(key, float("nan")) for h in history]    # a run resumed from an older log lacks some
    fig = Figure(figsize=(7, 9))
    reward_ax, kl_ax, len_ax, zero_ax = fig.subplots(4, 1, sharex=True)
    k = max(1, len(steps) // 10)
    reward_ax.plot(steps, series("reward"), color="C0", alpha=0.35 if k > 1 else 1, label="reward (sampled)")
    if k > 1:
        reward_ax.plot(steps, moving_average(series("reward"), k), color="C0", label=f"its moving average ({k} steps)")
    for i, key in enumerate(sorted({key for h in history for key in h if key.startswith("reward/")})):
        reward_ax.plot(steps, series(key), color=f"C{i + 1}", lw=1, alpha=0.8, label=key.removeprefix("reward/"))
    for marker, (name, (step, acc)) in zip("os", evals.items()):
        reward_ax.scatter([step], [acc], marker=marker, color="k", zorder=3,
                          label=f"held-out greedy accuracy, {name}: {acc:.0%}")
    reward_ax.set_ylabel("reward / accuracy")
    reward_ax.legend(loc="best", fontsize=7)
    kl_ax.plot(steps, series("kl"), color="C4")
    kl_ax.set_ylabel("KL(pi || pi_ref)")
    len_ax.plot(steps, series("completion_len"), color="C5")
    len_ax.set_ylabel("length (tokens)")
    truncated_ax = len_ax.twinx()
    truncated_ax.plot(steps, series("truncated"), color="C3", ls="--")
    truncated_ax.set_ylabel("truncated (--)", color="C3")
    truncated_ax.set_ylim(-0.02, 1.02)
    zero_ax.plot(steps, series("frac_reward_zero_std"), color="C7")
    zero_ax.set_ylabel("zero-variance groups")
    zero_ax.set_ylim(-0.02, 1.02)
    zero_ax.set_xlabel("step")
    zero_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig


def save_run_figure(history, evals, path):
    run_figure(history, evals).savefig(path, dpi=110)


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
    records = [json.loads(line) for line in path.read_text().splitlines()]
    chosen = [r for r in records if len(argv) < 2 or r["step"] == int(argv[1])]
    if not chosen:
        sys.exit(f"error: {path} has no step {argv[1]} (it has {records[0]['step']} to {records[-1]['step']})"
                 if records else f"error: {path} is empty")
    print(group_table(chosen[-1]))


if __name__ == "__main__":
    main(sys.argv[1:])
