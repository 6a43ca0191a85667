"""The multi-process plumbing of `torchrun --nproc_per_node=N train.py`: DistributedDataParallel
over N processes.

Each rank samples its own B/N prompts (train.step_prompts) and backpropagates its own batch; DDP
averages the gradients over the ranks in the backward, so every rank makes the same optimizer step.
Here: the process group, the metrics of the whole step (mean_across_ranks), and the policy's
training pass under DDP (DDPPolicy: its loss normaliser summed over the ranks). In a one-process run
init_distributed and mean_across_ranks return at once, and nothing else here runs.
"""
import contextlib
import os
from functools import partial

import torch
import torch.distributed as dist

from batching import backward_by_chunk, completion_logprobs
from grpo import grpo_loss


def check_world(batch_prompts, world):
    """One clear line when the prompts of a step cannot be split evenly over the processes."""
    if world < 1 or batch_prompts % world:
        raise ValueError(f"batch_prompts={batch_prompts} does not split evenly over {world} "
                         f"processes; use a multiple of {world} (a group of G samples never spans "
                         "two ranks)")


def dist_backend(device):
    """torch.distributed's backend for this device: NCCL between CUDA GPUs, gloo between CPU
    processes. There is none for Apple's MPS: gloo and NCCL take CPU and CUDA tensors only
    (torch.distributed.Backend's backend_capability), and a Mac has one GPU anyway, so several
    processes on it are refused in one line."""
    if device.type == "mps":
        raise ValueError("torchrun on mps: torch.distributed has no backend for Apple's MPS "
                         "tensors; run one process (python train.py), or torchrun with --device=cpu")
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device):
    """(rank, world size); initialises torch.distributed when launched by torchrun with more than
    one process (see dist_backend; one GPU per process: LOCAL_RANK)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return 0, 1
    backend = dist_backend(device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def collective_device():
    """Where torch.distributed's tensors live: the current GPU under NCCL, the CPU (None) under
    gloo."""
    nccl = dist.get_backend() == "nccl"
    return torch.device("cuda", torch.cuda.current_device()) if nccl else None


def local_device(device):
    """This process's own device under torchrun: GPU LOCAL_RANK (one GPU per process), or the
    CPU."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def broadcast_dtype(dtype):
    """Rank 0's compute dtype (bf16 or fp32) on every rank: 'auto' may time a matmul, and must not
    differ."""
    flag = torch.tensor([dtype == torch.bfloat16], dtype=torch.int32, device=collective_device())
    dist.broadcast(flag, 0)
    return torch.bfloat16 if flag.item() else torch.float32


def mean_across_ranks(metrics, world):
    """Metrics of the whole step: the mean over ranks (every rank has as many prompts, so for the
    per-sample metrics this is the global mean), except tok_per_s, summed (the job's throughput),
    and s_per_step, the slowest rank's. kl and clip_ratio are per-rank token averages, so their mean
    is approximate when the ranks sampled different numbers of tokens."""
    if world == 1:
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64,
                     device=collective_device())
    gathered = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(gathered, t)
    by_rank = torch.stack(gathered).cpu()                                   # (world, keys)
    reduce = {"tok_per_s": lambda x: x.sum(), "s_per_step": lambda x: x.max()}
    return {k: reduce.get(k, lambda x: x.mean())(by_rank[:, i]).item() for i, k in enumerate(keys)}


def sum_across_ranks(value):
    """A number summed over the ranks (the loss normaliser of the whole step)."""
    t = torch.tensor([value], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return t.item()


class PolicyLogprobs(torch.nn.Module):
    """completion_logprobs as one module call, so that DDP can wrap the policy's whole pass."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, prompt_ids, prompt_mask, completion_ids, group_size, completion_mask=None,
                temperature=1.0):
        out = completion_logprobs(self.model, prompt_ids, prompt_mask, completion_ids, group_size,
                                  completion_mask, temperature)
        if torch.is_grad_enabled() and not out.requires_grad:
            # no token in the mask (every group dropped): a zero that still reaches every parameter,
            # so that backward works and this rank joins DDP's gradient all-reduce
            out = out + sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
        return out


class DDPPolicy:
    """The policy's training pass under torchrun (train.optimize): PolicyLogprobs wrapped in DDP."""

    def __init__(self, policy, world):
        self.module = torch.nn.parallel.DistributedDataParallel(PolicyLogprobs(policy))
        self.world = world

    def backward(self, batch, cfg, normaliser):
        """batching.backward_by_chunk of this rank's batch. Each chunk's loss is divided by the
        normaliser of the whole step (all ranks) and scaled by world, as DDP averages the ranks'
        gradients: they add up to the whole batch's. Every rank runs every chunk (an empty one at
        zero: DDP needs each rank in each all-reduce), and the gradients are all-reduced once, after
        the last chunk."""
        sync = lambda last: contextlib.nullcontext() if last else self.module.no_sync()
        loss_of = partial(grpo_loss, cfg=cfg, normaliser=sum_across_ranks(normaliser))
        return backward_by_chunk(partial(self.module, temperature=cfg.temperature), loss_of, batch, cfg,
                                 weight=self.world, only_in_loss=False, sync=sync)
