"""Train a small pretrained model with GRPO on a toy task, and evaluate it before and after.

    python train.py                          # the default experiment
    python train.py --task=larger --group_size=4 --beta=0 --steps=50
    python train.py --resume                 # continue runs/default from its last checkpoint
                                             # (the run folder and its checkpoints: checkpoint.py)
    torchrun --nproc_per_node=2 train.py     # the same run on 2 processes (DistributedDataParallel)

Every field of TrainConfig (and of grpo.GRPOConfig) can be set as --name=value; `python train.py
--help` lists them with their defaults.

One step: step_prompts (B prompts) -> grpo.rollout (G completions each, rewards, advantages) ->
optimize (the GRPO loss, backward, one AdamW step on fp32 master weights: optim.py) -> log ->
checkpoint. Around it: the command line (configurator.py), the device and dtype (device.py) and,
under torchrun, the processes (ddp.py).

Each step's line prints every number of log.jsonl under its key (show.step_metrics):
  reward                mean reward of the step's B*G sampled completions (task.WeightedReward)
  reward/correct ...    each component's mean: correct = sampled accuracy by the task's verifier,
                        format = the share answering with exactly the answer ("57")
  reward_std            mean over groups of the reward std within a group: what GRPO learns from
  frac_reward_zero_std  share of groups whose G rewards are all equal: A = 0, they teach nothing
  reward_drawn          with --oversample: mean reward of all k*B groups drawn (the rest: of the B kept)
  loss                  the GRPO loss (with mu = 1 it is ~ beta*KL: a group's advantages sum to 0)
  kl                    mean per-token KL(pi || pi_ref) over the generated tokens in the loss: k3 =
                        r - 1 - log r with r = pi_ref / pi (or k1 = log pi - log pi_ref)
  clip_ratio            share of those tokens whose ratio pi/pi_old left [1 - eps, 1 + eps] and was
                        clipped (0 when mu = 1)
  grad_norm             the gradient's L2 norm before clipping to --grad_clip, sqrt(sum of grad^2
                        over all parameters) (of the last of the mu passes)
  completion_length     mean completion length in tokens (EOS included)
  truncated             share of completions cut off at max_new_tokens, mean_i [o_i has no EOS]
                        (TRL's clipped_ratio)
  tok_per_s, s_per_step sampled tokens per second of the rollout; wall time of the whole step
Every --log_every steps a table shows one group: the first whose rewards differ, else the first
(show.group_table). In the run folder, completions.jsonl keeps every step's prompts and completions
(show.step_record; under torchrun those of rank 0, B / world of the B prompts), reward_curve.png is
the run's picture (show.run_figure).
"""
import copy
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

import checkpoint
import fused
from batching import backward_by_chunk
from configurator import apply_args, recorded_config, usage, validate
from ddp import DDPPolicy, broadcast_dtype, init_distributed, local_device, mean_across_ranks
from device import auto_dtype, pick_dtype, repeatable_kernels
from eval import GRADER, evaluate, paraphrased, report_run
from grpo import GRPOConfig, completion_logprobs, grpo_loss, loss_normaliser, rollout
from judge import run_judge
from load_weights import check_fits, keep_in_file, load_model
from optim import cast_for_training
from show import format_log, group_table, renamed, step_metrics, step_record
from task import WeightedReward, get_task, make_dataset, parse_weights


@dataclass
class TrainConfig:
    # what to train, on what
    model: str = "smollm2"         # smollm2, gpt2, distilgpt2, .gguf, GPT-2 folder (load_weights)
    task: str = "larger"           # a task of task.py, or your own: a .py or .jsonl file
    reward_weights: str = "correct:1,format:1,short:1"   # reward components and weights (task.py)
    judge: str = "ref"             # judge model: "ref" (the frozen start) or a checkpoint
    # optimisation
    steps: int = 40                # GRPO steps: a rollout of B*G completions, mu AdamW steps
    batch_prompts: int = 8         # B prompts per step (all ranks), G = group_size samples each
    lr: float = 1e-5               # AdamW learning rate (optim.py)
    lr_schedule: str = "constant"  # constant | linear: lr * (steps - step + 1) / steps, down to lr/steps at the end
    weight_decay: float = 0.0      # AdamW's decoupled weight decay: w -= lr * wd * w each step
    grad_clip: float = 1.0         # clip the total gradient norm to this (0 or none: no clipping)
    mu: int = 1                    # optimisation passes over each batch of rollouts
    adam_moments: str = "bf16"     # AdamW's m and v kept in bf16 (0.5 GiB less; optim.py) or fp32
    heap: str = "auto"             # glibc heap: auto (map: fp32 on a CPU, else keep) | keep | map | glibc (fused.py)
    # data
    n_train: int = 1000            # training prompts, none of them held out (task.make_dataset)
    n_eval: int = 200              # held-out prompts for the evaluations before and after
    seed: int = 0                  # seeds the split, each step's prompts and every sample
    format_example: bool = True    # a solved question of no task before each question (task.FORMAT_EXAMPLE)
    # where and in what precision
    dtype: str = "auto"            # compute dtype: auto | fp32 | bf16 (AdamW keeps fp32 weights)
    device: str = "auto"           # auto (first of cuda, mps, cpu) | cuda | cuda:N | mps | cpu
    # logging, evaluation, checkpoints
    log_every: int = 1             # print every this many steps (log.jsonl: every step)
    eval_samples: int = 0          # also report sampled accuracy with k samples per held-out prompt
    eval_before: bool = True       # evaluate the base model first (the "before" of before/after)
    eval_every: int = 5            # every this many steps (0: never), greedy accuracy on the first
    eval_subset: int = 50          # eval_subset held-out prompts, logged as eval_accuracy
    eval_max_new_tokens: int = 32  # the evaluations' reply budget (training's is max_new_tokens)
    eval_paraphrase: bool = True   # held-out questions reworded, at the end (eval.paraphrased)
    save_every: int = 20           # write a checkpoint every this many steps, and after the last (each ~2 s)
    out_dir: str = "runs/default"  # the run folder: log.jsonl, figure, checkpoints (checkpoint.py)
    resume: bool = False           # continue out_dir from its last checkpoint
    # the algorithm: group_size, max_new_tokens, beta, clip_eps, loss_agg, ... (grpo.GRPOConfig, the
    # paper's defaults); the recipe changes three: 16 new tokens, advantages not divided by the std,
    # temperature 1.2 (more varied groups: README's seeds table)
    grpo: GRPOConfig = field(
        default_factory=lambda: GRPOConfig(max_new_tokens=16, scale_rewards=False, temperature=1.2))


def parse_args(argv):
    """A TrainConfig with the --name=value settings of argv (configurator.py)."""
    return apply_args(argv, TrainConfig())


# ----------------------------------------------------------------------------- prompts and reward
def step_prompts(train_set, cfg, step, rank, world):
    """This rank's prompts for a step (k*B with --oversample=k): the same global draw on every rank
    (seeded by step), then a slice. Sampling seeds follow the global prompt index: N ranks sample as 1 does."""
    rng = random.Random(cfg.seed * 1_000_003 + step)
    idx = rng.sample(range(len(train_set)), cfg.batch_prompts * cfg.grpo.oversample)
    per_rank = len(idx) // world
    mine = range(rank * per_rank, (rank + 1) * per_rank)
    seeds = [cfg.seed * 7_919 + step * 100_003 + i for i in mine]
    return [train_set[idx[i]] for i in mine], seeds


def make_reward(cfg, weights, ref_model, policy, tok, device):
    """The run's reward (task.WeightedReward); with a judge component, the judge model it asks."""
    judge = run_judge(cfg, ref_model, policy, tok, device) if weights.get("judge", 0) > 0 else None
    return WeightedReward(weights, judge=judge)


# ----------------------------------------------------------------------------- loss, backward, step
def optimize(policy, optimizer, batch, cfg, ddp_policy=None):
    """cfg.mu passes over a batch of rollouts, each a backward chunk by chunk
    (batching.backward_by_chunk) and a clipped AdamW step (optim.py). Returns (loss, kl (N, T) or None,
    clipped (N, T), grad_norm) of the last pass. ddp_policy: under torchrun, ddp.DDPPolicy."""
    grpo_cfg = cfg.grpo
    normaliser = loss_normaliser(batch.loss_mask, grpo_cfg.loss_agg, grpo_cfg.max_new_tokens)
    policy_logprobs = partial(completion_logprobs, policy, temperature=grpo_cfg.temperature)
    loss_of = partial(grpo_loss, cfg=grpo_cfg, normaliser=normaliser)    # each chunk's share of the step's loss
    for _ in range(cfg.mu):
        if ddp_policy is None:                       # one process
            loss, kl, clipped = backward_by_chunk(policy_logprobs, loss_of, batch, grpo_cfg)
        else:                                        # torchrun
            loss, kl, clipped = ddp_policy.backward(batch, grpo_cfg, normaliser)
        grad_norm = optimizer.step(cfg.grad_clip)
    return loss, kl, clipped, float(grad_norm)


# ----------------------------------------------------------------------------- the loop
def train(cfg: TrainConfig):
    """Every setting checked (configurator.validate), then the run in its run folder, which rank 0
    holds locked until the run ends (checkpoint.open_run: made, marked, cleaned; an earlier run
    moved aside first)."""
    fused.use_huge_pages()          # before the first large tensor: fewer page faults a step (fused.py)
    device = validate(cfg)
    if os.environ.get("RANK", "0") != "0":
        return run_training(cfg, device)
    with checkpoint.open_run(cfg.out_dir, cfg.resume) as moved:
        if moved:
            print(f"{cfg.out_dir} held an earlier run: moved it to {moved} "
                  "(--resume continues a run instead)")
        return run_training(cfg, device)


def run_training(cfg, device):
    reward_weights = parse_weights(cfg.reward_weights)
    rank, world = init_distributed(device)
    if world > 1:
        device = local_device(device)             # one GPU per process
    log = print if rank == 0 else (lambda *a, **k: None)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir)
    resume_from = checkpoint.current(out_dir) if cfg.resume else None
    config = recorded_config(cfg)         # what the checkpoints record (with a task file's sha256)

    dtype = pick_dtype(cfg.dtype, device)
    rule = f" (auto: {auto_dtype(device)[1]})" if cfg.dtype == "auto" else ""
    if world > 1:                 # rank 0 decides, so that 'auto' cannot differ between ranks
        dtype = broadcast_dtype(dtype)
    repeatable_kernels(device, dtype)     # fp32 on a CPU: the same command, the same bits (device.py)
    fused.use_heap(cfg.heap, dtype, device)     # bf16: freed pages kept for the next step; fp32: given back
    log(f"compute dtype {str(dtype).removeprefix('torch.')}{rule} on {device}"
        + (" (auto: the first of cuda, mps, cpu)" if cfg.device == "auto" else "")
        + (f"; system prompt {cfg.grpo.system_prompt!r}" if cfg.grpo.system_prompt else ""))
    policy, tok = load_model(cfg.model, device)
    log(f"model {cfg.model}: {policy.num_params() / 1e6:.1f}M parameters | task {cfg.task}: "
        f"{get_task(cfg.task).description}" + (f" | {world} processes" if world > 1 else ""))
    # pi_ref: the starting weights, frozen, in the compute dtype (not needed at all when beta = 0);
    # kept in a file and out of memory between its passes (load_weights.keep_in_file)
    ref_model = None
    if cfg.grpo.beta > 0:
        ref_model = copy.deepcopy(policy).to_compute_dtype(dtype).requires_grad_(False)
        ref_model = keep_in_file(ref_model)
    train_set, eval_set = make_dataset(cfg.task, cfg.n_train, cfg.n_eval, cfg.seed, cfg.format_example)
    if cfg.format_example:
        log(f"before each question, at train and at eval, the turn {train_set[0].format_example}")
    reward_fn = make_reward(cfg, reward_weights, ref_model, policy, tok, device)

    start, history, state = 0, [], None
    if resume_from:               # fp32 masters and the optimizer, checked
        master, state = checkpoint.load(resume_from, device)
        policy.load_state_dict(check_fits(policy, master, resume_from / "model.safetensors"))
        start, history = state["step"], renamed(state["history"])
        if rank == 0:             # steps after the checkpoint run again
            checkpoint.rewrite_log(out_dir, history)
            checkpoint.cut_after(out_dir / "completions.jsonl", start)
        log(f"resumed from {resume_from} at step {start}")
    elif cfg.resume:
        log(f"no checkpoint in {out_dir}: starting from scratch")
    # the policy samples and trains in the compute dtype; the optimizer keeps the fp32 weights
    optimizer = cast_for_training(policy, dtype, lr=cfg.lr, weight_decay=cfg.weight_decay, moments=cfg.adam_moments)
    fused.apply(policy)   # its training pass keeps less memory: fused.py's written-out backwards
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])

    def held_out(name, prompts=eval_set, what="held-out"):
        log(f"[eval {name}] {len(prompts)} {what} prompts")
        res = evaluate(policy, tok, prompts, cfg.eval_samples, cfg.grpo.temperature,
                       cfg.eval_max_new_tokens, cfg.grpo.system_prompt, reward_fn=reward_fn,
                       progress=log)
        sampled = (f", sampled accuracy {res['sampled_accuracy']:.1%}"
                   if "sampled_accuracy" in res else "")
        log(f"[eval {name}] {what} greedy accuracy {res['accuracy']:.1%} (graded by {GRADER}), "
            f"exact format {res['format']:.1%}, mean reward {res['reward']:.3f}, mean completion "
            f"{res['completion_chars']:.0f} chars{sampled}")
        return res

    before = held_out("before") if rank == 0 and start == 0 and cfg.eval_before else None
    ddp_policy = DDPPolicy(policy, world) if world > 1 else None
    jsonl = samples = None
    if rank == 0:     # completions of rank 0's prompts only: the others' would cost a gather a step
        out_dir.mkdir(parents=True, exist_ok=True)
        jsonl = open(out_dir / "log.jsonl", "a" if start else "w")
        samples = open(out_dir / "completions.jsonl", "a" if start else "w")
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        prompts, seeds = step_prompts(train_set, cfg, step, rank, world)
        batch = rollout(policy, tok, prompts, reward_fn, cfg.grpo, ref_model, seeds,
                        need_old_logprobs=cfg.mu > 1)
        if batch.kept is not None:                    # --oversample: the B groups kept of those drawn
            prompts = [prompts[i] for i in batch.kept]
        optimizer.lr = cfg.lr * ((cfg.steps - step + 1) / cfg.steps if cfg.lr_schedule == "linear" else 1)
        loss, kl, clipped, grad_norm = optimize(policy, optimizer, batch, cfg, ddp_policy)
        metrics = step_metrics(batch, kl, clipped, cfg.grpo.group_size, tok.stop_ids)
        metrics["loss"], metrics["grad_norm"] = loss, grad_norm
        metrics["s_per_step"] = time.perf_counter() - t0
        metrics["tok_per_s"] = (batch.drawn or batch).completion_mask.sum().item() / batch.seconds["sample"]
        metrics = mean_across_ranks(metrics, world) | {"step": step}
        if rank == 0 and cfg.eval_every > 0 and step % cfg.eval_every == 0:
            # a small, greedy check on the way, after the ranks' mean: only rank 0 evaluates
            metrics["eval_accuracy"] = evaluate(
                policy, tok, eval_set[:cfg.eval_subset], 0, 0.0, cfg.eval_max_new_tokens,
                cfg.grpo.system_prompt, reward_fn=reward_fn)["accuracy"]
        # nothing non-finite in the metrics or the weights
        checkpoint.check_step(step, metrics, optimizer.master_state_dict(policy), out_dir)
        history.append(metrics)
        record = step_record(step, prompts, batch, cfg.grpo.group_size, tok.stop_ids,  # this rank's
                             tok, cfg.grpo, kl)
        if jsonl:
            jsonl.write(json.dumps(metrics) + "\n")
            jsonl.flush()
            samples.write(json.dumps(record, default=str) + "\n")  # default: a custom answer type
            samples.flush()
        if step % cfg.log_every == 0 or step == cfg.steps:
            log(format_log(step, cfg.steps, metrics))
            log(group_table(record))
        if rank == 0 and (step % cfg.save_every == 0 or step == cfg.steps):
            checkpoint.save_step(out_dir, policy, optimizer, step, history, config)

    if rank != 0:
        dist.destroy_process_group()
        return None
    after = held_out("after")
    reworded = paraphrased(eval_set) if cfg.eval_paraphrase else []
    paraphrase = held_out("after, paraphrased", reworded, "reworded held-out") if reworded else None
    report_run(before, after, paraphrase, history, cfg.steps, len(eval_set), out_dir, log)
    if world > 1:
        dist.destroy_process_group()
    return {"before": before, "after": after, "paraphrase": paraphrase, "history": history}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "-h" in argv or "--help" in argv:
        print(usage(__doc__, TrainConfig()))
        return None
    cfg = None
    # bad input, a failed save, a full disk, Ctrl-C or SIGTERM: one line naming the last checkpoint
    with checkpoint.exit_in_one_line(lambda: cfg.out_dir if cfg else None):
        cfg = parse_args(argv)
        return train(cfg)


if __name__ == "__main__":
    main()
