"""show.py and what train.py shows with it: completions.jsonl (one record per step, exact after a resume), the
console's group table, the truncation and gradient-norm metrics, each token's share of the loss (summing to
grpo_loss), its HTML and terminal renderings, and the run's picture. Tiny models only: seconds."""
import copy
import dataclasses
import html
import json
import re

import pytest
import torch

import checkpoint
import grpo
import optim
import show
import train
from conftest import tiny_config, toy_reward
from load_weights import load_model
from test_grpo import EOS, FakeTok, frac_target, tiny
from test_train import random_model, toy_rollout, whole_batch_loss
from task import Prompt

COMPLETION_KEYS = {"text", "reward", "parts", "advantage", "length", "truncated", "tokens", "share", "kl"}


def records(out_dir):
    return [json.loads(line) for line in (out_dir / "completions.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- a run: completions.jsonl, console


def test_run_writes_a_record_per_step_and_shows_a_group(tiny_checkpoint, tmp_path, capsys):
    """Oracle: log.jsonl's means, computed again from the records; the weights of the reward (1 and 1)."""
    train.train(tiny_config(tiny_checkpoint, tmp_path, reward_weights="correct:1,format:1", eval_paraphrase=False))
    printed = capsys.readouterr().out
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    recs = records(tmp_path)
    assert [r["step"] for r in recs] == [1, 2, 3]
    for rec, log in zip(recs, logged):
        assert [len(p["completions"]) for p in rec["prompts"]] == [2, 2]             # B = 2 prompts, G = 2
        assert all(isinstance(p["question"], str) and "answer" in p for p in rec["prompts"])
        rows = [c for p in rec["prompts"] for c in p["completions"]]
        assert all(set(c) == COMPLETION_KEYS and set(c["parts"]) == {"correct", "format"} for c in rows)
        mean = lambda values: sum(values) / len(values)
        assert mean([c["reward"] for c in rows]) == pytest.approx(log["reward"], abs=1e-6)
        assert mean([c["length"] for c in rows]) == pytest.approx(log["completion_length"], abs=1e-6)
        assert mean([c["truncated"] for c in rows]) == pytest.approx(log["truncated"], abs=1e-6)
        for name in ("correct", "format"):
            assert mean([c["parts"][name] for c in rows]) == pytest.approx(log[f"reward/{name}"], abs=1e-6)
        for c in rows:
            assert c["reward"] == pytest.approx((c["parts"]["correct"] + c["parts"]["format"]) / 2)
            assert 1 <= c["length"] <= 4 and (not c["truncated"] or c["length"] == 4)   # max_new_tokens = 4
        for p in rec["prompts"]:
            assert sum(c["advantage"] for c in p["completions"]) == pytest.approx(0, abs=1e-5)
        # no reward anywhere (the random model never answers add1) and pi = pi_ref at step 1: nothing to learn
        assert log["grad_norm"] >= 0 and (log["grad_norm"] == 0) == (log["reward"] == 0 and log["kl"] == 0)
    # every step (log_every = 1): its log line with the new columns, then its group's table
    step_lines = [line for line in printed.splitlines() if line.startswith("step ")]
    assert len(step_lines) == 3
    for line, log in zip(step_lines, logged):           # every logged key printed, by its own name
        assert {k for k in log if k != "step"} == set(re.findall(r"(?:^| )([a-z_/]+) [-+0-9.]", line)) - {"step"}
    assert printed.count("  group ") == 3
    header = next(line for line in printed.splitlines() if line.startswith("   # reward"))
    assert header.split()[:4] == ["#", "reward", "correct", "format"] and "adv" in header and "trunc" in header
    last = recs[-1]["prompts"][show.pick_group([[c["reward"] for c in p["completions"]] for p in recs[-1]["prompts"]])]
    for c in last["completions"]:
        assert repr(show.clip(c["text"], 60, keep_end=True)) in printed
    # the held-out evaluations still print their progress, before and after
    assert printed.count("  greedy completions for 4 held-out prompts ...") == 2


def test_resume_keeps_completions_exact(tiny_checkpoint, tmp_path, monkeypatch):
    """Oracle: the file of a run never interrupted. The run stopped after step 2 had written a record of step 3
    (and a line cut short by a kill) without saving its checkpoint: the resumed run writes step 3 once."""
    monkeypatch.setattr(train, "make_reward", lambda *a: toy_reward)
    train.train(tiny_config(tiny_checkpoint, tmp_path / "whole", eval_before=False))
    split = tmp_path / "split"
    train.train(tiny_config(tiny_checkpoint, split, steps=2, eval_before=False))
    with open(split / "completions.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "prompts": []}) + "\n" + '{"step": 4, "pro')
    train.train(tiny_config(tiny_checkpoint, split, resume=True))
    assert [r["step"] for r in records(split)] == [1, 2, 3]
    assert (split / "completions.jsonl").read_text() == (tmp_path / "whole" / "completions.jsonl").read_text()
    rewards = [c["reward"] for r in records(split) for p in r["prompts"] for c in p["completions"]]
    assert 0 < sum(rewards) < len(rewards)               # toy_reward: the records are not all alike
    logged = [json.loads(line) for line in (split / "log.jsonl").read_text().splitlines()]
    assert all(h["grad_norm"] > 0 for h in logged if h["frac_reward_zero_std"] < 1)


def test_cut_after_keeps_earlier_steps_and_stops_at_a_broken_line(tmp_path):
    path = tmp_path / "c.jsonl"
    checkpoint.cut_after(path, 3)                        # no file (an older run): nothing happens
    assert not path.exists()
    lines = [json.dumps({"step": s, "x": "é"}) for s in (1, 2, 3)]
    path.write_text("\n".join(lines[:2]) + '\n{"step": 3, "x"\n' + lines[2] + "\n")
    checkpoint.cut_after(path, 5)
    assert path.read_text() == "\n".join(lines[:2]) + "\n"
    checkpoint.cut_after(path, 1)
    assert path.read_text() == lines[0] + "\n" and [p.name for p in tmp_path.iterdir()] == ["c.jsonl"]


def test_group_table_hand_record():
    """The first group whose rewards differ, its components' columns, and texts clipped keeping their end."""
    long = "I think " * 20 + "the answer is 57"
    rec = {"step": 7, "prompts": [
        {"question": "flat?", "answer": 1, "completions": [
            {"text": "a", "reward": 0.0, "parts": {"correct": 0.0}, "advantage": 0.0, "length": 2, "truncated": False}] * 2},
        {"question": "Which is larger, 57 or 12?", "answer": 57, "completions": [
            {"text": long, "reward": 1.0, "parts": {"correct": 1.0}, "advantage": 0.707, "length": 32, "truncated": True},
            {"text": "12\n", "reward": 0.0, "parts": {"correct": 0.0}, "advantage": -0.707, "length": 3,
             "truncated": False}]}]}
    lines = show.group_table(rec, width=30).splitlines()
    assert lines[0].startswith("  group 2/2 of step 7 (the first whose rewards differ)") and "answer 57" in lines[0]
    assert lines[1].split() == ["#", "reward", "correct", "adv", "len", "trunc", "completion"]
    assert lines[2].split() == ["0", "1.00", "1.00", "+0.71", "32", "yes", "'...nk", "I", "think", "the", "answer",
                                "is", "57'"] and len(show.clip(long, 30, keep_end=True)) == 30
    assert lines[3].split() == ["1", "0.00", "0.00", "-0.71", "3", "no", "'12\\\\n'"]
    flat = {"step": 1, "prompts": rec["prompts"][:1]}
    assert "group 1/1 of step 1 (every group's rewards are equal)" in show.group_table(flat)


def test_show_main_prints_a_step(tmp_path, capsys):
    rec = lambda step, text: {"step": step, "prompts": [{"question": "q", "answer": 1, "completions": [
        {"text": text, "reward": r, "parts": {}, "advantage": 0.0, "length": 1, "truncated": False} for r in (0, 1)]}]}
    (tmp_path / "completions.jsonl").write_text(json.dumps(rec(1, "first")) + "\n" + json.dumps(rec(2, "second")) + "\n")
    show.main([str(tmp_path)])
    assert "of step 2" in capsys.readouterr().out
    show.main([str(tmp_path), "1"])
    assert "'first'" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        show.main([str(tmp_path), "9"])
    assert "no step 9" in str(e.value.code) and "1 to 2" in str(e.value.code)


# ----------------------------------------------------------------------------- metrics: truncated, grad_norm


def test_truncated_rows_and_metric_hand_built():
    """Rows: EOS last at max_new_tokens (not truncated), no stop token (truncated), EOS early then padding that
    equals EOS (pad_id = eos_id, as SmolLM2's: outside the mask, not counted), a second stop id (a newline)."""
    ids = torch.tensor([[5, 6, 1], [5, 6, 7], [1, 1, 1], [8, 9, 9], [9, 3, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    assert show.truncated_rows(ids, mask, (1,)).tolist() == [False, True, False, True, True]
    assert show.truncated_rows(ids, mask, (1, 3)).tolist() == [False, True, False, True, False]
    assert show.truncated_rows(ids, mask, 1).tolist() == [False, True, False, True, True]
    z = torch.zeros(4)
    batch = grpo.Rollout(prompt_ids=torch.tensor([[3], [4]]), prompt_mask=torch.ones(2, 1), completion_ids=ids[:4],
                         completion_mask=mask[:4], rewards=z, texts=[""] * 4, advantages=z, loss_mask=mask[:4])
    assert show.step_metrics(batch, None, torch.zeros(4, 3, dtype=torch.bool), 2, (1,))["truncated"] == 0.5
    metrics = show.step_metrics(batch, None, None, 2, (1,))        # grpo_step: no KL at beta = 0, no clipping
    assert (metrics["truncated"], metrics["kl"], metrics["clip_ratio"]) == (0.5, 0.0, 0.0)


def test_rollout_marks_the_rows_cut_off():
    """Oracle: a row is cut off iff its mask runs to max_new_tokens and its last token is not EOS."""
    cfg = grpo.GRPOConfig(group_size=8, max_new_tokens=3, beta=0.0)
    batch = grpo.rollout(tiny(), FakeTok(), [Prompt("ab", 0), Prompt("xyz", 1)], frac_target, cfg, seeds=[3, 4])
    lengths = batch.completion_mask.sum(1)
    want = [int(n) == 3 and int(ids[2]) != EOS for n, ids in zip(lengths, batch.completion_ids)]
    got = show.truncated_rows(batch.completion_ids, batch.completion_mask, FakeTok.stop_ids)
    assert got.tolist() == want and 0 < sum(want) < len(want)


@pytest.mark.parametrize("clip", [1.0, None])
def test_grad_norm_is_clip_grad_norm(clip):
    """Oracle: torch.nn.utils.clip_grad_norm_'s total norm of the same batch's gradients, by one backward."""
    batch, gcfg = toy_rollout("seq_mean", False)
    ours, theirs = random_model(), random_model()
    *_, norm = train.optimize(ours, optim.MasterAdamW(ours.parameters(), lr=1e-4), batch,
                              train.TrainConfig(grad_clip=clip, grpo=dataclasses.replace(gcfg, prompts_per_pass=1)))
    whole_batch_loss(theirs, batch, gcfg)[0].backward()
    want = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0).item()
    assert isinstance(norm, float) and norm == pytest.approx(want, rel=1e-5) and want > 1e-3


# ----------------------------------------------------------------------------- each token's share of the loss


@pytest.mark.parametrize("beta", [0.0, 0.1])
@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("agg", ["seq_mean", "token_mean", "seq_sum", "constant"])
def test_token_contributions_sum_to_the_loss(agg, drop, beta):
    """Oracle: grpo_loss's value; at mu = 1, -A_i w_t and beta KL_t w_t with w by hand; 0 off the loss mask."""
    batch, cfg = toy_rollout(agg, drop)
    cfg = dataclasses.replace(cfg, beta=beta)
    model = random_model()
    with torch.no_grad():
        logprobs = grpo.logprobs_by_chunk(model, batch, 2, 8)
    by_advantage, by_kl = show.token_contributions(logprobs, batch, cfg)
    loss = whole_batch_loss(model, batch, cfg)[0].item()
    assert (by_advantage.sum() + by_kl.sum()).item() == pytest.approx(loss, rel=1e-5, abs=1e-7)
    m = batch.loss_mask.float()
    rows = (m.sum(1) > 0).sum()
    w = {"seq_mean": m / m.sum(1, keepdim=True).clamp(min=1) / rows, "token_mean": m / m.sum(),
         "seq_sum": m / rows, "constant": m / (rows * 4)}[agg]               # max_new_tokens = 4
    assert torch.allclose(by_advantage, -batch.advantages[:, None] * w, atol=1e-7)
    kl = (batch.ref_logprobs - logprobs).exp() - 1 - (batch.ref_logprobs - logprobs)     # k3
    assert torch.allclose(by_kl, beta * kl * w, atol=1e-7)
    assert (by_kl.abs().sum() > 0) == (beta > 0)
    if drop:
        assert by_advantage[2:4].abs().sum() == 0 and by_kl[2:4].abs().sum() == 0     # the flat group
    assert (by_advantage * (1 - m)).abs().sum() == 0


@pytest.mark.parametrize("kl_mode", ["loss", "reward"])
def test_token_contributions_with_old_logprobs_and_kl_in_the_reward(kl_mode):
    """mu > 1: ratios away from 1, some clipped; kl_mode=reward: no KL term in the loss. Oracle: grpo_loss."""
    batch, cfg = toy_rollout("token_mean", False)
    cfg = dataclasses.replace(cfg, kl_mode=kl_mode)
    model = random_model()
    with torch.no_grad():
        logprobs = grpo.logprobs_by_chunk(model, batch, 2, 8)
    noise = 0.5 * torch.randn(logprobs.shape, generator=torch.Generator().manual_seed(0))
    batch = dataclasses.replace(batch, old_logprobs=(logprobs + noise) * batch.completion_mask)
    loss, _, clipped = whole_batch_loss(model, batch, cfg)
    assert clipped[batch.loss_mask.bool()].any()
    by_advantage, by_kl = show.token_contributions(logprobs, batch, cfg)
    assert (by_advantage.sum() + by_kl.sum()).item() == pytest.approx(loss.item(), rel=1e-5, abs=1e-7)
    assert (by_kl.abs().sum() == 0) == (kl_mode == "reward")


def test_loss_weights_hand_values():
    """Oracle: each mode's weights by hand; sum(L * w) = aggregate_loss(L)."""
    m = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    on = m.float()
    for mode, value, kw in [("seq_mean", None, {}), ("token_mean", 1 / 3, {}), ("seq_sum", 1 / 2, {}),
                            ("constant", 1 / 6, {}), ("constant", 1 / 20, {"max_tokens": 10})]:
        w = show.loss_weights(m, mode, **kw)
        want = torch.tensor([[1 / 4, 1 / 4, 0], [1 / 2, 0, 0], [0, 0, 0]]) if value is None else on * value
        assert torch.allclose(w, want), mode
        L = torch.randn(3, 3)
        assert (L * w).sum().item() == pytest.approx(grpo.aggregate_loss(L, m, mode, **kw).item(), rel=1e-6)


# ----------------------------------------------------------------------------- renderers


@pytest.fixture(scope="module")
def gpt2_tok(tiny_checkpoint):
    return load_model(str(tiny_checkpoint))[1]


def hand_group(tok):
    """One group of G = 2 by hand: markup characters, an emoji GPT-2 splits into byte tokens, then EOS."""
    texts = ["x < y & z", " 🦜 é"]
    ids = [tok.encode(t) + [tok.eos_id] for t in texts]
    T = max(map(len, ids))
    comp = torch.tensor([row + [tok.pad_id] * (T - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (T - len(row)) for row in ids])
    rewards, adv = torch.tensor([1.0, 0.0]), torch.tensor([0.7, -0.7])
    batch = grpo.Rollout(prompt_ids=comp[:1, :1], prompt_mask=torch.ones(1, 1), completion_ids=comp,
                         completion_mask=mask, rewards=rewards, texts=texts, advantages=adv, loss_mask=mask)
    by_advantage = -adv[:, None] * mask / mask.sum(1, keepdim=True) / 2
    by_kl = 0.01 * torch.arange(T).float()[None].expand(2, T) * mask
    return show.group_view(tok, batch, by_advantage, by_kl, 0, 2), texts


def test_token_texts_carry_partial_utf8(gpt2_tok):
    ids = gpt2_tok.encode(" 🦜 é")
    pieces = show.token_texts(gpt2_tok, ids)
    assert len(ids) > 3 and "" in pieces                             # the emoji spans several byte tokens
    assert "".join(pieces) == " 🦜 é" and "\ufffd" not in "".join(pieces)
    assert show.token_texts(gpt2_tok, ids[:2])[-1] == "\ufffd"    # a character that never completes
    assert show.token_texts(gpt2_tok, [gpt2_tok.eos_id]) == ["<|endoftext|>"]


def test_html_shows_every_token_escaped_with_rewards_and_numbers(gpt2_tok):
    view, texts = hand_group(gpt2_tok)
    out = show.group_html(view, numbers=True)
    for row in view:
        for t in row["tokens"]:
            shown = html.escape(show.shown(t), quote=False)
            assert (f"><i>{shown}</i></span>" if t.special else f">{shown}</span>") in out
            assert f"via the advantage {t.by_advantage + 0:+.3e}, via KL {t.by_kl:+.3e}" in out
    assert "title=" not in show.group_html(view)                                  # tooltips only when asked
    assert "&lt;" in out and "&amp;" in out and "x < y" not in out               # escaped, not markup
    assert "<i>&lt;|endoftext|&gt;</i>" in out and "color:" not in out            # EOS in italics, black text
    assert "#0 reward 1.00 A +0.70" in out and "#1 reward 0.00 A -0.70" in out
    # row 0 (A > 0) pushed up, row 1 down, each at full strength on its own scale
    assert len(re.findall(f'class="?u{show.SHADES}', out.splitlines()[1])) == len(view[0]["tokens"])
    assert len(re.findall(f'class="?d{show.SHADES}', out.splitlines()[2])) == len(view[1]["tokens"])
    plain = show.group_html([view[0] | {"tokens": [t._replace(by_advantage=0.0, by_kl=0.0, special=False)
                                                   for t in view[0]["tokens"]]}])
    assert "<span" not in plain.splitlines()[1] and "x &lt; y &amp; z" in plain      # unshaded tokens: bare text
    spans = [re.sub(r"<[^>]+>", "", line) for line in out.splitlines()[1:-1]]
    assert [html.unescape(s.split(" | ", 1)[1]) for s in spans] == \
        ["".join(show.shown(t) for t in row["tokens"]) for row in view]
    assert [t.special for t in view[0]["tokens"]][-1] and not any(t.special for t in view[0]["tokens"][:-1])


def test_html_shades_each_row_on_its_own_scale(gpt2_tok):
    """A winner with a large A on 2 tokens and a loser whose small -A is spread over many: on one scale for the
    group the loser's tokens round to no shade (GRPO would seem to push only winners up); row by row, both show."""
    view, _ = hand_group(gpt2_tok)
    Token = show.Token
    winner = [Token(t.text, t.id, t.special, -1.2, 0.0) for t in view[0]["tokens"][:2]]
    loser = [Token("ab", 7, False, 0.35 / 30, 0.0) for _ in range(30)]
    group = [view[0] | {"advantage": 2.4, "tokens": winner}, view[1] | {"advantage": -0.35, "tokens": loser}]
    assert show.shade(loser[0].by_advantage, 1.2) == 0                             # the group's scale: invisible
    out = show.group_html(group)
    win_line, lose_line = out.splitlines()[1:3]
    assert f'<span class=u{show.SHADES}>' in win_line
    assert lose_line.count("<span") == 1 and f'<span class=d{show.SHADES}>{"ab" * 30}</span>' in lose_line
    # the KL underline stays on the group's scale: a row's small KL is not blown up to full strength
    kl = [view[0] | {"tokens": [t._replace(by_advantage=0.0, by_kl=1.0) for t in view[0]["tokens"]]},
          view[1] | {"tokens": [t._replace(by_advantage=0.0, by_kl=0.01) for t in view[1]["tokens"]]}]
    kl_out = show.group_html(kl).splitlines()
    assert f"k{show.SHADES}" in kl_out[1] and not re.search(r'class="?[^">]*k', kl_out[2])


def test_html_style_block_once_when_asked(gpt2_tok):
    view, _ = hand_group(gpt2_tok)
    with_css, without = show.group_html(view), show.group_html(view, css=False)
    assert with_css.count("<style>") == 1 and "<style" not in without
    assert with_css.replace(show.GROUP_CSS, "") == without
    for i in range(1, show.SHADES + 1):                  # every class the rows and the legend use is styled
        assert f".tg .u{i}{{" in show.GROUP_CSS and f".tg .d{i}{{" in show.GROUP_CSS and f".tg .k{i}{{" in show.GROUP_CSS
    assert show.tint(show.UP, 0) == "#ffffff" and show.tint(show.DOWN, show.SHADES) == "#e33333"


def test_terminal_text_has_24bit_colours_and_the_text(gpt2_tok):
    view, texts = hand_group(gpt2_tok)
    out = show.group_ansi(view)
    assert "\x1b[48;2;" in out and "\x1b[4m" in out
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines()
    assert plain[1] == "#0 reward 1.00 A +0.70 | x < y & z<|endoftext|>"
    assert plain[2].startswith("#1 reward 0.00 A -0.70 | ") and "🦜" in plain[2] and " é" in plain[2]


def test_shade_group_on_a_rollout(tiny_checkpoint):
    """The whole path (policy log-probs, shares, view, HTML) on a real rollout of the tiny GPT-2."""
    model, tok = load_model(str(tiny_checkpoint))
    cfg = grpo.GRPOConfig(group_size=4, max_new_tokens=6, beta=0.04)
    prompts = [Prompt("What is 2 + 2?", 4), Prompt("What is 1 + 5?", 6)]
    batch = grpo.rollout(model, tok, prompts, toy_reward, cfg, ref_model=random_ref(model), seeds=[5, 6])
    out = show.shade_group(model, tok, batch, cfg)
    group = show.pick_group(batch.rewards.view(-1, 4).tolist())
    for i in range(group * 4, group * 4 + 4):
        assert f"reward {batch.rewards[i].item():.2f} A {batch.advantages[i].item():+.2f}" in out
    assert "\x1b[48;2;" in show.shade_group(model, tok, batch, cfg, group=1, as_html=False)


def random_ref(model):
    """A reference model a little away from the policy: KL terms that are not 0."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return ref


# ----------------------------------------------------------------------------- the run's picture


def test_run_figure_has_its_panels(tmp_path):
    history = [{"step": s, "reward": 0.1 * s, "reward/correct": 0.05 * s, "reward/format": 0.15 * s, "kl": 0.01 * s,
                "loss": 0.0004 * s, "completion_length": 20 - s, "truncated": 0.5 / s, "frac_reward_zero_std": 0.25}
               for s in range(1, 21)]
    history[0].pop("truncated")                              # a step logged by an older tinygrpo
    fig = show.run_figure(history, {"before": (0, 0.2), "after": (20, 0.6)}, beta=0.04)
    reward_ax, loss_ax, kl_ax, len_ax, truncated_ax, zero_ax = fig.axes
    assert fig.get_figwidth() > 2 * fig.get_figheight() * 0.9           # wide: the notebook's full width
    labels = [line.get_label() for line in reward_ax.get_lines()]
    assert labels[0] == "reward (sampled)" and {"correct", "format"} <= set(labels)
    assert len(reward_ax.collections) == 2                   # the accuracy before and after, as points
    assert reward_ax.get_ylabel() == "reward / held-out accuracy"
    assert [ax.get_ylabel() for ax in (loss_ax, kl_ax, len_ax, truncated_ax, zero_ax)] == \
        ["loss", "KL(pi || pi_ref) per token", "length (tokens)", "truncated (share)", "zero-variance groups (share)"]
    assert list(loss_ax.get_lines()[0].get_ydata()) == [h["loss"] for h in history]
    assert list(loss_ax.get_lines()[1].get_ydata()) == pytest.approx([0.04 * h["kl"] for h in history])
    assert list(kl_ax.get_lines()[0].get_ydata()) == [h["kl"] for h in history]
    assert reward_ax.get_shared_x_axes().joined(reward_ax, zero_ax)
    plain = show.run_figure(history, {})                     # no accuracy plotted: none named on an axis
    assert plain.axes[0].get_ylabel() == "reward" and len(plain.axes[1].get_lines()) == 1
    assert not any("accuracy" in ax.get_ylabel() for ax in plain.axes)
    show.save_run_figure(history, {}, tmp_path / "reward_curve.png")
    assert (tmp_path / "reward_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "reward_curve.png").stat().st_size > 20_000


def test_older_log_keys_are_renamed():
    """Hand: a history logged by an older tinygrpo (a checkpoint resumed, results/notebook_run.json) reads
    under today's keys; other keys and the values are kept."""
    old = [{"step": 1, "clip_frac": 0.25, "completion_len": 7.5, "kl": 0.01}]
    assert show.renamed(old) == [{"step": 1, "clip_ratio": 0.25, "completion_length": 7.5, "kl": 0.01}]
