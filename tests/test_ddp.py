"""Training on several processes (torchrun): 2 processes with DistributedDataParallel over gloo on the CPU
make the same optimizer step as 1 process with the whole batch, for the same fixed rollouts.

Each worker is this file run as a script with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT), so ddp.init_distributed is what connects them. Only tiny random models and one thread per
process: the file runs in a few seconds.
"""
import contextlib
import copy
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:            # run as a worker script, without conftest.py
    sys.path.insert(0, str(ROOT))

import batching  # noqa: E402
import ddp  # noqa: E402
import grpo  # noqa: E402
import optim  # noqa: E402
import show  # noqa: E402
import train  # noqa: E402
from engine import completion_mask, left_pad  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

EOS, PAD, VOCAB = 1, 0, 16
G, T = 4, 6                   # samples per prompt, completion tokens
NDATA, B, STEP = 6, 4, 3      # data set size, prompts per step (all ranks together), the step drawn
WORLD = 2
LR = 1e-4      # AdamW's first step is ~ lr * g / (|g| + eps): float noise on a gradient near eps = 1e-8 moves a
               # parameter by up to ~lr * noise / eps, a wrong gradient by up to 2 * lr (see the negative test)

# name -> GRPOConfig fields, plus mu (passes per batch) and scale (normalise by the whole step's count)
CASES = {
    "seq_mean": dict(beta=0.0),
    "seq_mean_kl": dict(beta=0.1),
    "token_mean_kl": dict(beta=0.04, loss_agg="token_mean"),
    "token_mean_unscaled": dict(beta=0.04, loss_agg="token_mean", scale=False),
    "drop_zero_std": dict(beta=0.04, drop_zero_std_groups=True),      # rank 1 has no group left at all
    "mu2_kl": dict(beta=0.04, mu=2),
    "tempered_mu2_kl": dict(beta=0.04, mu=2, temperature=1.3),       # log-probs of softmax(logits / T)
    "one_pass_per_rank": dict(beta=0.04, loss_agg="token_mean", prompts_per_pass=4),
}
EXACT = [c for c in CASES if CASES[c].get("scale", True)]


def tiny(seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(arch="llama", vocab_size=VOCAB, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                          n_embd=32, n_inner=64))
    with torch.no_grad():
        model.embed.weight.mul_(0.2)
    return model


def perturbed(model, scale=0.05, seed=1):
    ref = copy.deepcopy(model).requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return ref


def example(d):
    """Fixed prompt tokens, G completions (N, T) and rewards (G,) of data item d."""
    g = torch.Generator().manual_seed(100 + d)
    prompt = torch.randint(2, VOCAB, (2 + d % 4,), generator=g).tolist()
    ids = torch.randint(2, VOCAB, (G, T), generator=g)
    for j in range(G):
        n = int(torch.randint(1, T + 1, (1,), generator=g))        # n = T: no EOS (cut at max_new_tokens)
        if n < T:
            ids[j, n - 1] = EOS
            ids[j, n:] = PAD
    return prompt, ids, torch.rand(G, generator=g)


def global_order(tcfg):
    return train.step_prompts(list(range(NDATA)), tcfg, STEP, 0, 1)[0]


def make_rollout(items, cfg, tcfg, policy, ref_model, mu):
    """A grpo.Rollout of the given data items, built by hand as grpo.rollout would from these samples."""
    examples = [example(d) for d in items]
    prompt_ids, prompt_mask = left_pad([e[0] for e in examples], PAD)
    completion_ids = torch.cat([e[1] for e in examples])
    cmask = completion_mask(completion_ids, EOS)
    rewards = torch.cat([e[2] for e in examples])
    if cfg.drop_zero_std_groups:        # equal rewards in the groups at global positions 1, 2, 3
        order = global_order(tcfg)
        for k, d in enumerate(items):
            if order.index(d) >= 1:
                rewards[k * G:(k + 1) * G] = 0.5
    advantages = grpo.group_advantages(rewards, G, cfg.scale_rewards, cfg.adv_eps)
    loss_mask = cmask.clone()
    if cfg.drop_zero_std_groups:
        loss_mask[grpo.zero_std_groups(rewards, G)] = 0
    args = (prompt_ids, prompt_mask, completion_ids, G)
    with torch.no_grad():
        ref = grpo.completion_logprobs(ref_model, *args, completion_mask=cmask,
                                       temperature=cfg.temperature) if cfg.beta > 0 else None
        old = grpo.completion_logprobs(policy, *args, completion_mask=cmask,
                                       temperature=cfg.temperature) if mu > 1 else None
    return grpo.Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                        completion_mask=cmask, rewards=rewards, texts=[""] * len(rewards), advantages=advantages,
                        loss_mask=loss_mask, ref_logprobs=ref, old_logprobs=old)


def one_step(case, rank, world):
    """train.py's step on this rank's share of the global batch: mu passes of loss, backward, clip, AdamW."""
    spec = dict(CASES[case])
    mu, scale_on = spec.pop("mu", 1), spec.pop("scale", True)
    cfg = grpo.GRPOConfig(group_size=G, max_new_tokens=T, **spec)
    tcfg = train.TrainConfig(batch_prompts=B, seed=0, grad_clip=1.0, grpo=cfg)
    items, _ = train.step_prompts(list(range(NDATA)), tcfg, STEP, rank, world)
    policy = tiny()
    batch = make_rollout(items, cfg, tcfg, policy, perturbed(policy), mu)
    optimizer = RecordingAdamW(policy.parameters(), lr=LR, weight_decay=0.01)
    optimizer.names = [n for n, _ in policy.named_parameters()]
    ddp_policy = None
    if world > 1:
        # unscaled: each rank normalises by its own count alone (what DDP's plain average would give)
        ddp_policy = (ddp.DDPPolicy if scale_on else PerRankNormaliser)(policy, world)
    n_rank = grpo.loss_normaliser(batch.loss_mask, cfg.loss_agg, cfg.max_new_tokens)
    n = ddp.sum_across_ranks(n_rank) if world > 1 else n_rank
    scale = world * n_rank / n if n else 0.0           # this rank's share of the step's loss
    loss, kl, clipped, grad_norm = train.optimize(policy, optimizer, batch, tcfg, ddp_policy)
    metrics = show.step_metrics(batch, kl, clipped, G, EOS) | {"loss": loss, "grad_norm": grad_norm}
    return {"params": {n: p.detach().clone() for n, p in policy.named_parameters()}, "grads": optimizer.grads,
            "metrics": ddp.mean_across_ranks(metrics, world), "scale": scale}


class PerRankNormaliser(ddp.DDPPolicy):
    """The wrong DDP pass: each rank's loss divided by its own normaliser, and DDP's plain average."""

    def backward(self, batch, cfg, normaliser):
        sync = lambda last: contextlib.nullcontext() if last else self.module.no_sync()
        loss_of = partial(grpo.grpo_loss, cfg=cfg, normaliser=normaliser)
        return batching.backward_by_chunk(self.module, loss_of, batch, cfg, only_in_loss=False, sync=sync)


class RecordingAdamW(optim.MasterAdamW):
    """optim.MasterAdamW that keeps a copy of the (unclipped) gradients of every step."""

    def step(self, max_grad_norm=None):
        self.grads = getattr(self, "grads", []) + [{n: p.grad.clone() for n, p in zip(self.names, self.params)}]
        return super().step(max_grad_norm)


def worker(out_dir):
    torch.set_num_threads(1)
    rank, world = ddp.init_distributed(torch.device("cpu"))
    res = {"rank": rank, "world": world, "backend": dist.get_backend() if dist.is_initialized() else None,
           "cases": {case: one_step(case, rank, world) for case in CASES},
           "mean": ddp.mean_across_ranks({"reward": float(rank), "tok_per_s": 10.0, "s_per_step": 1.0 + rank},
                                           world)}
    torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Results of the 2 worker processes, by rank."""
    out = tmp_path_factory.mktemp("ddp")
    port = free_port()
    procs = []
    try:
        for rank in range(WORLD):
            env = os.environ | {"RANK": str(rank), "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
                                "LOCAL_WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1",
                                "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
            procs.append(subprocess.Popen([sys.executable, __file__, str(out)], env=env, cwd=ROOT,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        logs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log}"
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def single():
    """The same steps on 1 process with the whole batch (no process group, no DDP)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {case: one_step(case, 0, 1) for case in CASES}
    finally:
        torch.set_num_threads(n)


def max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("case", EXACT)
def test_two_processes_step_like_one(ranks, single, case):
    r0, r1, one = ranks[0]["cases"][case], ranks[1]["cases"][case], single[case]
    assert max_diff(r0["params"], one["params"]) <= 1e-5
    assert max(max_diff(a, b) for a, b in zip(r0["grads"], one["grads"])) <= 1e-6
    # the replicas stay identical: the same all-reduced gradient, clipped and stepped the same way
    assert all(torch.equal(r0["params"][k], r1["params"][k]) for k in r0["params"])
    # the logged metrics are those of the whole batch (kl and clip_ratio are approximate: see mean_across_ranks)
    for key in ("loss", "reward", "reward_std", "frac_reward_zero_std", "completion_length"):
        assert r0["metrics"][key] == pytest.approx(one["metrics"][key], abs=1e-6), key
        assert r1["metrics"][key] == r0["metrics"][key], key
    # the norm of the all-reduced gradient: the whole batch's, the same on both replicas
    assert r0["metrics"]["grad_norm"] == pytest.approx(one["metrics"]["grad_norm"], rel=1e-5)
    assert r1["metrics"]["grad_norm"] == r0["metrics"]["grad_norm"]


def test_the_comparison_would_see_a_per_rank_normaliser(ranks, single):
    """token_mean normalised by each rank's own count weighs its tokens differently: the test notices."""
    r0, one = ranks[0]["cases"]["token_mean_unscaled"], single["token_mean_unscaled"]
    assert max_diff(r0["grads"][0], one["grads"][0]) > 1e-4
    assert max_diff(r0["params"], one["params"]) > 1e-5
    assert ranks[0]["cases"]["token_mean_kl"]["scale"] != 1.0


def test_loss_scale(ranks):
    for res in ranks:
        for case in ("seq_mean", "seq_mean_kl", "mu2_kl"):
            assert res["cases"][case]["scale"] == 1.0      # equal rows per rank: nothing to correct
    assert ranks[1]["cases"]["drop_zero_std"]["scale"] == 0.0     # every group of rank 1 dropped
    assert sum(r["cases"]["token_mean_kl"]["scale"] for r in ranks) == pytest.approx(WORLD)


def test_workers_joined_and_metrics_reduce(ranks):
    assert [(r["rank"], r["world"], r["backend"]) for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    for r in ranks:
        assert r["mean"] == {"reward": 0.5, "tok_per_s": 20.0, "s_per_step": 2.0}


def test_no_process_group_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert ddp.init_distributed(torch.device("cpu")) == (0, 1)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")           # torchrun --nproc_per_node=1
    assert ddp.init_distributed(torch.device("cpu")) == (0, 1)
    assert not dist.is_initialized()


@pytest.mark.parametrize("world", [2, 4])
def test_step_prompts_split_the_global_batch(world):
    tcfg = train.TrainConfig(batch_prompts=8, seed=3)
    data = list(range(100))
    one_prompts, one_seeds = train.step_prompts(data, tcfg, 5, 0, 1)
    parts = [train.step_prompts(data, tcfg, 5, r, world) for r in range(world)]
    assert all(len(p) == 8 // world for p, _ in parts)
    assert [x for p, _ in parts for x in p] == one_prompts
    assert [s for _, seeds in parts for s in seeds] == one_seeds       # the same samples as 1 process
    assert len(set(one_seeds)) == 8
    assert set(one_seeds).isdisjoint(train.step_prompts(data, tcfg, 6, 0, 1)[1])
    assert set(one_seeds).isdisjoint(train.step_prompts(data, train.TrainConfig(batch_prompts=8, seed=4), 5, 0, 1)[1])


def test_check_world():
    for world in (1, 2, 4, 8):
        ddp.check_world(8, world)
    with pytest.raises(ValueError) as e:
        ddp.check_world(8, 3)
    msg = str(e.value)
    assert "\n" not in msg and "batch_prompts=8" in msg and "3 processes" in msg


def test_bad_world_size_is_one_line_before_any_rendezvous(monkeypatch):
    """RANK/WORLD_SIZE as torchrun sets them, but no MASTER_ADDR: the check must come before init."""
    from conftest import fake_torchrun, refused_before_rendezvous   # here: this file also runs as a worker script
    fake_torchrun(monkeypatch, 3)
    refused_before_rendezvous(["--batch_prompts=8", "--device=cpu"], "batch_prompts=8")


if __name__ == "__main__":
    worker(sys.argv[1])
