"""The multi-process plumbing of `torchrun --nproc_per_node=N train.py`: DistributedDataParallel over N processes.

Each rank samples its own B/N prompts (train.step_prompts) and backpropagates its own batch; DDP averages the
gradients over the ranks in the backward, so every rank makes the same optimizer step. Here: the process group,
the loss normaliser of the whole step (loss_count, summed over the ranks by step_count), the metrics of the whole
step (mean_across_ranks), and the policy's pass as one module for DDP to wrap (PolicyLogprobs). With one process
each of them is the plain single-process value, so train.py calls them either way.
"""
import os

import torch
import torch.distributed as dist

from grpo import completion_logprobs


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


def local_device(device):
    """This process's own device under torchrun: GPU LOCAL_RANK (one GPU per process), or the CPU."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if device.type == "cuda" else device


def broadcast_dtype(dtype):
    """Rank 0's compute dtype (bf16 or fp32) on every rank: 'auto' may time a matmul, and must not differ."""
    flag = torch.tensor([dtype == torch.bfloat16], dtype=torch.int32, device=collective_device())
    dist.broadcast(flag, 0)
    return torch.bfloat16 if flag.item() else torch.float32


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
