"""GRPO (Group Relative Policy Optimization, Shao et al. 2024, DeepSeekMath) from scratch.

For each of B prompts q, sample G completions o_1..o_G from the policy, score them with the task's
reward r_i, and push up the log-probability of completions that beat their group's average:

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)              group-relative advantage
    ratio_it = pi(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)          (= 1 in value when mu = 1)
    L_it = -min(ratio_it A_i, clip(ratio_it, 1 - eps_clip, 1 + eps_clip) A_i) + beta KL_it
    loss = aggregate(L_it over the generated tokens)

With mu = 1 pass per batch, pi_old = pi and the gradient of L_it is exactly -A_i grad log pi(o_it):
the assignment's `-A * log pi(y|x)`. KL_it estimates KL(pi || pi_ref) per token against the frozen
starting model pi_ref, in the loss (as in the paper) or subtracted from the reward before
normalising. After the math: grpo_step, one step written out (the notebook runs it), then the
batched path that train.py runs, tested equal to it.
Shapes: B prompts, G samples each, N = B*G rows (row i*G + j: sample j of prompt i), T new tokens.
"""
import time
from dataclasses import dataclass, field, replace

import torch

from batching import completion_logprobs, logprobs_by_chunk, select_groups
from engine import generate, left_pad


@dataclass
class GRPOConfig:
    group_size: int = 8            # G completions per prompt (>= 2: a group of one has no baseline)
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    beta: float = 0.04             # KL weight; 0 = no reference model at all
    kl_estimator: str = "k3"       # "k1": log pi - log pi_ref; "k3": r - 1 - log r, r = pi_ref / pi
    kl_mode: str = "loss"          # "loss": + beta KL per token; "reward": r_i - beta sum_t KL_it
    clip_eps: float = 0.2          # PPO clip range for the ratio pi / pi_old
    loss_agg: str = "seq_mean"     # see aggregate_loss
    scale_rewards: bool = True     # divide advantages by the group std (False: Dr. GRPO)
    drop_zero_std_groups: bool = False   # equal-reward groups out of the loss and its normaliser
    oversample: int = 1            # k: sample k*B prompts, train on B groups (DAPO: pick_groups)
    adv_eps: float = 1e-4
    system_prompt: str | None = None     # None: no system turn (a default one costs ~20 tokens)
    prompts_per_pass: int = 8      # prompts (groups of G) per training forward pass: fewer take
                                   # less memory, more use the matmuls better
    # the allowed values of each: configurator.py checks them, once, before anything loads


# ----------------------------------------------------------------------------- advantages
def group_advantages(rewards, group_size, scale=True, eps=1e-4):
    """A_i = (r_i - mean_group) / (std_group + eps): rewards (N,) -> advantages (N,), unbiased std
    (as TRL). Equal rewards give A = 0, never NaN. scale=False: r_i - mean_group (Dr. GRPO)."""
    r = rewards.view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def zero_std_groups(rewards, group_size):
    """(N,) bool: True on every row of a group whose G rewards are all equal (nothing to learn)."""
    r = rewards.view(-1, group_size)
    return (r.max(dim=1).values == r.min(dim=1).values).repeat_interleave(group_size)


def pick_groups(rewards, group_size, keep):
    """DAPO's dynamic sampling: of the drawn groups (rewards (N,), N = drawn prompts * G), the indices of keep
    of them, in the order drawn: first those whose rewards differ, then, if too few differ, flat ones."""
    flat = zero_std_groups(rewards, group_size)[::group_size].tolist()
    return sorted(sorted(range(len(flat)), key=lambda g: (flat[g], g))[:keep])   # differing first, in draw order


# ----------------------------------------------------------------------------- log-probs
def token_logprobs(logits, token_ids):
    """log pi(token) per position: logits (N, T, V), token_ids (N, T) -> (N, T) in fp32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def plain_completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, group_size):
    """log pi(o_it | q, o_i<t) of every completion token, (N, T) fp32, from B*G full rows (each
    prompt, (B, P) left-padded, repeated G times): the reference for the fast one in batching.py."""
    ids = torch.cat([prompt_ids.repeat_interleave(group_size, dim=0), completion_ids], dim=1)
    mask = torch.cat([prompt_mask.repeat_interleave(group_size, dim=0),
                      torch.ones_like(completion_ids)], dim=1)
    T = completion_ids.size(1)
    logits = model(ids, attention_mask=mask, logits_to_keep=T + 1)[:, :-1]   # t-1 predicts t
    return token_logprobs(logits, completion_ids)


# ----------------------------------------------------------------------------- KL
def kl_per_token(logprobs, ref_logprobs, estimator="k3"):
    """Per-token estimate of KL(pi || pi_ref) from samples of pi; (N, T) -> (N, T).

    k3 = r - 1 - log r,  r = pi_ref / pi    unbiased, always >= 0 (Schulman 2020; GRPO paper eq. 4)
    k1 = log pi - log pi_ref                unbiased, can be negative per token
    The assignment's k3 has an extra 1/2; it only rescales beta.
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    log_r = ref_logprobs - logprobs
    return torch.exp(log_r) - 1 - log_r


# ----------------------------------------------------------------------------- clipped loss
def ppo_clip_loss(logprobs, old_logprobs, advantages, clip_eps):
    """L_t = -min(ratio * A, clip(ratio, 1-eps, 1+eps) * A), ratio = exp(logp - old_logp).

    logprobs, old_logprobs (N, T); advantages (N,). Returns (loss (N, T), clipped (N, T) bool):
    where the clipped term is the smaller the gradient is 0, keeping pi near pi_old over mu passes.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    A = advantages.unsqueeze(1)
    unclipped = ratio * A
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * A
    return -torch.minimum(unclipped, clipped), clipped < unclipped


# ----------------------------------------------------------------------------- aggregation
def loss_normaliser(loss_mask, mode="seq_mean", max_tokens=None):
    """What aggregate_loss divides by (a float): the tokens in the loss for token_mean; the
    sequences with a token in the loss for seq_mean/seq_sum; those times max_tokens for constant."""
    m = loss_mask.detach()
    if mode == "token_mean":
        return float(m.sum())
    sequences = float((m.sum(1) > 0).sum())       # rows of dropped groups count in no normaliser
    return sequences * (max_tokens or m.size(1)) if mode == "constant" else sequences


def aggregate_loss(per_token, mask, mode="seq_mean", max_tokens=None, normaliser=None):
    """Reduce per-token losses (N, T) over the generated tokens (mask (N, T)) to a scalar:

    seq_mean    mean over each sequence's tokens, then over sequences (1/G sum_i 1/|o_i| sum_t)
    token_mean  sum over all tokens / number of tokens (long answers weigh more; DAPO)
    seq_sum     sum over each sequence's tokens, then mean over sequences: log pi(y|x) is the sum
                over its tokens, as in the assignment's -A * log pi(y|x)
    constant    sum over all tokens / (sequences * max_tokens) (Dr. GRPO: no length bias at all)
    normaliser: what to divide by, loss_normaliser(mask) when None. A chunk of a batch passes the
    whole batch's, so that the chunks' losses add up to the batch's.
    """
    modes = ("seq_mean", "token_mean", "seq_sum", "constant")
    if mode not in modes:
        raise ValueError(f"unknown loss_agg {mode!r}; choose one of: {', '.join(modes)}")
    n = max(loss_normaliser(mask, mode, max_tokens) if normaliser is None else normaliser, 1.0)
    mask = mask.to(per_token.dtype)
    total = per_token * mask
    if mode == "seq_mean":
        return (total.sum(1) / mask.sum(1).clamp(min=1)).sum() / n
    if mode == "seq_sum":
        return total.sum(1).sum() / n
    return total.sum() / n


# ----------------------------------------------------------------------------- sampling and scoring
@dataclass
class Rollout:
    """One GRPO batch: the samples, their scores, and what the loss needs (before the mu passes)."""
    prompt_ids: torch.Tensor        # (B, P) left-padded
    prompt_mask: torch.Tensor       # (B, P)
    completion_ids: torch.Tensor    # (N, T)
    completion_mask: torch.Tensor   # (N, T) 1 up to and including EOS
    rewards: torch.Tensor           # (N,) task reward (before any KL penalty)
    texts: list                     # N decoded completions
    advantages: torch.Tensor | None = None       # (N,)
    loss_mask: torch.Tensor | None = None        # (N, T) completion_mask less any dropped group
    ref_logprobs: torch.Tensor | None = None     # (N, T) under pi_ref; None when beta = 0
    old_logprobs: torch.Tensor | None = None     # (N, T) under pi_old; None when mu = 1 (= pi)
    reward_components: dict = field(default_factory=dict)   # {name: (N,)}: the reward's components
    seconds: dict = field(default_factory=dict)  # wall time of each phase: sample, reward, logprobs
    kept: list | None = None        # with oversample: which of the drawn prompts the B groups are (pick_groups),
    drawn: "Rollout | None" = None  # and every group drawn


@torch.no_grad()
def sample_groups(policy, tok, prompts, reward_fn, cfg, seeds=None):
    """Sample G completions for each prompt and score them: a Rollout without advantages and
    log-probs. reward_fn(prompts, texts) -> N rewards; one with components (task.WeightedReward)
    also gives each component's scores."""
    if len(prompts) == 0:
        raise ValueError("empty prompt list: a GRPO step needs at least one prompt")
    G, device = cfg.group_size, policy.embed.weight.device
    prompt_tokens = [tok.chat_prompt(p.question, system=cfg.system_prompt, example=p.format_example)
                     for p in prompts]
    t0 = time.perf_counter()
    completion_ids, completion_mask = generate(
        policy, prompt_tokens, num_samples=G, max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, eos_id=tok.stop_ids,
        pad_id=tok.pad_id, seeds=seeds)
    prompt_ids, prompt_mask = left_pad(prompt_tokens, tok.pad_id, device)
    texts = [tok.decode_completion(ids, m)
             for ids, m in zip(completion_ids.tolist(), completion_mask.tolist())]
    t1 = time.perf_counter()
    repeated = [p for p in prompts for _ in range(G)]
    components = reward_fn.components(repeated, texts) if hasattr(reward_fn, "components") else {}
    rewards = reward_fn.combine(components) if components else reward_fn(repeated, texts)
    return Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
        completion_mask=completion_mask, texts=texts,
        rewards=torch.tensor(rewards, dtype=torch.float32, device=device),
        reward_components={k: torch.tensor(v, device=device) for k, v in components.items()},
        seconds={"sample": t1 - t0, "reward": time.perf_counter() - t1})


# ----------------------------------------------------------------------------- a step, written out
def grpo_step(policy, tok, prompts, reward_fn, cfg, ref_model=None, seeds=None):
    """One GRPO step without the optimizer step, written out: k3 KL in the loss, the per-sequence
    mean, mu = 1 (the notebook runs it). Returns (loss, kl (N, T) or None, batch). train.py runs
    the same math batched (rollout + grpo_loss: each prompt run once for its group, chunk by chunk,
    every option of GRPOConfig); tests/test_grpo.py checks that they agree."""
    check_written_out(cfg)
    G = cfg.group_size
    # 1. sample G completions per prompt, score them: ids (N, T), mask 1 up to EOS, rewards r (N,)
    batch = sample_groups(policy, tok, prompts, reward_fn, cfg, seeds)
    # 2. group-relative advantages A_i (N,)
    batch.advantages = group_advantages(batch.rewards, G, cfg.scale_rewards, cfg.adv_eps)
    # 3. log pi(o_it | q, o_i<t) of every generated token under the policy, with gradient: (N, T)
    logprobs = plain_completion_logprobs(policy, batch.prompt_ids, batch.prompt_mask,
                                         batch.completion_ids, G)
    # 4. mu = 1: pi_old = pi, so the ratio is 1 in value, its gradient grad log pi: L = -A_i ratio
    per_token = -batch.advantages[:, None] * torch.exp(logprobs - logprobs.detach())
    kl = None
    if cfg.beta > 0:            # 5. + beta * k3 per token against the frozen pi_ref
        with torch.no_grad():
            batch.ref_logprobs = plain_completion_logprobs(
                ref_model, batch.prompt_ids, batch.prompt_mask, batch.completion_ids, G)
        kl = kl_per_token(logprobs, batch.ref_logprobs, "k3")
        per_token = per_token + cfg.beta * kl
    # 6. mean over each completion's tokens (up to and including EOS), then over the N completions
    batch.loss_mask = batch.completion_mask
    mask = batch.completion_mask.float()
    loss = ((per_token * mask).sum(1) / mask.sum(1)).mean()
    return loss, kl, batch


def check_written_out(cfg):
    """One line when cfg asks grpo_step for an option that only rollout + grpo_loss run."""
    kept = dict(kl_estimator="k3", kl_mode="loss", loss_agg="seq_mean", drop_zero_std_groups=False,
                oversample=1, temperature=1.0)
    other = [f"{k}={getattr(cfg, k)}" for k, v in kept.items() if getattr(cfg, k) != v]
    if other:
        raise ValueError(f"grpo_step writes out {kept}; {', '.join(other)}: rollout + grpo_loss")


# ----------------------------------------------------------------------------- the batched path
@torch.no_grad()
def rollout(policy, tok, prompts, reward_fn, cfg, ref_model=None, seeds=None,
            need_old_logprobs=False):
    """sample_groups, then what every optimisation pass of the batch needs: the frozen log-probs
    (pi_ref; pi_old when mu > 1), the advantages (of r_i - beta sum_t KL_it with kl_mode=reward) and
    the loss mask (less the flat groups with drop_zero_std_groups). With cfg.oversample = k, prompts
    are k * B and the batch is the B groups pick_groups keeps."""
    G, T = cfg.group_size, cfg.temperature      # log-probs of softmax(logits / T): the sampler's
    batch = sample_groups(policy, tok, prompts, reward_fn, cfg, seeds)
    t0 = time.perf_counter()
    if cfg.oversample > 1:            # oversample * B prompts drawn: keep B groups, each with its G samples
        kept = pick_groups(batch.rewards, G, len(prompts) // cfg.oversample)
        _, picked = select_groups(batch, torch.tensor(kept, device=batch.rewards.device))
        batch = replace(picked, kept=kept, drawn=batch, seconds=batch.seconds)
    batch.loss_mask = batch.completion_mask.clone()
    if cfg.drop_zero_std_groups:      # by the task rewards: a KL penalty is no reason to learn
        batch.loss_mask[zero_std_groups(batch.rewards, G)] = 0
    # the log-probs of the rows in the loss only: a dropped group's stay 0, its prompt is not even run
    if cfg.beta > 0:
        batch.ref_logprobs = logprobs_by_chunk(ref_model, batch, G, cfg.prompts_per_pass, T, only_in_loss=True)
    kl_in_reward = cfg.beta > 0 and cfg.kl_mode == "reward"
    if need_old_logprobs or kl_in_reward:
        batch.old_logprobs = logprobs_by_chunk(policy, batch, G, cfg.prompts_per_pass, T, only_in_loss=True)
    shaped = batch.rewards
    if kl_in_reward:
        # r_i - beta * sum_t KL_it: the penalty is part of the reward that the advantages normalise
        kl = kl_per_token(batch.old_logprobs, batch.ref_logprobs, cfg.kl_estimator)
        shaped = batch.rewards - cfg.beta * (kl * batch.completion_mask).sum(1)
    batch.advantages = group_advantages(shaped, G, cfg.scale_rewards, cfg.adv_eps)
    if not need_old_logprobs:
        batch.old_logprobs = None     # pi_old = pi: the ratio is 1 in value
    batch.seconds["logprobs"] = time.perf_counter() - t0
    return batch


def grpo_loss(logprobs, batch, cfg, normaliser=None):
    """The GRPO loss of a batch (or a chunk of one) from its log-probs (N, T) under the policy, with
    gradient. normaliser: what the whole step's loss divides by (loss_normaliser of the whole batch,
    all ranks; None: this batch's). Returns (loss, kl (N, T) or None, clipped (N, T) bool)."""
    old = batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach()
    per_token, clipped = ppo_clip_loss(logprobs, old, batch.advantages, cfg.clip_eps)
    kl = None
    if cfg.beta > 0:
        kl = kl_per_token(logprobs, batch.ref_logprobs, cfg.kl_estimator)
        if cfg.kl_mode == "loss":
            per_token = per_token + cfg.beta * kl
    loss = aggregate_loss(per_token, batch.loss_mask, cfg.loss_agg, cfg.max_new_tokens, normaliser)
    return loss, kl, clipped
