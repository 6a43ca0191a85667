"""Train a small pretrained model with GRPO on a toy task, and evaluate it before and after.

    python train.py                                    # the default experiment
    python train.py --task=larger --group_size=4 --beta=0 --steps=50
    python train.py --resume                           # continue runs/default from its last checkpoint
                                                       # (the run folder and its checkpoints: checkpoint.py)
    torchrun --nproc_per_node=2 train.py               # the same run on 2 processes (DistributedDataParallel)

Every field of TrainConfig (and of grpo.GRPOConfig) can be set as --name=value; `python train.py --help`
lists them with their defaults.

One step: step_prompts (B prompts) -> grpo.rollout (G completions each, rewards, advantages) -> optimize (the GRPO
loss, backward, one AdamW step on fp32 master weights: optim.py) -> log -> checkpoint. Around it: the command line
(configurator.py), the device and dtype (device.py) and, under torchrun, the processes (ddp.py).

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
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

import checkpoint
from configurator import apply_args, usage, validate
from ddp import (PolicyLogprobs, broadcast_dtype, init_distributed, local_device, loss_count, mean_across_ranks,
                 step_count)
from device import pick_dtype
from eval import GRADER, evaluate, format_examples
from grpo import GRPOConfig, grpo_loss, rollout, step_metrics
from load_weights import check_fits, load_model
from optim import cast_for_training
from report import write_report
from show import group_table, save_run_figure, step_record
from task import WeightedReward, get_task, make_dataset, parse_weights


@dataclass
class TrainConfig:
    # what to train, on what
    model: str = "smollm2"         # smollm2, gpt2, distilgpt2, a .gguf file or a GPT-2 folder (load_weights.py)
    task: str = "larger"           # a task of task.py, or your own: path/to/task.py or path/to/data.jsonl
    reward_weights: str = "correct:1,format:1"   # components of the reward and their weights (task.py)
    judge: str = "ref"             # the judge component's model: "ref" (the frozen start) or a checkpoint folder
    # optimisation
    steps: int = 30                # GRPO steps: one rollout of B*G completions, then mu optimizer steps on it
    batch_prompts: int = 8         # B prompts per step (all ranks together); each gets G = group_size samples
    lr: float = 5e-5               # AdamW learning rate (optim.py)
    weight_decay: float = 0.0      # AdamW's decoupled weight decay: w -= lr * wd * w each step
    grad_clip: float = 1.0         # clip the total gradient norm to this (0 or none: no clipping)
    mu: int = 1                    # optimisation passes over each batch of rollouts
    # data
    n_train: int = 1000            # training prompts, none of them a held-out one (task.make_dataset)
    n_eval: int = 200              # held-out prompts for the evaluations before and after
    seed: int = 0                  # seeds the train/eval split, each step's prompts and every sample
    # where and in what precision
    dtype: str = "auto"            # compute dtype: auto | fp32 | bf16 (the optimizer keeps fp32 master weights)
    device: str = "auto"           # auto (the first of cuda, mps, cpu that is there) | cuda | cuda:N | mps | cpu
    # logging, evaluation, checkpoints
    log_every: int = 1             # print a step line every this many steps (log.jsonl gets every step)
    eval_samples: int = 0          # also report sampled accuracy with k samples per held-out prompt
    eval_before: bool = True       # evaluate the base model first (the "before" of before/after)
    save_every: int = 10           # write a checkpoint every this many steps, and after the last
    out_dir: str = "runs/default"  # the run folder: log.jsonl, reward_curve.png, checkpoints (checkpoint.py)
    resume: bool = False           # continue out_dir from its last checkpoint
    # the algorithm: group_size, max_new_tokens, beta, clip_eps, loss_agg, ... (grpo.GRPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)


def parse_args(argv):
    """A TrainConfig with the --name=value settings of argv (configurator.py)."""
    return apply_args(argv, TrainConfig())


# ----------------------------------------------------------------------------- loss, backward, optimizer step

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
    if world > 1:
        device = local_device(device)             # one GPU per process
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
        dtype = broadcast_dtype(dtype)
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
        log(f"report: {write_report(out_dir, {'before': before, 'after': after, 'n_eval': len(eval_set)})}")
    if world > 1:
        dist.destroy_process_group()
    return {"before": before, "after": after, "history": history}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(usage(__doc__, TrainConfig()))
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
