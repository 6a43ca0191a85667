"""Train a small pretrained model with GRPO on a toy task, and evaluate it before and after.

    python train.py                                    # the default experiment
    python train.py --task=larger --group_size=4 --beta=0 --steps=50
    python train.py --resume                           # continue runs/default from its last checkpoint
                                                       # (the run folder and its checkpoints: checkpoint.py)
    torchrun --nproc_per_node=2 train.py               # the same run on 2 processes (DistributedDataParallel)

Every field of TrainConfig (and of grpo.GRPOConfig) can be set as --name=value; `python train.py --help`
lists them with their defaults.

What each logged column means:
  reward    mean reward of this step's B*G sampled completions: the weighted components (--reward_weights,
            task.WeightedReward), each one's mean after it: correct = sampled accuracy by the task's verifier,
            format = the share answering with exactly the answer ("57")
  ±         mean over groups of the reward std within a group: the signal GRPO learns from
  zero      fraction of groups whose G rewards are all equal: they get A = 0 and teach nothing
  loss      the GRPO loss (with mu = 1 its value is ~ beta*KL: the advantages of a group sum to zero)
  kl        mean per-token KL(pi || pi_ref) estimate (k1 or k3) over the generated tokens in the loss
  clip      fraction of tokens whose ratio pi/pi_old was clipped (0 when mu = 1)
  gnorm     grad_norm: the gradient's L2 norm before clipping to --grad_clip, sqrt(sum over all parameters of g^2)
            (of the last of the mu passes)
  len       mean completion length in tokens (EOS included)
  trunc     truncated: share of the completions cut off at max_new_tokens, mean_i [o_i has no EOS]
            (TRL's clipped_ratio)
  tok/s     sampled tokens per second of the rollout;  s/step: wall time of the whole step
Every --log_every steps a table shows one group: the first whose rewards differ, else the first (show.group_table).
In the run folder, completions.jsonl keeps every step's prompts and completions (show.step_record; under torchrun
those of rank 0, B / world of the B prompts), reward_curve.png is the run's picture (show.run_figure).
"""
import contextlib
import copy
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch.optim.adamw import adamw
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
import torch.distributed as dist
import torch.nn.functional as F

import checkpoint
from eval import GRADER, evaluate, format_examples
from grpo import GRPOConfig, completion_logprobs, grpo_loss, rollout, step_metrics
from load_weights import check_fits, load_model, resolve_model
from model import pick_device, pick_dtype
from show import group_table, save_run_figure, step_record
from task import WeightedReward, get_task, make_dataset, parse_weights


@dataclass
class TrainConfig:
    model: str = "smollm2"
    task: str = "larger"           # a task of task.py, or your own: path/to/task.py or path/to/data.jsonl
    reward_weights: str = "correct:1,format:1"   # components of the reward and their weights (task.py)
    judge: str = "ref"             # the judge component's model: "ref" (the frozen start) or a checkpoint folder
    steps: int = 30
    batch_prompts: int = 8         # B prompts per step (all ranks together); each gets G = group_size samples
    lr: float = 5e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    mu: int = 1                    # optimisation passes over each batch of rollouts
    n_train: int = 1000
    n_eval: int = 200
    seed: int = 0
    dtype: str = "auto"            # compute dtype: auto | fp32 | bf16 (the optimizer keeps fp32 master weights)
    device: str = "auto"           # auto (the first of cuda, mps, cpu that is there) | cuda | cuda:N | mps | cpu
    log_every: int = 1
    eval_samples: int = 0          # also report sampled accuracy with k samples per held-out prompt
    eval_before: bool = True       # evaluate the base model first (the "before" of before/after)
    save_every: int = 10
    out_dir: str = "runs/default"
    resume: bool = False
    grpo: GRPOConfig = field(default_factory=GRPOConfig)


def option_targets(cfg):
    """{option name: the config object that holds it}: TrainConfig's fields and its GRPOConfig's."""
    return ({f.name: cfg for f in fields(TrainConfig) if f.name != "grpo"}
            | {f.name: cfg.grpo for f in fields(GRPOConfig)})


def usage():
    """The module docstring and every option with its default value."""
    cfg = TrainConfig()
    return __doc__ + "\noptions (defaults):\n" + "\n".join(
        f"  --{name}={getattr(obj, name)}" for name, obj in option_targets(cfg).items())


def parse_args(argv):
    """--name=value for TrainConfig and GRPOConfig fields (bare --flag means True)."""
    cfg = TrainConfig()
    targets = option_targets(cfg)
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


# what each of TrainConfig's numeric options may be (GRPOConfig.validate checks its own)
ALLOWED = {
    "steps": (">= 1", lambda v: v >= 1), "batch_prompts": (">= 1", lambda v: v >= 1),
    "lr": ("> 0", lambda v: v > 0), "weight_decay": (">= 0", lambda v: v >= 0),
    "grad_clip": (">= 0 (0 or none: no clipping)", lambda v: v is None or v >= 0),
    "mu": (">= 1", lambda v: v >= 1), "n_train": (">= 1", lambda v: v >= 1), "n_eval": (">= 1", lambda v: v >= 1),
    "seed": (">= 0", lambda v: v >= 0), "log_every": (">= 1", lambda v: v >= 1),
    "eval_samples": (">= 0", lambda v: v >= 0), "save_every": (">= 1", lambda v: v >= 1),
}


def validate(cfg):
    """Every setting checked before anything is loaded: one line naming the option, its value and what it may
    be. Returns the device to run on."""
    defaults = option_targets(TrainConfig())
    for name, obj in option_targets(cfg).items():
        value, default = getattr(obj, name), getattr(defaults[name], name)
        if value is None and default is not None:
            raise ValueError(f"--{name}=none: {name} needs a value (default {default})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{name}={value}: {name} must be a finite number")
        if name in ALLOWED and not ALLOWED[name][1](value):
            raise ValueError(f"--{name}={value}: {name} must be {ALLOWED[name][0]}")
    cfg.grpo.validate()
    resolve_model(cfg.model)                      # a mistyped --model, before an earlier run is moved aside
    get_task(cfg.task)
    weights = parse_weights(cfg.reward_weights)
    if weights.get("judge", 0) > 0 and cfg.judge != "ref" and not Path(cfg.judge).exists():
        raise FileNotFoundError(f"--judge={cfg.judge}: no such checkpoint (use ref, the frozen starting model, or a run folder)")
    if cfg.batch_prompts > cfg.n_train:
        raise ValueError(f"--batch_prompts={cfg.batch_prompts}: more prompts per step than --n_train={cfg.n_train}")
    check_world(cfg.batch_prompts, int(os.environ.get("WORLD_SIZE", 1)))
    device = pick_device(cfg.device)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist_backend(device)                      # torchrun on a device with no backend is refused here too
    check_device_works(device, cfg.device)
    pick_dtype(cfg.dtype, device)
    if cfg.resume:
        check_resumable(cfg)
    if os.environ.get("RANK", "0") == "0":        # only rank 0 writes the run folder
        checkpoint.check_writable(cfg.out_dir)
    return device


def check_device_works(device, setting):
    """One line when torch lists a device that then fails on a first tensor (a broken driver, a GPU that another
    program holds), rather than a traceback once the model is on its way there."""
    if device.type == "cuda" and device.index is None:   # under torchrun, this process's own GPU, not GPU 0
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    try:
        torch.ones(1, device=device).add_(1).cpu()
    except Exception as e:
        raise ValueError(f"--device={setting}: {device} is there but does not work: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None


def check_resumable(cfg):
    """--resume: the settings that decide what the run computes must be the checkpoint's."""
    folder = checkpoint.current(cfg.out_dir)
    if folder is None and (Path(cfg.out_dir) / "train_state.pt").exists():
        raise ValueError(f"--resume: {cfg.out_dir} holds a checkpoint of an older tinygrpo (model.safetensors beside "
                         f"train_state.pt); resume it with that version, or start a fresh run without --resume")
    if folder is None:
        return
    differences = checkpoint.config_differences(checkpoint.read_config(folder), asdict(cfg))
    if differences:
        raise ValueError(f"--resume: settings differ from those of {folder}: {'; '.join(differences)} "
                         f"(only {', '.join(checkpoint.MAY_CHANGE_ON_RESUME)} may change; start a fresh run instead)")


# ----------------------------------------------------------------------------- distributed (torchrun)

def check_world(batch_prompts, world):
    """One clear line when the prompts of a step cannot be split evenly over the processes."""
    if world < 1 or batch_prompts % world:
        raise ValueError(f"batch_prompts={batch_prompts} does not split evenly over {world} processes; "
                         f"use a multiple of {world} (a group of G samples never spans two ranks)")


def dist_backend(device):
    """torch.distributed's backend for this device: NCCL between CUDA GPUs, gloo between CPU processes. There is
    none for Apple's MPS: gloo and NCCL take CPU and CUDA tensors only (torch.distributed.Backend's
    backend_capability), and a Mac has one GPU anyway, so several processes on it are refused in one line."""
    if device.type == "mps":
        raise ValueError("torchrun on mps: torch.distributed has no backend for Apple's MPS tensors; run one "
                         "process (python train.py), or torchrun with --device=cpu")
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device):
    """(rank, world size); initialises torch.distributed when launched by torchrun with more than one process
    (see dist_backend; one GPU per process: LOCAL_RANK)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    backend = dist_backend(device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def collective_device():
    """Where torch.distributed's tensors live: the current GPU under NCCL, the CPU (None) under gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None


def mean_across_ranks(metrics, world):
    """Metrics of the whole step: the mean over ranks (every rank has as many prompts, so for the per-sample
    metrics this is the global mean), except tok_per_s, summed (the job's throughput), and s_per_step, the
    slowest rank's. kl and clip_frac are per-rank token averages, so their mean is approximate when the
    ranks sampled different numbers of tokens."""
    if world == 1:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=collective_device())
    gathered = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(gathered, t)
    g = torch.stack(gathered).cpu()                                   # (world, keys)
    reduce = {"tok_per_s": lambda x: x.sum(), "s_per_step": lambda x: x.max()}
    return {k: reduce.get(k, lambda x: x.mean())(g[:, i]).item() for i, k in enumerate(keys)}


def loss_count(loss_mask, loss_agg):
    """What grpo.aggregate_loss divides by: tokens in the loss for token_mean, rows with a token in the loss for
    seq_mean, seq_sum and constant."""
    m = loss_mask.detach()
    return float(m.sum() if loss_agg == "token_mean" else (m.sum(1) > 0).sum())


def step_count(loss_mask, loss_agg, world):
    """loss_count of the whole step: this rank's batch, summed over the ranks."""
    if world == 1:
        return loss_count(loss_mask, loss_agg)
    n = torch.tensor([loss_count(loss_mask, loss_agg)], dtype=torch.float64, device=collective_device())
    dist.all_reduce(n)
    return n.item()


class PolicyLogprobs(torch.nn.Module):
    """completion_logprobs as one module call, so DistributedDataParallel can wrap the policy's whole pass."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, prompt_ids, prompt_mask, completion_ids, group_size, completion_mask=None):
        out = completion_logprobs(self.model, prompt_ids, prompt_mask, completion_ids, group_size, completion_mask)
        if torch.is_grad_enabled() and not out.requires_grad:
            # no token in the mask (every group dropped): a zero that still reaches every parameter, so that
            # backward works and this rank joins DDP's gradient all-reduce instead of leaving the others waiting
            out = out + sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
        return out


# ----------------------------------------------------------------------------- optimizer

class MasterAdamW:
    """torch.optim.AdamW's update on fp32 master weights of a model that computes in bf16 (or in fp32).

    The bf16 model samples, runs the forward and holds bf16 gradients; each step upcasts them a slice at a time,
    moves the fp32 master weight with torch's fused AdamW kernel (torch's plain implementation of the same update
    on a device that has none, see fused_adamw) and copies it, rounded, back into the model.
    Nothing holds fp32 gradients for the whole model, nor a second low-precision copy to sample from. An fp32
    parameter is its own master weight. Per tensor, with g the clipped gradient and t the step:
        m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
        w = w (1 - lr wd) - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    SLICE = 1 << 22                # numbers per slice of a tensor that the update upcasts at a time

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, fp32_weights=None, fused=None):
        """params: the model's parameters (bf16 or fp32); fp32_weights: their fp32 values in the same order
        (by default the params' own), from before a cast to bf16 (see cast_for_training); they become the
        master weights, not copies of them. fused: use torch's fused kernel (default: where it has one)."""
        params = list(params)
        if fp32_weights is not None and len(fp32_weights) != len(params):
            raise ValueError(f"{len(fp32_weights)} fp32 weights for {len(params)} parameters")
        pairs = [(p, w) for p, w in zip(params, fp32_weights or params) if p.requires_grad]
        for p, _ in pairs:
            if p.dtype not in (torch.float32, torch.bfloat16):
                raise ValueError(f"MasterAdamW trains fp32 or bf16 parameters, not {p.dtype}")
        self.params = [p for p, _ in pairs]
        self.master = [p if p.dtype == torch.float32 else w.detach().float() for p, w in pairs]
        self.exp_avg = [torch.zeros_like(w) for w in self.master]
        self.exp_avg_sq = [torch.zeros_like(w) for w in self.master]
        # one slice of fp32 gradient, reused: a fresh 16 MB tensor per slice costs its page faults every step
        largest = max((p.numel() for p in self.params), default=0)
        self.grad32 = torch.empty(min(largest, self.SLICE), dtype=torch.float32,
                                  device=self.params[0].device if self.params else None)
        self.lr, self.betas, self.eps, self.weight_decay, self.t = lr, betas, eps, weight_decay, 0
        self.fused = fused if fused is not None else all(fused_adamw(p.device) for p in self.params)

    @classmethod
    def slices(cls, p):
        """Slices of p's flat view, 4M numbers each: an fp32 copy of one stays small even for the 28M embedding."""
        return [slice(i, i + cls.SLICE) for i in range(0, p.numel(), cls.SLICE)]

    @torch.no_grad()
    def grad_norm(self):
        """The L2 norm of all gradients together, accumulated in fp32."""
        norms = [torch.linalg.vector_norm(p.grad.view(-1)[part], dtype=torch.float32)
                 for p in self.params if p.grad is not None for part in self.slices(p)]
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())

    @torch.no_grad()
    def step(self, max_grad_norm=None):
        """Clip the gradients to a total norm of max_grad_norm (as clip_grad_norm_), update, and free the
        gradients. Returns the norm before clipping."""
        norm = self.grad_norm()
        scale = (max_grad_norm / (norm + 1e-6)).clamp(max=1.0) if max_grad_norm else None
        self.t += 1
        for p, w, m, v in zip(self.params, self.master, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            for part in self.slices(p):
                grad = p.grad.view(-1)[part]
                g = self.grad32[:grad.numel()].copy_(grad)
                if scale is not None:
                    g.mul_(scale)
                # torch's own AdamW update (the formula above), in one fused pass where it can; it counts step t
                # from t - 1, a tensor on the weights' device for the fused kernel, on the CPU for the plain one
                step = torch.tensor(float(self.t - 1), device=w.device if self.fused else "cpu")
                adamw([w.view(-1)[part]], [g], [m.view(-1)[part]], [v.view(-1)[part]], [], [step], fused=self.fused,
                      amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr,
                      weight_decay=self.weight_decay, eps=self.eps, maximize=False)
            p.grad = None
            if p is not w:
                p.copy_(w)
        return norm

    def master_state_dict(self, model):
        """The fp32 master weights under the model's parameter names (what a checkpoint saves)."""
        master = {id(p): w for p, w in zip(self.params, self.master)}
        return {name: master.get(id(p), p).detach().float() for name, p in model.named_parameters()}

    def state_dict(self):
        return {"t": self.t, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state):
        self.t = state["t"]
        for mine, saved in ((self.exp_avg, state["exp_avg"]), (self.exp_avg_sq, state["exp_avg_sq"])):
            for a, b in zip(mine, saved):
                a.copy_(b)


def fused_adamw(device):
    """Whether torch has a fused AdamW kernel for this device (torch 2.13: cpu, cuda and mps among others); where
    it has none, one line says that the update runs torch's plain implementation (the same formula, slower)."""
    if torch.device(device).type in _get_fused_kernels_supported_devices():
        return True
    print(f"note: torch {torch.__version__} has no fused AdamW kernel for {torch.device(device).type}; "
          f"AdamW runs its plain implementation (the same update, slower)", file=sys.stderr)
    return False


def cast_for_training(policy, dtype, optimizer_class=None, **adamw_args):
    """Cast the policy to the compute dtype (GPT.to_compute_dtype) and return the MasterAdamW (or the subclass
    given) that keeps its fp32 weights: the policy samples and trains in dtype, the optimizer steps in fp32."""
    fp32_weights = [p.data for p in policy.parameters()]      # the cast gives the params new tensors
    policy.to_compute_dtype(dtype)
    return (optimizer_class or MasterAdamW)(policy.parameters(), fp32_weights=fp32_weights, **adamw_args)


def optimize(policy_pass, optimizer, batch, cfg, world=1):
    """cfg.mu passes over one batch of rollouts; each backpropagates the batch part by part (grpo.Rollout.parts)
    and then makes one clipped AdamW step. Returns (loss, kl, clipped, grad_norm) of the last pass: the first
    three for step_metrics, grad_norm the gradient's norm before clipping.

    Part k's loss L_k is normalised by its own count n_k (loss_count); backpropagating L_k * world * n_k / n,
    with n the count of the whole step (all parts, all ranks), makes the gradients add up to those of the whole
    batch's loss, DDP's average over the ranks included. A part with nothing in the loss (dropped groups) is
    skipped on one process; with DDP every rank must run every backward, so it runs there at weight 0.
    """
    g = cfg.grpo
    n = step_count(batch.loss_mask, g.loss_agg, world)
    T = batch.completion_ids.size(1)
    parts = list(batch.parts(g.prompts_per_pass))
    for _ in range(cfg.mu):
        loss, kls, clips = 0.0, [], []
        for k, part in enumerate(parts):
            n_k = loss_count(part.loss_mask, g.loss_agg)
            rows = part.completion_ids.size(0)
            if n_k == 0 and world == 1:
                kls.append(batch.rewards.new_zeros(rows, T))
                clips.append(batch.rewards.new_zeros(rows, T, dtype=torch.bool))
                continue
            sync = world == 1 or k == len(parts) - 1
            with contextlib.nullcontext() if sync else policy_pass.no_sync():     # all-reduce once, at the end
                part_loss, kl, clipped = grpo_loss(None, part, g, logprob_fn=policy_pass)
                share = world * n_k / n if n > 0 else 0.0
                (part_loss * share).backward()
            loss += part_loss.item() * share
            pad = (0, T - clipped.size(1))
            kls.append(F.pad(kl.detach(), pad) if kl is not None else batch.rewards.new_zeros(rows, T))
            clips.append(F.pad(clipped, pad))
        grad_norm = optimizer.step(cfg.grad_clip)
    return loss, torch.cat(kls) if g.beta > 0 else None, torch.cat(clips), float(grad_norm)


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
    """checkpoint.save of this step; a failed save (disk full, read-only) stops the run in one line, with the
    last good checkpoint still current."""
    weights = {k: v.contiguous() for k, v in optimizer.master_state_dict(policy).items()}
    state = {"optimizer": optimizer.state_dict(), "step": step, "history": history, "config": asdict(cfg)}
    try:
        checkpoint.save(out_dir, weights, state, asdict(cfg))
    except OSError as e:
        last = checkpoint.current(out_dir)
        raise ValueError(f"could not save the checkpoint of step {step} in {out_dir} ({e.strerror or e}); "
                         + (f"the last good one, {last}, is intact: free space and continue with --resume"
                            if last else "there is no earlier checkpoint")) from None


def format_log(step, steps, m):
    parts = "".join(f" {k.removeprefix('reward/')} {v:.2f}" for k, v in m.items() if k.startswith("reward/"))
    return (f"step {step:4d}/{steps} | reward {m['reward']:.3f} ±{m['reward_std']:.2f}{parts} zero {m['frac_reward_zero_std']:.2f}"
            f" | loss {m['loss']:+.4f} kl {m['kl']:.4f} clip {m['clip_frac']:.2f} gnorm {m['grad_norm']:.2f}"
            f" | len {m['completion_len']:4.1f} trunc {m['truncated']:.2f}"
            f" | {m['tok_per_s']:5.0f} tok/s {m['s_per_step']:5.1f} s/step")


def make_reward(cfg, weights, ref_model, policy, tok, device):
    """The run's reward function; with a judge component, the judge model it asks (judge.py)."""
    if weights.get("judge", 0) <= 0:
        return WeightedReward(weights)
    from eval import load_policy
    from judge import make_judge
    if cfg.judge == "ref":
        judge_model = ref_model if ref_model is not None else copy.deepcopy(policy).requires_grad_(False)
    else:
        judge_model = load_policy(cfg.model, cfg.judge, device)[0].requires_grad_(False)
    return WeightedReward(weights, judge=make_judge(judge_model, tok))


def train(cfg: TrainConfig):
    device = validate(cfg)
    reward_weights = parse_weights(cfg.reward_weights)
    rank, world = init_distributed(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    log = print if rank == 0 else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    resume_from = checkpoint.current(out_dir) if cfg.resume else None
    if rank == 0:
        checkpoint.clean_leftovers(out_dir)       # what killed saves left
        moved = checkpoint.set_aside(out_dir) if resume_from is None else None   # a fresh run keeps an earlier one
        if moved:
            log(f"{out_dir} held an earlier run: moved it to {moved} (--resume continues a run instead)")

    dtype = pick_dtype(cfg.dtype, device)
    if world > 1:                 # rank 0 decides, so that 'auto' cannot differ between ranks
        flag = torch.tensor([dtype == torch.bfloat16], dtype=torch.int32, device=collective_device())
        dist.broadcast(flag, 0)
        dtype = torch.bfloat16 if flag.item() else torch.float32
    policy, tok = load_model(cfg.model, device)
    log(f"model {cfg.model}: {policy.num_params() / 1e6:.1f}M parameters | task {cfg.task}: {get_task(cfg.task).description}"
        f" | compute dtype {str(dtype).removeprefix('torch.')}{' (auto)' if cfg.dtype == 'auto' else ''} on {device}"
        + (" (auto: the first of cuda, mps, cpu)" if cfg.device == "auto" else "")
        + (f" x {world} processes" if world > 1 else ""))
    # pi_ref: the starting weights, frozen, in the compute dtype (and not needed at all when beta = 0)
    ref_model = copy.deepcopy(policy).to_compute_dtype(dtype).requires_grad_(False) if cfg.grpo.beta > 0 else None
    train_set, eval_set = make_dataset(cfg.task, cfg.n_train, cfg.n_eval, cfg.seed)
    reward_fn = make_reward(cfg, reward_weights, ref_model, policy, tok, device)

    start, history, evals, state = 0, [], {}, None
    if resume_from:
        master, state = checkpoint.load(resume_from, device)          # fp32 masters and the optimizer, checked
        policy.load_state_dict(check_fits(policy, master, resume_from / "model.safetensors"))
        start, history = state["step"], state["history"]
        if rank == 0:
            checkpoint.rewrite_log(out_dir, history)                  # steps after the checkpoint run again
            checkpoint.cut_after(out_dir / "completions.jsonl", start)
        log(f"resumed from {resume_from} at step {start}")
    elif cfg.resume:
        log(f"no checkpoint in {out_dir}: starting from scratch")
    # the policy samples and trains in the compute dtype; the optimizer keeps the fp32 weights
    optimizer = cast_for_training(policy, dtype, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])

    def held_out(name):
        log(f"[eval {name}] {len(eval_set)} held-out prompts")
        res = evaluate(policy, tok, eval_set, cfg.eval_samples, cfg.grpo.temperature, cfg.grpo.max_new_tokens,
                       cfg.grpo.system_prompt, reward_fn=reward_fn, progress=log)
        log(f"[eval {name}] held-out greedy accuracy {res['accuracy']:.1%} (graded by {GRADER}), exact format "
            f"{res['format']:.1%}, mean reward {res['reward']:.3f}, mean completion {res['completion_chars']:.0f} chars"
            + (f", sampled accuracy {res['sampled_accuracy']:.1%}" if "sampled_accuracy" in res else ""))
        return res

    before = held_out("before") if rank == 0 and start == 0 and cfg.eval_before else None
    policy_pass = PolicyLogprobs(policy)
    if world > 1:
        policy_pass = torch.nn.parallel.DistributedDataParallel(policy_pass)
    jsonl = samples = None
    if rank == 0:                 # completions of rank 0's prompts only: the others' would cost a gather each step
        out_dir.mkdir(parents=True, exist_ok=True)
        jsonl = open(out_dir / "log.jsonl", "a" if start else "w")
        samples = open(out_dir / "completions.jsonl", "a" if start else "w")
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        prompts, seeds = step_prompts(train_set, cfg, step, rank, world)
        batch = rollout(policy, tok, prompts, reward_fn, cfg.grpo, ref_model, seeds, need_old_logprobs=cfg.mu > 1)
        loss, kl, clipped, grad_norm = optimize(policy_pass, optimizer, batch, cfg, world)
        metrics = step_metrics(batch, kl, clipped, cfg.grpo.group_size)
        metrics["loss"], metrics["grad_norm"] = loss, grad_norm
        metrics["s_per_step"] = time.perf_counter() - t0
        metrics["tok_per_s"] = batch.completion_mask.sum().item() / batch.seconds["sample"]
        metrics = mean_across_ranks(metrics, world) | {"step": step}
        if not all(torch.isfinite(torch.tensor(v)) for v in metrics.values()):
            raise FloatingPointError(f"non-finite metric at step {step}: {metrics}")
        history.append(metrics)
        record = step_record(step, prompts, batch, cfg.grpo.group_size)       # this rank's prompts
        if jsonl:
            jsonl.write(json.dumps(metrics) + "\n")
            jsonl.flush()
            samples.write(json.dumps(record, default=str) + "\n")     # default: an answer of a custom type
            samples.flush()
        if step % cfg.log_every == 0 or step == cfg.steps:
            log(format_log(step, cfg.steps, metrics))
            log(group_table(record))
        if rank == 0 and (step % cfg.save_every == 0 or step == cfg.steps):
            save_checkpoint(out_dir, policy, optimizer, step, history, cfg)

    if rank != 0:
        dist.destroy_process_group()
        return None
    after = held_out("after")
    if before is not None:
        log(f"\nheld-out greedy accuracy ({GRADER}): before {before['accuracy']:.1%} -> after {after['accuracy']:.1%} "
            f"({after['accuracy'] - before['accuracy']:+.1%}); exact format {before['format']:.1%} -> "
            f"{after['format']:.1%}; mean completion {before['completion_chars']:.0f} -> {after['completion_chars']:.0f} chars")
        log("before:\n" + format_examples(before["examples"]))
        evals["before"] = (0, before["accuracy"])
    log("after:\n" + format_examples(after["examples"]))
    evals["after"] = (cfg.steps, after["accuracy"])
    if history:
        save_run_figure(history, evals, out_dir / "reward_curve.png")
        log(f"reward curve: {out_dir / 'reward_curve.png'}; log: {out_dir / 'log.jsonl'}; completions: "
            f"{out_dir / 'completions.jsonl'}; weights: "
            f"{checkpoint.current(out_dir) / 'model.safetensors'}")
    if world > 1:
        dist.destroy_process_group()
    return {"before": before, "after": after, "history": history}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(usage())
        return None
    cfg = None
    try:
        cfg = parse_args(argv)
        return train(cfg)
    except ValueError as e:                     # bad input, or a save that failed: one line, no traceback
        sys.exit(f"error: {e}" if os.environ.get("RANK", "0") == "0" else 1)
    except OSError as e:                        # a missing file, or a full or read-only disk (log.jsonl, the plot)
        last = checkpoint.current(cfg.out_dir) if cfg and Path(cfg.out_dir).is_dir() else None
        sys.exit((f"error: {e}" + (f"; the last checkpoint, {last}, is intact: continue with --resume" if last else ""))
                 if os.environ.get("RANK", "0") == "0" else 1)
    except KeyboardInterrupt:
        last = checkpoint.current(cfg.out_dir) if cfg else None
        print("interrupted: " + (f"continue from {last} with --resume" if last else "no checkpoint saved yet"),
              file=sys.stderr)
        sys.exit(130)                           # the shell's status for a run stopped by Ctrl-C (128 + SIGINT)


if __name__ == "__main__":
    main()
