"""Train a small pretrained model with GRPO on a toy task, and evaluate it before and after.

    python train.py                                    # the default experiment
    python train.py --task=larger --group_size=4 --beta=0 --steps=50
    python train.py --resume                           # continue runs/default from its last checkpoint
    torchrun --nproc_per_node=2 train.py               # the same run on 2 processes (DistributedDataParallel)

Every field of TrainConfig (and of grpo.GRPOConfig) can be set as --name=value.

What each logged column means:
  reward    mean task reward of this step's B*G sampled completions (= sampled accuracy for 0/1 rewards)
  ±         mean over groups of the reward std within a group: the signal GRPO learns from
  zero      fraction of groups whose G rewards are all equal: they get A = 0 and teach nothing
  loss      the GRPO loss (with mu = 1 its value is ~ beta*KL: the advantages of a group sum to zero)
  kl        mean per-token KL(pi || pi_ref) estimate (k1 or k3) over generated tokens
  clip      fraction of tokens whose ratio pi/pi_old was clipped (0 when mu = 1)
  len       mean completion length in tokens (EOS included)
  tok/s     sampled tokens per second of the rollout;  s/step: wall time of the whole step
"""
import copy
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from eval import evaluate, format_examples
from grpo import GRPOConfig, completion_logprobs, grpo_loss, rollout
from load_weights import load_model
from model import pick_dtype
from task import get_reward, get_task, make_dataset


@dataclass
class TrainConfig:
    model: str = "smollm2"
    task: str = "larger"
    steps: int = 30
    batch_prompts: int = 8         # B prompts per step (all ranks together); each gets G = group_size samples
    lr: float = 5e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    mu: int = 1                    # optimisation passes over each batch of rollouts
    n_train: int = 1000
    n_eval: int = 200
    seed: int = 0
    dtype: str = "auto"            # compute dtype: auto | fp32 | bf16 (weights and optimizer stay fp32)
    device: str = "auto"
    log_every: int = 1
    eval_samples: int = 0          # also report sampled accuracy with k samples per held-out prompt
    eval_before: bool = True       # evaluate the base model first (the "before" of before/after)
    save_every: int = 10
    out_dir: str = "runs/default"
    resume: bool = False
    grpo: GRPOConfig = field(default_factory=GRPOConfig)


def parse_args(argv):
    """--name=value for TrainConfig and GRPOConfig fields (bare --flag means True)."""
    cfg = TrainConfig()
    targets = {f.name: cfg for f in fields(TrainConfig) if f.name != "grpo"}
    targets |= {f.name: cfg.grpo for f in fields(GRPOConfig)}
    for arg in argv:
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; use --name=value")
        name, _, value = arg[2:].partition("=")
        if name not in targets:
            raise ValueError(f"unknown option --{name}; known: {', '.join(sorted(targets))}")
        obj = targets[name]
        current = getattr(obj, name)
        setattr(obj, name, convert(name, value if "=" in arg else "true", current))
    return cfg


def convert(name, value, current):
    if value.lower() in ("none", "null") and not isinstance(current, bool):
        return None
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float) or name in ("top_p",):
            return float(value)
        if name == "top_k":
            return int(value)
    except ValueError:
        raise ValueError(f"bad value {value!r} for --{name} (expected {type(current).__name__})") from None
    return value


# ----------------------------------------------------------------------------- distributed (torchrun)

def check_world(batch_prompts, world):
    """One clear line when the prompts of a step cannot be split evenly over the processes."""
    if world < 1 or batch_prompts % world:
        raise ValueError(f"batch_prompts={batch_prompts} does not split evenly over {world} processes; "
                         f"use a multiple of {world} (a group of G samples never spans two ranks)")


def init_distributed(device):
    """(rank, world size); initialises torch.distributed when launched by torchrun with more than one process
    (gloo on a CPU, NCCL on GPUs, one GPU per process: LOCAL_RANK)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def mean_across_ranks(metrics, world):
    """Metrics of the whole step: the mean over ranks (every rank has as many prompts, so for the per-sample
    metrics this is the global mean), except tok_per_s, summed (the job's throughput), and s_per_step, the
    slowest rank's. kl and clip_frac are per-rank token averages, so their mean is approximate when the
    ranks sampled different numbers of tokens."""
    if world == 1:
        return metrics
    keys = sorted(metrics)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    gathered = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(gathered, t)
    g = torch.stack(gathered).cpu()                                   # (world, keys)
    reduce = {"tok_per_s": lambda x: x.sum(), "s_per_step": lambda x: x.max()}
    return {k: reduce.get(k, lambda x: x.mean())(g[:, i]).item() for i, k in enumerate(keys)}


def rank_loss_scale(loss_mask, loss_agg, world):
    """The factor for this rank's loss that makes the DDP-averaged gradient equal the 1-process one.

    grpo.aggregate_loss divides by a per-rank normaliser n_r (tokens for token_mean; rows with a token in
    the loss for seq_mean, seq_sum and constant). DDP averages the ranks' gradients, so scaling rank r's
    loss by world * n_r / sum_r n_r gives the gradient of sum_r S_r / sum_r n_r: the loss of the whole
    batch. Exactly 1.0 when the ranks' normalisers are equal (seq_mean without drop_zero_std_groups).
    """
    if world == 1:
        return 1.0
    m = loss_mask.detach()
    n = (m.sum() if loss_agg == "token_mean" else (m.sum(1) > 0).sum()).to(torch.float64).reshape(1)
    total = n.clone()
    dist.all_reduce(total)
    return (world * n / total).item() if total.item() > 0 else 1.0


class PolicyLogprobs(torch.nn.Module):
    """completion_logprobs as one module call, so DistributedDataParallel can wrap the policy's whole pass."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, prompt_ids, prompt_mask, completion_ids, group_size, compute_dtype=None, completion_mask=None):
        out = completion_logprobs(self.model, prompt_ids, prompt_mask, completion_ids, group_size, compute_dtype,
                                  completion_mask)
        if torch.is_grad_enabled() and not out.requires_grad:
            # no token in the mask (every group dropped): a zero that still reaches every parameter, so that
            # backward works and this rank joins DDP's gradient all-reduce instead of leaving the others waiting
            out = out + sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
        return out


# ----------------------------------------------------------------------------- the loop

def step_prompts(train_set, cfg, step, rank, world):
    """This rank's prompts for a step: the same global draw on every rank (seeded by step), then a slice.
    Sampling seeds follow the global prompt index, so N ranks reproduce the 1-process rollouts."""
    rng = random.Random(cfg.seed * 1_000_003 + step)
    idx = rng.sample(range(len(train_set)), cfg.batch_prompts)
    per_rank = cfg.batch_prompts // world
    mine = range(rank * per_rank, (rank + 1) * per_rank)
    seeds = [cfg.seed * 7_919 + step * 100_003 + i for i in mine]
    return [train_set[idx[i]] for i in mine], seeds


def save_checkpoint(out_dir, policy, optimizer, step, history, cfg):
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, str(out_dir / "model.safetensors.tmp"))
    torch.save({"optimizer": optimizer.state_dict(), "step": step, "history": history, "config": asdict(cfg)},
               out_dir / "train_state.pt.tmp")
    # rename both only once both are written, so that a crash mid-save leaves the last good checkpoint
    os.replace(out_dir / "model.safetensors.tmp", out_dir / "model.safetensors")
    os.replace(out_dir / "train_state.pt.tmp", out_dir / "train_state.pt")


def format_log(step, steps, m):
    return (f"step {step:4d}/{steps} | reward {m['reward']:.3f} ±{m['reward_std']:.2f} zero {m['frac_reward_zero_std']:.2f}"
            f" | loss {m['loss']:+.4f} kl {m['kl']:.4f} clip {m['clip_frac']:.2f} | len {m['completion_len']:4.1f}"
            f" | {m['tok_per_s']:5.0f} tok/s {m['s_per_step']:5.1f} s/step")


def plot_history(history, evals, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [h["step"] for h in history]
    rewards = [h["reward"] for h in history]
    k = max(1, len(rewards) // 10)
    smooth = [sum(rewards[max(0, i - k + 1):i + 1]) / len(rewards[max(0, i - k + 1):i + 1]) for i in range(len(rewards))]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(steps, rewards, alpha=0.35, label="train reward (sampled)")
    ax.plot(steps, smooth, label=f"moving average ({k} steps)")
    for name, (step, acc) in evals.items():
        ax.scatter([step], [acc], marker="o", zorder=3, label=f"held-out greedy accuracy, {name}: {acc:.0%}")
    ax.set_xlabel("step")
    ax.set_ylabel("reward / accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train(cfg: TrainConfig):
    cfg.grpo.validate()
    get_task(cfg.task)
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    check_world(cfg.batch_prompts, int(os.environ.get("WORLD_SIZE", 1)))
    rank, world = init_distributed(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    log = print if rank == 0 else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)

    policy, tok = load_model(cfg.model, device)
    dtype = pick_dtype(cfg.dtype, device)
    if world > 1:                 # rank 0 decides, so that 'auto' cannot differ between ranks
        flag = torch.tensor([dtype == torch.bfloat16], dtype=torch.int32, device=device if device.type == "cuda" else None)
        dist.broadcast(flag, 0)
        dtype = torch.bfloat16 if flag.item() else torch.float32
    log(f"model {cfg.model}: {policy.num_params() / 1e6:.1f}M parameters | task {cfg.task}: {get_task(cfg.task).description}"
        f" | compute dtype {str(dtype).removeprefix('torch.')} on {device}" + (f" x {world} processes" if world > 1 else ""))
    # the sampler and the reference model run in the compute dtype; the trained weights stay fp32
    ref_model = copy.deepcopy(policy).to(dtype).requires_grad_(False) if cfg.grpo.beta > 0 else None
    sampler = policy if dtype == torch.float32 else copy.deepcopy(policy).to(dtype).requires_grad_(False)
    train_set, eval_set = make_dataset(cfg.task, cfg.n_train, cfg.n_eval, cfg.seed)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    start, history, evals = 0, [], {}
    if cfg.resume and (out_dir / "train_state.pt").exists():
        state = torch.load(out_dir / "train_state.pt", weights_only=False, map_location=device)
        policy.load_state_dict(load_file(str(out_dir / "model.safetensors"), device=str(device)))
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        sync_sampler(sampler, policy)
        log(f"resumed from {out_dir} at step {start}")
    elif cfg.resume:
        log(f"no checkpoint in {out_dir}: starting from scratch")

    def held_out(name):
        res = evaluate(sampler, tok, eval_set, cfg.eval_samples, cfg.grpo.temperature, cfg.grpo.max_new_tokens,
                       cfg.grpo.system_prompt)
        log(f"[eval {name}] held-out greedy accuracy {res['accuracy']:.1%} (mean reward {res['reward']:.3f}, "
            f"{len(eval_set)} prompts, mean completion {res['completion_chars']:.0f} chars)"
            + (f", sampled accuracy {res['sampled_accuracy']:.1%}" if "sampled_accuracy" in res else ""))
        return res

    before = held_out("before") if rank == 0 and start == 0 and cfg.eval_before else None
    policy_pass = PolicyLogprobs(policy)
    if world > 1:
        policy_pass = torch.nn.parallel.DistributedDataParallel(policy_pass)
    jsonl = None
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        jsonl = open(out_dir / "log.jsonl", "a" if start else "w")
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        prompts, seeds = step_prompts(train_set, cfg, step, rank, world)
        batch = rollout(policy, tok, prompts, get_reward, cfg.grpo, ref_model, sampler, seeds, dtype,
                        need_old_logprobs=cfg.mu > 1)
        t_rollout = time.perf_counter() - t0
        scale = rank_loss_scale(batch.loss_mask, cfg.grpo.loss_agg, world)
        for _ in range(cfg.mu):
            loss, metrics = grpo_loss(policy, batch, cfg.grpo, dtype, logprob_fn=policy_pass)
            loss = loss * scale       # 1 process: 1.0; N: makes each rank's share add up to the whole batch's loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
            optimizer.step()
        sync_sampler(sampler, policy)
        metrics["loss"] = loss.item()
        metrics["s_per_step"] = time.perf_counter() - t0
        metrics["tok_per_s"] = batch.completion_mask.sum().item() / t_rollout
        metrics = mean_across_ranks(metrics, world) | {"step": step}
        if not all(torch.isfinite(torch.tensor(v)) for v in metrics.values()):
            raise FloatingPointError(f"non-finite metric at step {step}: {metrics}")
        history.append(metrics)
        if jsonl:
            jsonl.write(json.dumps(metrics) + "\n")
            jsonl.flush()
        if step % cfg.log_every == 0 or step == cfg.steps:
            log(format_log(step, cfg.steps, metrics))
        if rank == 0 and (step % cfg.save_every == 0 or step == cfg.steps):
            save_checkpoint(out_dir, policy, optimizer, step, history, cfg)

    if rank != 0:
        dist.destroy_process_group()
        return None
    after = held_out("after")
    if before is not None:
        log(f"\nheld-out greedy accuracy: before {before['accuracy']:.1%} -> after {after['accuracy']:.1%} "
            f"({after['accuracy'] - before['accuracy']:+.1%}); mean completion {before['completion_chars']:.0f} -> "
            f"{after['completion_chars']:.0f} chars")
        log("before:\n" + format_examples(before["examples"]))
        evals["before"] = (0, before["accuracy"])
    log("after:\n" + format_examples(after["examples"]))
    evals["after"] = (cfg.steps, after["accuracy"])
    if history:
        plot_history(history, evals, out_dir / "reward_curve.png")
        log(f"reward curve: {out_dir / 'reward_curve.png'}; log: {out_dir / 'log.jsonl'}; weights: {out_dir / 'model.safetensors'}")
    if world > 1:
        dist.destroy_process_group()
    return {"before": before, "after": after, "history": history}


@torch.no_grad()
def sync_sampler(sampler, policy):
    """Copy the updated fp32 weights into the low-precision sampling copy (no-op when they are the same)."""
    if sampler is not policy:
        for s, p in zip(sampler.parameters(), policy.parameters()):
            s.copy_(p)


def main(argv=None):
    try:
        cfg = parse_args(sys.argv[1:] if argv is None else argv)
        return train(cfg)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}" if os.environ.get("RANK", "0") == "0" else 1)
    except KeyboardInterrupt:
        sys.exit("interrupted: continue with --resume (from the last checkpoint)")


if __name__ == "__main__":
    main()
