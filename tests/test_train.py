"""train.py end to end on a tiny random GPT-2 checkpoint (real GPT-2 vocabulary): CLI, logs, checkpoints, resume."""
import copy
import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import checkpoint
import grpo
import train as train_module
from conftest import ROOT, tiny_config, toy_reward
from load_weights import load_model
from model import GPT, GPTConfig
from optim import MasterAdamW, cast_for_training, stochastic_round
from train import TrainConfig, main, optimize, parse_args, train


def test_run_logs_plots_and_checkpoints(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)     # auto must fall through to the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = train(tiny_config(tiny_checkpoint, tmp_path, device="auto"))
    printed = capsys.readouterr().out
    assert "compute dtype float32 on cpu (auto: the first of cuda, mps, cpu)" in printed
    assert printed.count("step ") >= 3 and "[eval before]" in printed and "[eval after]" in printed
    lines = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(l["loss"])) for l in lines)
    assert (tmp_path / "reward_curve.png").stat().st_size > 1000
    assert set(out) == {"before", "after", "paraphrase", "history"} and len(out["after"]["examples"]) == 4
    # each reward component's mean is logged beside the total, which is their weighted mean (weights 1 and 1)
    assert all(l["reward"] == pytest.approx((l["reward/correct"] + l["reward/format"]) / 2) for l in lines)
    assert "graded by the task's verifier" in printed and "exact format" in printed


@pytest.mark.parametrize("beta", [0.04, 0.0])
def test_judge_component_in_a_run(tiny_checkpoint, tmp_path, beta):
    """--reward_weights=correct:1,judge:1: the frozen reference judges (a frozen copy when beta = 0 has none);
    the judge's mean is logged and the total is the weights' mean of the two."""
    cfg = tiny_config(tiny_checkpoint, tmp_path, steps=1, reward_weights="correct:1,judge:1")
    cfg.grpo.beta = beta
    train(cfg)
    line = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert 0.0 < line["reward/judge"] < 1.0
    assert line["reward"] == pytest.approx((line["reward/correct"] + line["reward/judge"]) / 2)


@pytest.mark.parametrize("kind", ["py", "jsonl"])
def test_custom_task_end_to_end(tiny_checkpoint, tmp_path, capsys, monkeypatch, kind):
    """python train.py --task=path/to/my_task.py (or data.jsonl): a whole run on the tiny model."""
    import task
    monkeypatch.setattr(task, "TASKS", dict(task.TASKS))
    if kind == "py":
        path = tmp_path / "mine.py"
        path.write_text("def make_prompt(rng):\n    a = rng.randint(0, 30)\n    return f'What is {a} + 1?', a + 1\n")
    else:
        path = tmp_path / "mine.jsonl"
        path.write_text("".join(json.dumps({"question": f"Say {w}.", "answer": w}) + "\n" for w in "abcdefghij"))
    out = train(tiny_config(tiny_checkpoint, tmp_path / "run", task=str(path), steps=2, reward_weights="correct:1"))
    lines = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2] and all(l["reward"] == l["reward/correct"] for l in lines)
    assert "format" not in " ".join(lines[0])                       # weight 0: not computed, not logged
    assert str(path) in capsys.readouterr().out and len(out["after"]["examples"]) >= 2


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_resume_continues_exactly(tiny_checkpoint, tmp_path, dtype, monkeypatch):
    """A run stopped after step 2 and resumed to step 3 ends with the same weights as one run of 3 steps
    (in bf16 too: the checkpoint holds the fp32 master weights, not the bf16 model's rounding of them).
    On toy_reward, which the tiny model earns now and then: with no reward at all nothing would move."""
    monkeypatch.setattr(train_module, "make_reward", lambda *a: toy_reward)
    train(tiny_config(tiny_checkpoint, tmp_path / "whole", dtype=dtype))
    cfg = tiny_config(tiny_checkpoint, tmp_path / "split", dtype=dtype)
    cfg.steps = 2
    train(cfg)
    resumed = tiny_config(tiny_checkpoint, tmp_path / "split", resume=True, dtype=dtype)
    out = train(resumed)
    assert [h["step"] for h in out["history"]] == [1, 2, 3]
    a = load_file(str(checkpoint.current(tmp_path / "whole") / "model.safetensors"))
    b = load_file(str(checkpoint.current(tmp_path / "split") / "model.safetensors"))
    assert all(v.dtype == torch.float32 for v in a.values())
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    start = load_model(str(tiny_checkpoint))[0].state_dict()
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-4


def test_a_linear_schedule_lowers_lr_step_by_step_and_resumes_at_its_step(tiny_checkpoint, tmp_path, monkeypatch):
    """--lr_schedule=linear: step s of S steps updates with lr (S - s + 1) / S (hand values for lr 3e-4, S 3),
    a resumed run at the lr of its own step; constant: lr at every step."""
    seen = []
    real_step = MasterAdamW.step
    monkeypatch.setattr(MasterAdamW, "step", lambda self, clip=None: seen.append(self.lr) or real_step(self, clip))
    train(tiny_config(tiny_checkpoint, tmp_path / "whole", lr=3e-4, lr_schedule="linear"))
    assert seen == pytest.approx([3e-4, 2e-4, 1e-4], rel=1e-12)
    seen.clear()
    train(tiny_config(tiny_checkpoint, tmp_path / "split", lr=3e-4, lr_schedule="linear", steps=2, save_every=2))
    train(tiny_config(tiny_checkpoint, tmp_path / "split", lr=3e-4, lr_schedule="linear", resume=True))
    assert seen == pytest.approx([3e-4, 1.5e-4, 1e-4], rel=1e-12)
    seen.clear()
    train(tiny_config(tiny_checkpoint, tmp_path / "constant", lr=3e-4))
    assert seen == [3e-4] * 3


def test_parse_args_sets_both_configs():
    cfg = parse_args(["--task=add2", "--group_size=4", "--beta=0", "--resume", "--top_p=0.9", "--top_k=none"])
    assert (cfg.task, cfg.grpo.group_size, cfg.grpo.beta, cfg.resume, cfg.grpo.top_p, cfg.grpo.top_k) == \
        ("add2", 4, 0.0, True, 0.9, None)


def test_help_lists_every_option_with_its_default(capsys):
    assert main(["--help"]) is None
    out = capsys.readouterr().out
    assert out.startswith("Train a small pretrained model with GRPO")
    for option in ("--steps=40", "--lr_schedule=constant", "--temperature=1.2", "--group_size=8", "--beta=0.04", "--prompts_per_pass=8", "--resume=False"):
        assert f"  {option}" in out.splitlines(), option


@pytest.mark.parametrize("args,words", [
    (["--group_size=1"], ["group_size", ">= 2"]),
    (["--task=sudoku"], ["sudoku", "add1"]),
    (["--kl_estimator=k2"], ["kl_estimator", "k2"]),
    (["--loss_agg=median"], ["loss_agg", "median"]),
    (["--adam_moments=fp16"], ["adam_moments", "fp16", "bf16, fp32"]),
    (["--bogus=1"], ["--bogus"]),
    (["--steps=many"], ["many", "--steps"]),
    (["--model=gpt5"], ["gpt5"]),
    (["--model=distilgpt2"], ["distilgpt2 is not downloaded"]),
    (["--temperature=-1"], ["--temperature=-1.0", ">= 0"]),
    (["--device=foo"], ["--device=foo", "cpu"]),
    (["--reward_weights=correct:1,style:2"], ["--reward_weights", "'style'"]),
    (["--reward_weights=correct:-1"], ["--reward_weights", ">= 0"]),
    (["--task=missing.jsonl"], ["missing.jsonl", "no such file"]),
    (["--reward_weights=correct:1,judge:1", "--judge=nope"], ["--judge=nope", "no such checkpoint"]),
])
def test_bad_input_is_one_line(args, words, tmp_path):
    """One line, and an earlier run in the out_dir left where it is (it is moved aside only once the settings
    are known to be good)."""
    earlier = tmp_path / "run"
    (earlier / "checkpoint-000001").mkdir(parents=True)
    (earlier / "log.jsonl").write_text('{"step": 1}\n')
    proc = subprocess.run([sys.executable, "train.py", f"--out_dir={earlier}", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    for w in words:
        assert w in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and (earlier / "log.jsonl").exists()


# ----------------------------------------------------------------------------- optimizer and parts


def random_model(dtype=torch.float32):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, n_inner=64))
    with torch.no_grad():
        model.embed.weight.mul_(0.2)          # log-probs near log(1/16), as a trained model's are not far off
    return model.to(dtype)


def steps_against_torch_adamw(clip, **adamw_args):
    """3 steps of MasterAdamW and of torch.optim.AdamW (after clip_grad_norm_) on the same random gradients:
    (our optimizer, the largest difference between the two models' weights)."""
    ours, theirs = random_model(), random_model()
    opt = MasterAdamW(ours.parameters(), lr=1e-2, weight_decay=0.1, **adamw_args)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for a, b in zip(ours.parameters(), theirs.parameters()):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        opt.step(clip)
        if clip:
            torch.nn.utils.clip_grad_norm_(theirs.parameters(), clip)
        ref.step()
    assert all(p.grad is None for p in ours.parameters())
    return opt, max((a - b).abs().max().item() for a, b in zip(ours.parameters(), theirs.parameters()))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("clip", [None, 1.0, 1e-3])
def test_master_adamw_equals_torch_adamw_in_fp32(clip, fused):
    """Oracle: torch.optim.AdamW after clip_grad_norm_, on the same gradients, over 3 steps; with torch's fused
    kernel and with its plain implementation (a device without the kernel)."""
    _, diff = steps_against_torch_adamw(clip, fused=fused)
    assert diff <= 1e-6


def test_master_adamw_uses_the_fused_kernel_where_torch_has_one(monkeypatch, capsys):
    import optim
    assert MasterAdamW(random_model().parameters(), lr=1e-3).fused          # torch 2.13 has one for the CPU
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(optim, "_get_fused_kernels_supported_devices", lambda: ["cuda"])   # a device without
    assert not MasterAdamW(random_model().parameters(), lr=1e-3).fused
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "no fused AdamW kernel for cpu" in note, note


def test_master_adamw_keeps_fp32_masters_of_a_bf16_model():
    """Oracle: torch AdamW on an fp32 copy fed the bf16 gradients upcast; the bf16 model holds its rounding,
    and the fp32 norm weights (cast_for_training leaves them) are their own masters."""
    fp32 = random_model()
    theirs = copy.deepcopy(fp32)
    start = {n: p.detach().clone() for n, p in fp32.named_parameters()}
    model = fp32
    opt = cast_for_training(model, torch.bfloat16, lr=1e-3, weight_decay=0.0)
    assert {n for n, p in model.named_parameters() if p.dtype == torch.float32} == \
        {n for n in start if "norm" in n} != set()
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        for a, b in zip(model.parameters(), theirs.parameters()):
            a.grad = torch.randn(a.shape, generator=g).to(a.dtype)
            b.grad = a.grad.float()
        opt.step(1.0)
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        ref.step()
    masters = opt.master_state_dict(model)
    for name, b in theirs.named_parameters():
        assert (masters[name] - b).abs().max() <= 1e-6                 # the masters are torch's ...
    assert all((masters[n] != start[n]).float().mean() > 0.9 for n in start)      # ... and all moved
    for n, p in model.named_parameters():                                # the model holds them, rounded
        if p.dtype == torch.float32:
            assert torch.equal(p, masters[n])
        else:
            assert torch.equal(p, masters[n].to(torch.bfloat16))


def test_stochastic_rounding_is_exact_on_average():
    """Hand oracle: over all 2^16 dithers, x rounds to the bf16 just below |x| or the one just above, and the
    mean of the results (float64) is x itself; round-to-nearest's mean is not."""
    x = torch.tensor([1.0 + 2 ** -9 + 2 ** -20, -3.14159, 7e-6, 0.3, 2.0, 0.0])
    dither = torch.arange(1 << 16, dtype=torch.int32)
    results = torch.stack([stochastic_round(torch.full((1 << 16,), v.item()), dither) for v in x])
    assert torch.equal(results, results.bfloat16().float())          # every result is a bf16 number
    for v, r in zip(x.double(), results.double()):
        assert set(r.unique().tolist()) <= {v.item()} | set(bf16_neighbours(v.item()))
        assert r.mean().item() == pytest.approx(v.item(), rel=1e-12, abs=0)
    assert (x[:1].bfloat16().double() != x[:1].double()).all()      # round-to-nearest misses it


def bf16_neighbours(v):
    """The two bf16 numbers around v, by nextafter from v's round-to-nearest (toward zero and away)."""
    r = torch.tensor(v).bfloat16()
    return [torch.nextafter(r, torch.tensor(-math.inf, dtype=torch.bfloat16)).item(), r.item(),
            torch.nextafter(r, torch.tensor(math.inf, dtype=torch.bfloat16)).item()]


def test_master_adamw_with_bf16_moments_is_torch_adamw_to_bf16_precision():
    """Oracle: torch.optim.AdamW (fp32 moments) on the same gradients, 3 steps: the weights agree to a few
    bf16 roundings of the update (lr 2^-8 a step), and the moments are kept in bf16."""
    opt, diff = steps_against_torch_adamw(1.0, moments="bf16")
    assert all(m.dtype == torch.bfloat16 for m in opt.exp_avg + opt.exp_avg_sq)
    assert 0 < diff <= 3 * 1e-2 * 2 ** -7


@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_bf16_second_moment_follows_the_gradients_over_thousands_of_steps(rounding, monkeypatch):
    """Oracle: torch.optim.AdamW's fp32 exp_avg_sq. g = 1 for 1,000 steps, then 0.1 for 2,000: v must decay
    from 0.63 to 0.094. Each step adds 0.001 of (g^2 - v), under bf16's half-step, so rounded to the nearest
    v stays where it was (the case the test shows failing); rounded stochastically its mean follows."""
    import optim
    if rounding == "nearest":
        monkeypatch.setattr(optim, "stochastic_round", lambda x, dither: x.to(torch.bfloat16))
    ours, theirs = torch.nn.Parameter(torch.zeros(4096)), torch.nn.Parameter(torch.zeros(4096))
    opt = MasterAdamW([ours], lr=1e-6, weight_decay=0.0, moments="bf16")
    ref = torch.optim.AdamW([theirs], lr=1e-6, weight_decay=0.0)
    for step in range(3000):
        for p in (ours, theirs):
            p.grad = torch.full_like(p, 1.0 if step < 1000 else 0.1)
        opt.step()
        ref.step()
    exact = ref.state[theirs]["exp_avg_sq"].mean().item()
    assert exact == pytest.approx(0.632 * 0.999 ** 2000 + 0.01 * (1 - 0.999 ** 2000), rel=1e-3)
    error = abs(opt.exp_avg_sq[0].float().mean().item() / exact - 1)
    assert (error < 0.01) if rounding == "stochastic" else (error > 1)


def toy_rollout(loss_agg, drop):
    """A hand-made batch of 3 prompts x G = 2 with a flat group in the middle (dropped when drop)."""
    prompt_ids = torch.tensor([[0, 0, 3, 4], [5, 6, 7, 8], [0, 9, 10, 11]])
    prompt_mask = (prompt_ids > 0).long()
    comp = torch.tensor([[12, 1, 0, 0], [13, 14, 15, 1], [2, 1, 0, 0], [3, 1, 0, 0], [4, 5, 6, 7], [8, 9, 1, 0]])
    cmask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.9])
    cfg = grpo.GRPOConfig(group_size=2, max_new_tokens=4, beta=0.1, loss_agg=loss_agg, drop_zero_std_groups=drop)
    adv = grpo.group_advantages(rewards, 2)
    loss_mask = cmask.clone()
    if drop:
        loss_mask[grpo.zero_std_groups(rewards, 2)] = 0
    ref = (-math.log(16) - 0.3 * torch.rand(6, 4, generator=torch.Generator().manual_seed(3))) * cmask
    return grpo.Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=comp, completion_mask=cmask,
                        rewards=rewards, texts=[""] * 6, advantages=adv, loss_mask=loss_mask, ref_logprobs=ref), cfg


def whole_batch_loss(model, batch, cfg):
    """grpo.grpo_loss of the whole batch in one pass, under the model's log-probs."""
    logprobs = grpo.completion_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                        cfg.group_size, batch.loss_mask)
    return grpo.grpo_loss(logprobs, batch, cfg)


@pytest.mark.parametrize("drop", [False, True])
@pytest.mark.parametrize("agg", ["seq_mean", "token_mean", "seq_sum", "constant"])
def test_optimize_by_chunks_equals_the_whole_batch(agg, drop):
    """Oracle: grpo_loss of the whole batch in one pass, clip_grad_norm_ and torch's AdamW (fp32)."""
    batch, gcfg = toy_rollout(agg, drop)
    ours, theirs = random_model(), random_model()
    loss, kl, clipped, _ = optimize(ours, MasterAdamW(ours.parameters(), lr=1e-4), batch,
                                    TrainConfig(grad_clip=1.0, grpo=dataclasses.replace(gcfg, prompts_per_pass=1)))
    want, want_kl, _ = whole_batch_loss(theirs, batch, gcfg)
    want.backward()
    torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
    torch.optim.AdamW(theirs.parameters(), lr=1e-4).step()
    assert loss == pytest.approx(want.item(), rel=1e-5, abs=1e-6)
    m = batch.loss_mask.bool()
    assert torch.allclose(kl[m], want_kl.detach()[m], rtol=1e-5, atol=1e-6) and not clipped.any()
    assert max((a - b).abs().max().item() for a, b in zip(ours.parameters(), theirs.parameters())) <= 1e-6


HUGE_PAGES_ON_REQUEST = "[never]" not in (lambda p: open(p).read() if __import__("os").path.exists(p) else "[never]")(
    "/sys/kernel/mm/transparent_hugepage/enabled")


@pytest.mark.skipif(not HUGE_PAGES_ON_REQUEST, reason="this kernel gives no transparent huge pages on request")
@pytest.mark.parametrize("env", ["unset", "0"])
def test_a_run_asks_for_huge_pages_before_its_first_large_tensor(tiny_checkpoint, tmp_path, env):
    """train() turns on PyTorch's huge-page allocation (fused.use_huge_pages) before the run allocates anything
    large: 20 fresh 64 MB tensors then cost a few page faults per 2 MB instead of one per 4 KB. A
    THP_MEM_ALLOC_ENABLE=0 already in the environment wins."""
    import os
    code = ("import resource, sys, torch, train\n"
            "def run_training(cfg, device):\n"
            "    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    for _ in range(20): torch.ones(2 ** 24)\n"
            "    print('FAULTS', resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
            "train.run_training = run_training\n"
            f"train.main(['--model={tiny_checkpoint}', '--device=cpu', '--out_dir={tmp_path / 'run'}'])\n")
    environ = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env != "unset":
        environ["THP_MEM_ALLOC_ENABLE"] = env
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True)
    faults = int(out.stdout.split("FAULTS")[1])
    four_kb_pages = 20 * 2 ** 26 // 4096
    assert faults < four_kb_pages / 20 if env == "unset" else faults > four_kb_pages / 2


@pytest.mark.parametrize("setting, dtype, threshold, trims", [
    ("auto", "fp32", 1 << 20, True), ("auto", "bf16", 64 << 20, False), ("glibc", "fp32", None, True),
    ("map", "bf16", 1 << 20, True), ("keep", "fp32", 64 << 20, False)])
def test_a_run_keeps_the_heap_in_bf16_and_maps_large_blocks_in_fp32(tiny_checkpoint, tmp_path, monkeypatch, setting,
                                                                     dtype, threshold, trims):
    """--heap=auto: keep the heap's free pages (no trim a step, a fixed 64 MB mmap threshold) but for an fp32 run on
    a CPU, which maps blocks of 1 MB or more and trims once a step (fused.use_heap); keep, map and glibc force one."""
    calls = []
    monkeypatch.setattr(train_module.fused, "set_mmap_threshold", calls.append)
    monkeypatch.setattr(train_module.fused, "mallopt", lambda *a: None)
    monkeypatch.setattr(train_module.fused, "TRIM_EACH_STEP", True)      # restored after the test
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024")         # (oneDNN has read it long before)
    monkeypatch.setattr("device.check_bf16", lambda device: None)      # --dtype=bf16 on any CPU
    train(tiny_config(tiny_checkpoint, tmp_path, steps=1, heap=setting, dtype=dtype, eval_before=False,
                      eval_paraphrase=False))
    assert calls == ([threshold] if threshold else []) and train_module.fused.TRIM_EACH_STEP == trims


def test_a_run_with_oversample_trains_on_b_of_the_groups_it_draws(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """--oversample=2: each step draws 2 B prompts (train.step_prompts), samples them all, and trains on B groups of
    them, in the order drawn; log.jsonl's reward is the kept groups' (their records), reward_drawn every sample's."""
    from task import make_dataset
    monkeypatch.setattr(train_module, "make_reward", lambda *a: toy_reward)
    cfg = tiny_config(tiny_checkpoint, tmp_path, eval_paraphrase=False, eval_before=False)
    cfg.grpo.oversample, cfg.grpo.drop_zero_std_groups = 2, True
    train(cfg)
    printed = capsys.readouterr().out
    train_set, _ = make_dataset(cfg.task, cfg.n_train, cfg.n_eval, cfg.seed, cfg.format_example)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    for step, (record, logged) in enumerate(zip(records, log), start=1):
        drawn = [p.question for p in train_module.step_prompts(train_set, cfg, step, 0, 1)[0]]
        kept = [p["question"] for p in record["prompts"]]
        assert len(drawn) == 4 and len(kept) == 2 and all(len(p["completions"]) == 2 for p in record["prompts"])
        assert [q for q in drawn if q in kept] == kept                  # B of the drawn prompts, in draw order
        rewards = [c["reward"] for p in record["prompts"] for c in p["completions"]]
        assert sum(rewards) / 4 == pytest.approx(logged["reward"]) and 0 <= logged["reward_drawn"] <= 1
    assert len(log) == 3 and printed.count("reward_drawn ") == 3
