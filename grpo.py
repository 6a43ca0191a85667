"""GRPO (Group Relative Policy Optimization, Shao et al. 2024, DeepSeekMath) from scratch.

For each of B prompts q, sample G completions o_1..o_G from the current policy, score them with the task's
reward r_i, and push up the log-probability of completions that beat their group's average:

    A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)                     group-relative advantage
    ratio_it = pi(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t)                 (= 1 in value when mu = 1)
    L_it = -min(ratio_it * A_i, clip(ratio_it, 1 - eps_clip, 1 + eps_clip) * A_i) + beta * KL_it
    loss = aggregate(L_it over the generated tokens)

With mu = 1 pass per batch, pi_old = pi and the gradient of L_it is exactly -A_i * grad log pi(o_it): the
assignment's `-A * log pi(y|x)`. KL_it is an estimate of KL(pi || pi_ref) per token against the frozen
starting model pi_ref, added to the loss (as in the paper) or subtracted from the reward before normalising.

Shapes: B prompts, G samples each, N = B*G rows (row i*G + j is sample j of prompt i); P prompt tokens
(left-padded), T completion tokens. Everything here is a pure function of tensors except rollout(), which
samples, and the forward passes, which call the model.
"""
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fused import SelectedLogprobs
from engine import generate, left_pad, prefill, stop_tensor


@dataclass
class GRPOConfig:
    group_size: int = 8            # G completions per prompt (>= 2: a group of one has no baseline)
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    beta: float = 0.04             # KL weight; 0 = no reference model at all
    kl_estimator: str = "k3"       # "k1": log pi - log pi_ref; "k3": r - 1 - log r with r = pi_ref / pi
    kl_mode: str = "loss"          # "loss": + beta * KL per token; "reward": r_i - beta * sum_t KL_it
    clip_eps: float = 0.2          # PPO clip range for the ratio pi / pi_old
    loss_agg: str = "seq_mean"     # see aggregate_loss
    scale_rewards: bool = True     # divide advantages by the group std (False: Dr. GRPO)
    drop_zero_std_groups: bool = False   # leave groups with equal rewards out of the loss and its normaliser
    adv_eps: float = 1e-4
    system_prompt: str | None = None     # None: no system turn (the default one costs ~20 tokens a prompt)
    prompts_per_pass: int = 8      # prompts (groups of G) per training forward pass: fewer take less memory,
                                   # more use the matmuls better

    def validate(self):
        choices = {"kl_estimator": ("k1", "k3"), "kl_mode": ("loss", "reward"),
                   "loss_agg": ("seq_mean", "token_mean", "seq_sum", "constant")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of: {', '.join(allowed)}")
        if self.group_size < 2:
            raise ValueError(f"group_size G must be >= 2 (got {self.group_size}): GRPO compares samples within a group")
        if self.prompts_per_pass < 1:
            raise ValueError(f"prompts_per_pass must be >= 1 (got {self.prompts_per_pass})")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if not (self.beta >= 0 and self.clip_eps > 0):          # written so that NaN fails too
            raise ValueError(f"need beta >= 0 and clip_eps > 0 (got beta={self.beta}, clip_eps={self.clip_eps})")
        if not self.temperature >= 0:
            raise ValueError(f"--temperature={self.temperature}: temperature must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"--top_k={self.top_k}: top_k must be >= 1, or none (no top-k filter)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"--top_p={self.top_p}: top_p must be in (0, 1], or none (no nucleus filter)")
        if not self.adv_eps > 0:
            raise ValueError(f"--adv_eps={self.adv_eps}: adv_eps must be > 0 (it keeps A finite in a flat group)")
        return self


# ----------------------------------------------------------------------------- pure math

def group_advantages(rewards, group_size, scale=True, eps=1e-4):
    """A_i = (r_i - mean_group) / (std_group + eps), rewards (N,) -> advantages (N,).

    std is the unbiased sample std (as TRL computes it). A group whose rewards are all equal gets A = 0,
    never NaN: it has nothing to prefer. scale=False keeps only r_i - mean_group (Dr. GRPO).
    """
    r = rewards.view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def zero_std_groups(rewards, group_size):
    """(N,) bool: True on every row of a group whose G rewards are all equal (no learning signal)."""
    r = rewards.view(-1, group_size)
    return (r.max(dim=1).values == r.min(dim=1).values).repeat_interleave(group_size)


def token_logprobs(logits, token_ids):
    """log pi(token) per position: logits (N, T, V), token_ids (N, T) -> (N, T) in fp32."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def logprobs_from_hidden(hidden, weight, token_ids, mask=None, chunk_tokens=None):
    """token_logprobs(hidden @ weight^T, token_ids) computed only where mask is 1, in chunks of tokens, each by
    fused.SelectedLogprobs (a backward written out from the forward's own softmax).

    hidden (N, T, C), weight (V, C), token_ids and mask (N, T) -> (N, T) fp32, 0 outside the mask.
    Positions after EOS need no log-prob, and the (N, T, V) logits are never held at once. Without gradients
    (reference and old log-probs) chunks of 128 tokens are ~20% faster than 512 on a CPU: the allocator
    reuses their fp32 log-softmax (25 MB) instead of mapping (and page-faulting) fresh memory every chunk.
    """
    chunk_tokens = chunk_tokens or (512 if torch.is_grad_enabled() else 128)
    keep = mask.bool() if mask is not None else torch.ones_like(token_ids, dtype=torch.bool)
    h, ids = hidden[keep], token_ids[keep]                                  # (n, C), (n,)
    parts = [SelectedLogprobs.apply(h[i:i + chunk_tokens], weight, ids[i:i + chunk_tokens])
             for i in range(0, h.size(0), chunk_tokens)]
    out = torch.zeros(token_ids.shape, dtype=torch.float32, device=hidden.device)
    return out.masked_scatter(keep, torch.cat(parts)) if parts else out


def kl_per_token(logprobs, ref_logprobs, estimator="k3"):
    """Per-token estimate of KL(pi || pi_ref) from samples of pi; (N, T) -> (N, T).

    k1 = log pi - log pi_ref                  unbiased, can be negative per token
    k3 = r - 1 - log r,  r = pi_ref / pi      unbiased and always >= 0 (Schulman 2020; GRPO paper eq. 4).
    The assignment's k3 has an extra 1/2; it only rescales beta.
    """
    if estimator == "k1":
        return logprobs - ref_logprobs
    log_r = ref_logprobs - logprobs
    return torch.exp(log_r) - 1 - log_r


def ppo_clip_loss(logprobs, old_logprobs, advantages, clip_eps):
    """L_t = -min(ratio * A, clip(ratio, 1-eps, 1+eps) * A), ratio = exp(logp - old_logp).

    logprobs, old_logprobs (N, T); advantages (N,). Returns (loss (N, T), clipped (N, T) bool): where the
    clipped term is the smaller one the gradient is zero, which keeps pi close to pi_old over mu passes.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    A = advantages.unsqueeze(1)
    unclipped = ratio * A
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * A
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def aggregate_loss(per_token, mask, mode="seq_mean", max_tokens=None):
    """Reduce per-token losses (N, T) over the generated tokens (mask (N, T)) to a scalar.

    seq_mean    mean over each sequence's tokens, then over sequences (GRPO paper: 1/G sum_i 1/|o_i| sum_t)
    A row with no token in the mask (a dropped group) counts in no normaliser.
    token_mean  sum over all tokens / number of tokens (long answers weigh more; DAPO)
    seq_sum     sum over each sequence's tokens, then mean over sequences: log pi(y|x) = sum_t log pi(y_t|...)
                as in the assignment's -A * log pi(y|x)
    constant    sum over all tokens / (N * max_tokens) (Dr. GRPO: no length bias at all)
    """
    mask = mask.to(per_token.dtype)
    total = per_token * mask
    rows = (mask.sum(1) > 0).sum().clamp(min=1)     # rows left out of the loss (dropped groups) do not count
    if mode == "seq_mean":
        return (total.sum(1) / mask.sum(1).clamp(min=1)).sum() / rows
    if mode == "token_mean":
        return total.sum() / mask.sum().clamp(min=1)
    if mode == "seq_sum":
        return total.sum(1).sum() / rows
    if mode == "constant":
        return total.sum() / (rows * (max_tokens or mask.size(1)))
    raise ValueError(f"unknown loss_agg {mode!r}; choose one of: seq_mean, token_mean, seq_sum, constant")


def loss_weights(mask, mode="seq_mean", max_tokens=None):
    """Each token's weight w (N, T) in the aggregated loss: aggregate_loss(L, mask, ...) = sum_it w_it * L_it.

    aggregate_loss is linear in L, so w is its gradient (computed from it: the modes are defined once, above):
    seq_mean 1 / (|o_i| * rows), token_mean 1 / tokens, seq_sum 1 / rows, constant 1 / (rows * max_tokens),
    with rows = the rows with a token in the mask; 0 outside the mask.
    """
    zeros = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return torch.func.grad(aggregate_loss)(zeros, mask, mode, max_tokens)


def truncated_rows(completion_ids, completion_mask, stop_ids):
    """(N,) bool: True on each completion that has no stop token (EOS) in its mask, i.e. was cut off at
    max_new_tokens (TRL's clipped_ratio counts these). completion_ids, completion_mask (N, T)."""
    stops = torch.isin(completion_ids, stop_tensor(stop_ids, completion_ids.device)) & completion_mask.bool()
    return ~stops.any(1)


# ----------------------------------------------------------------------------- model passes

def completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, group_size, completion_mask=None):
    """log pi(o_it | q, o_i<t) for every completion token: (N, T) in fp32 (0 outside completion_mask).

    The B prompts are run once (their shared first tokens once for all: engine.prefill) and their keys/values
    copied to their G completions (exact, and G times less prompt work than B*G padded rows); the completions
    then attend to them. prompt_ids, prompt_mask (B, P); completion_ids (N, T). Token t's logits come from
    position t-1: the last prompt position predicts o_i0.
    Positions past the end of the mask (after EOS) are not computed at all: a third of a batch early on.
    The model computes in its own dtype (bf16 where that is fast); the log-softmax is always fp32.
    """
    B, P = prompt_ids.shape
    N, T = completion_ids.shape
    cache, h_last, prompt_mask = prefill(model, prompt_ids, prompt_mask, P + T, return_hidden=True)
    hidden = h_last.repeat_interleave(group_size, dim=0)                   # (N, 1, C)
    if T > 1:
        cache = cache.repeat_interleave(group_size)
        mask = torch.cat([prompt_mask.repeat_interleave(group_size, dim=0), prompt_mask.new_ones(N, T - 1)], dim=1)
        # position t predicts token t+1: compute it only if that token is in the mask (never after EOS)
        active = completion_mask[:, 1:].bool() if completion_mask is not None else None
        h = model.hidden(completion_ids[:, :-1], attention_mask=mask, cache=cache, active=active)
        hidden = torch.cat([hidden, h], dim=1)                              # (N, T, C)
    return logprobs_from_hidden(hidden, model.embed.weight, completion_ids, completion_mask)


def plain_completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, group_size):
    """The same log-probs from B*G full rows (prompt repeated G times): the reference for the fast path."""
    ids = torch.cat([prompt_ids.repeat_interleave(group_size, dim=0), completion_ids], dim=1)
    mask = torch.cat([prompt_mask.repeat_interleave(group_size, dim=0), torch.ones_like(completion_ids)], dim=1)
    T = completion_ids.size(1)
    logits = model(ids, attention_mask=mask, logits_to_keep=T + 1)[:, :-1]    # position t-1 predicts token t
    return token_logprobs(logits, completion_ids)


# ----------------------------------------------------------------------------- one GRPO batch

@dataclass
class Rollout:
    """Everything one GRPO batch needs, computed once before the mu optimisation passes."""
    prompt_ids: torch.Tensor        # (B, P) left-padded
    prompt_mask: torch.Tensor       # (B, P)
    completion_ids: torch.Tensor    # (N, T)
    completion_mask: torch.Tensor   # (N, T) 1 up to and including EOS
    rewards: torch.Tensor           # (N,) task reward (before any KL penalty)
    advantages: torch.Tensor        # (N,)
    loss_mask: torch.Tensor         # (N, T) completion_mask, less the rows of dropped groups
    ref_logprobs: torch.Tensor | None    # (N, T) under pi_ref, or None when beta = 0
    old_logprobs: torch.Tensor | None    # (N, T) under pi_old, or None when mu = 1 (then pi_old = pi)
    texts: list                     # N decoded completions
    seconds: dict                   # wall time of each phase: sample, reward, logprobs (ref and old)
    reward_parts: dict = field(default_factory=dict)   # {component name: (N,)} when the reward has components
    truncated: torch.Tensor | None = None   # (N,) bool: ended at max_new_tokens without a stop token

    def parts(self, prompts_per_part):
        """The batch as consecutive parts of prompts_per_part prompts (and their G completions each), each cut
        to its own longest prompt and completion: a part of short answers makes a short forward pass."""
        B, N = self.prompt_ids.size(0), self.completion_ids.size(0)
        G = N // B
        for i in range(0, B, prompts_per_part):
            p, c = slice(i, i + prompts_per_part), slice(i * G, (i + prompts_per_part) * G)
            first = int(self.prompt_mask[p].any(0).nonzero()[0])               # leading all-padding columns
            last = int(self.completion_mask[c].any(0).nonzero()[-1]) + 1       # trailing post-EOS columns
            cut = lambda x: None if x is None else x[c, :last]
            yield Rollout(self.prompt_ids[p, first:], self.prompt_mask[p, first:], cut(self.completion_ids),
                          cut(self.completion_mask), self.rewards[c],
                          None if self.advantages is None else self.advantages[c], cut(self.loss_mask),
                          cut(self.ref_logprobs), cut(self.old_logprobs), self.texts[c], {})


def logprobs_by_part(model, batch, group_size, prompts_per_part):
    """completion_logprobs of the batch computed part by part (see Rollout.parts), zero-padded back to (N, T)."""
    T = batch.completion_ids.size(1)
    return torch.cat([F.pad(completion_logprobs(model, p.prompt_ids, p.prompt_mask, p.completion_ids, group_size,
                                                p.completion_mask), (0, T - p.completion_ids.size(1)))
                      for p in batch.parts(prompts_per_part)])


def encode_prompts(tok, prompts, system_prompt=None):
    """Task prompts -> chat token ids; one clear error for an empty list."""
    if len(prompts) == 0:
        raise ValueError("empty prompt list: a GRPO step needs at least one prompt")
    return [tok.chat_prompt(p.question, system=system_prompt) for p in prompts]


@torch.no_grad()
def rollout(policy, tok, prompts, reward_fn, cfg, ref_model=None, seeds=None, need_old_logprobs=False):
    """Sample G completions per prompt, score them, and compute the advantages (and the frozen log-probs)."""
    cfg.validate()
    G = cfg.group_size
    prompt_tokens = encode_prompts(tok, prompts, cfg.system_prompt)
    device = policy.embed.weight.device
    t0 = time.perf_counter()
    completion_ids, completion_mask = generate(
        policy, prompt_tokens, num_samples=G, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
        top_k=cfg.top_k, top_p=cfg.top_p, eos_id=tok.stop_ids, pad_id=tok.pad_id, seeds=seeds)
    prompt_ids, prompt_mask = left_pad(prompt_tokens, tok.pad_id, device)
    texts = [tok.decode_completion(ids, m) for ids, m in zip(completion_ids.tolist(), completion_mask.tolist())]
    t1 = time.perf_counter()
    repeated = [p for p in prompts for _ in range(G)]
    parts = reward_fn.components(repeated, texts) if hasattr(reward_fn, "components") else {}  # task.WeightedReward
    rewards = torch.tensor(reward_fn.combine(parts) if parts else reward_fn(repeated, texts), dtype=torch.float32,
                           device=device)

    t2 = time.perf_counter()
    batch = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, rewards, None, completion_mask.clone(),
                    None, None, texts, {}, {k: torch.tensor(v, device=device) for k, v in parts.items()},
                    truncated_rows(completion_ids, completion_mask, tok.stop_ids))
    if cfg.beta > 0:
        batch.ref_logprobs = logprobs_by_part(ref_model, batch, G, cfg.prompts_per_pass)
    kl_in_reward = cfg.beta > 0 and cfg.kl_mode == "reward"
    old_logprobs = logprobs_by_part(policy, batch, G, cfg.prompts_per_pass) \
        if need_old_logprobs or kl_in_reward else None
    shaped = rewards
    if kl_in_reward:
        # r_i - beta * sum_t KL_it: the penalty is part of the reward that the advantages normalise
        kl = kl_per_token(old_logprobs, batch.ref_logprobs, cfg.kl_estimator)
        shaped = rewards - cfg.beta * (kl * completion_mask).sum(1)
    batch.advantages = group_advantages(shaped, G, cfg.scale_rewards, cfg.adv_eps)
    if cfg.drop_zero_std_groups:      # judged on the task rewards: a KL penalty alone is no reason to learn
        batch.loss_mask[zero_std_groups(rewards, G)] = 0
    batch.old_logprobs = old_logprobs if need_old_logprobs else None
    batch.seconds = {"sample": t1 - t0, "reward": t2 - t1, "logprobs": time.perf_counter() - t2}
    return batch


def grpo_loss(policy, batch: Rollout, cfg, logprob_fn=None):
    """The GRPO loss of one batch under the current policy. Returns (loss, kl (N, T) or None, clipped (N, T)).
    logprob_fn: completion_logprobs with the policy bound (train.py passes a DistributedDataParallel one)."""
    args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, cfg.group_size, batch.loss_mask)
    logprobs = logprob_fn(*args) if logprob_fn is not None else completion_logprobs(policy, *args)
    old = batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach()
    per_token, clipped = ppo_clip_loss(logprobs, old, batch.advantages, cfg.clip_eps)
    kl = None
    if cfg.beta > 0:
        kl = kl_per_token(logprobs, batch.ref_logprobs, cfg.kl_estimator)
        if cfg.kl_mode == "loss":
            per_token = per_token + cfg.beta * kl
    return aggregate_loss(per_token, batch.loss_mask, cfg.loss_agg, cfg.max_new_tokens), kl, clipped


@torch.no_grad()
def step_metrics(batch, kl, clipped, group_size):
    """Scalars to log; each one explained where train.py prints it. kl (N, T) or None, clipped (N, T)."""
    cm = batch.completion_mask.float()
    mask = batch.loss_mask.bool()
    metrics = {
        "reward": batch.rewards.mean().item(),
        "reward_std": batch.rewards.view(-1, group_size).std(dim=1).mean().item(),
        "frac_reward_zero_std": zero_std_groups(batch.rewards, group_size).float().mean().item(),
        "kl": ((kl * mask).sum() / mask.sum().clamp(min=1)).item() if kl is not None else 0.0,
        "clip_frac": ((clipped & mask).sum() / mask.sum().clamp(min=1)).item(),
        "completion_len": cm.sum(1).mean().item(),
    } | {f"reward/{name}": values.float().mean().item() for name, values in batch.reward_parts.items()}
    if batch.truncated is not None:                   # rollout() knows; a Rollout made by hand may not
        metrics["truncated"] = batch.truncated.float().mean().item()
    return metrics


def grpo_step(policy, tok, prompts, reward_fn, cfg, ref_model=None, seeds=None):
    """One GRPO step without the optimizer step, written out from the functions above: the notebook runs this.
    Returns (loss, metrics, batch). train.py runs the same math as rollout() + grpo_loss(), which are batched for
    speed (the prompt run once per group, part by part, mu passes); tests/test_grpo.py checks that they agree.
    Shapes: B prompts, N = B*G completions of T tokens."""
    G, device = cfg.group_size, policy.embed.weight.device
    prompt_tokens = encode_prompts(tok, prompts, cfg.system_prompt)
    with torch.no_grad():       # 1. sample G completions per prompt: ids (N, T), mask 1 up to and including EOS
        completion_ids, completion_mask = generate(
            policy, prompt_tokens, num_samples=G, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            top_k=cfg.top_k, top_p=cfg.top_p, eos_id=tok.stop_ids, pad_id=tok.pad_id, seeds=seeds)
    texts = [tok.decode_completion(ids, m) for ids, m in zip(completion_ids.tolist(), completion_mask.tolist())]
    # 2. score each completion: r (N,)
    rewards = torch.tensor(reward_fn([p for p in prompts for _ in range(G)], texts), dtype=torch.float32, device=device)
    # 3. log pi(o_it | q, o_i<t) of every generated token under the policy (with gradient) and pi_ref: (N, T)
    prompt_ids, prompt_mask = left_pad(prompt_tokens, tok.pad_id, device)
    logprobs = plain_completion_logprobs(policy, prompt_ids, prompt_mask, completion_ids, G)
    kl = ref_logprobs = None
    if cfg.beta > 0:
        with torch.no_grad():
            ref_logprobs = plain_completion_logprobs(ref_model, prompt_ids, prompt_mask, completion_ids, G)
        kl = kl_per_token(logprobs, ref_logprobs, cfg.kl_estimator)                          # (N, T)
    # 4. group-relative advantages A_i (N,), of r_i - beta * sum_t KL_it when the KL is a reward penalty
    shaped = rewards - cfg.beta * (kl.detach() * completion_mask).sum(1) if kl is not None and cfg.kl_mode == "reward" \
        else rewards
    advantages = group_advantages(shaped, G, cfg.scale_rewards, cfg.adv_eps)
    loss_mask = completion_mask.clone()
    if cfg.drop_zero_std_groups:            # equal rewards: nothing to prefer, left out of the loss
        loss_mask[zero_std_groups(rewards, G)] = 0
    # 5. the loss: mu = 1, so pi_old = pi (ratio 1 in value) and its gradient is -A_i grad log pi (+ beta grad KL)
    per_token, clipped = ppo_clip_loss(logprobs, logprobs.detach(), advantages, cfg.clip_eps)
    if kl is not None and cfg.kl_mode == "loss":
        per_token = per_token + cfg.beta * kl
    loss = aggregate_loss(per_token, loss_mask, cfg.loss_agg, cfg.max_new_tokens)
    batch = Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, rewards, advantages, loss_mask,
                    ref_logprobs, None, texts, {}, truncated=truncated_rows(completion_ids, completion_mask, tok.stop_ids))
    return loss, step_metrics(batch, kl, clipped, G) | {"loss": loss.item()}, batch
