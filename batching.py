"""How the batched path of train.py (grpo.rollout, backward_by_chunk) computes the policy's log-probs
and backpropagates its loss fast and in bounded memory: each prompt runs once for its G completions, nothing
after EOS is computed, and a batch runs in chunks of prompts. grpo.plain_completion_logprobs is the plain
reference: tests/test_grpo.py checks that the two agree, values and gradients.
"""
import contextlib
from dataclasses import replace

import torch

from fused import logprobs_from_hidden
from engine import prefill
from load_weights import drop_from_memory, load_into_memory


def completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, group_size,
                        completion_mask=None, temperature=1.0):
    """log pi(o_it | q, o_i<t) of every completion token, (N, T) fp32, 0 outside completion_mask,
    pi = softmax(logits / temperature): the distribution that sampled them.

    The B prompts (B, P) run once (prefill) and their keys/values are copied to their G completions
    (exact, and G times less prompt work); positions after EOS are not computed at all. The model
    runs in its own dtype; the log-softmax is fp32. Token t's logits come from position t - 1.
    """
    B, P = prompt_ids.shape
    N, T = completion_ids.shape
    cache, h_last, prompt_mask = prefill(model, prompt_ids, prompt_mask, P + T, return_hidden=True)
    hidden = h_last.repeat_interleave(group_size, dim=0)                   # (N, 1, C)
    if T > 1:
        cache = cache.repeat_interleave(group_size)
        mask = torch.cat([prompt_mask.repeat_interleave(group_size, dim=0),
                          prompt_mask.new_ones(N, T - 1)], dim=1)
        # position t predicts token t+1: compute it only if that token is in the mask (before EOS)
        active = completion_mask[:, 1:].bool() if completion_mask is not None else None
        h = model.hidden(completion_ids[:, :-1], attention_mask=mask, cache=cache, active=active)
        hidden = torch.cat([hidden, h], dim=1)                              # (N, T, C)
    if temperature != 1.0:    # logits / T = (hidden / T) W^T: the sampler's pi, so the ratio and
        hidden = hidden / temperature      # the KL are of the policy that drew the samples
    return logprobs_from_hidden(hidden, model.embed.weight, completion_ids, completion_mask)


def select_groups(batch, groups):
    """(rows, the grpo.Rollout of those groups): groups, a (K,) index tensor into the B prompts, each with its G
    completions (rows, the (K * G,) row indices of the N rows, G by G), cut to their own longest prompt and
    completion: a chunk of short answers makes a short forward pass."""
    G = batch.completion_ids.size(0) // batch.prompt_ids.size(0)
    rows = (groups[:, None] * G + torch.arange(G, device=groups.device)).view(-1)
    first = int(batch.prompt_mask[groups].any(0).nonzero()[0])            # leading padding columns
    last = int(batch.completion_mask[rows].any(0).nonzero()[-1]) + 1      # post-EOS columns
    cut = lambda x: None if x is None else x[rows, :last]
    return rows, replace(
        batch,
        prompt_ids=batch.prompt_ids[groups, first:], prompt_mask=batch.prompt_mask[groups, first:],
        completion_ids=cut(batch.completion_ids), completion_mask=cut(batch.completion_mask),
        rewards=batch.rewards[rows], texts=[batch.texts[r] for r in rows.tolist()],
        advantages=None if batch.advantages is None else batch.advantages[rows],
        loss_mask=cut(batch.loss_mask), ref_logprobs=cut(batch.ref_logprobs),
        old_logprobs=cut(batch.old_logprobs), seconds={},
        reward_components={k: v[rows] for k, v in batch.reward_components.items()})


def chunks(batch, prompts_per_chunk, only_in_loss=False):
    """select_groups of consecutive chunks of a grpo.Rollout, prompts_per_chunk prompts each. only_in_loss:
    leave out the groups with no token in batch.loss_mask (drop_zero_std_groups' flat groups), prompt and all:
    what is not in the loss costs nothing."""
    B = batch.prompt_ids.size(0)
    groups = torch.arange(B, device=batch.completion_ids.device)
    if only_in_loss:
        groups = groups[batch.loss_mask.view(B, -1).any(1)]
    for i in range(0, len(groups), prompts_per_chunk):
        yield select_groups(batch, groups[i:i + prompts_per_chunk])


def logprobs_by_chunk(model, batch, group_size, prompts_per_chunk, temperature=1.0, only_in_loss=False):
    """completion_logprobs of a grpo.Rollout, chunk by chunk (chunks): (N, T), 0 after EOS, and on the
    rows of groups out of the loss with only_in_loss."""
    out = torch.zeros(batch.completion_ids.shape, device=batch.completion_ids.device)
    load_into_memory(model)     # a reference kept in a file (load_weights.keep_in_file) comes in for its pass
    for rows, c in chunks(batch, prompts_per_chunk, only_in_loss):
        out[rows, :c.completion_ids.size(1)] = completion_logprobs(
            model, c.prompt_ids, c.prompt_mask, c.completion_ids, group_size, c.completion_mask,
            temperature)
    drop_from_memory(model)     # and leaves memory till next time
    return out


def backward_by_chunk(logprobs_of, loss_of, batch, cfg, weight=1, only_in_loss=True, sync=None):
    """Backpropagate a grpo.Rollout's loss chunk by chunk (chunks, cfg.prompts_per_pass prompts each), in
    bounded memory. logprobs_of: completion_logprobs with the policy bound; loss_of(logprobs, chunk):
    grpo.grpo_loss with the whole step's normaliser bound, so the chunks' gradients add up to the whole
    batch's. Returns (loss, kl (N, T) or None, clipped (N, T)).
    Under torchrun (ddp.DDPPolicy): weight = world, as DDP averages the ranks' gradients; every rank
    runs every chunk, dropped groups too (only_in_loss=False); sync(last) is DDP's no_sync but for the last chunk."""
    N, T = batch.completion_ids.shape
    loss, kl = 0.0, torch.zeros(N, T, device=batch.completion_ids.device)
    clipped = torch.zeros(N, T, dtype=torch.bool, device=batch.completion_ids.device)
    pieces = list(chunks(batch, cfg.prompts_per_pass, only_in_loss))    # dropped groups: no work
    for k, (rows, chunk) in enumerate(pieces):
        with sync(k == len(pieces) - 1) if sync else contextlib.nullcontext():
            logprobs = logprobs_of(chunk.prompt_ids, chunk.prompt_mask, chunk.completion_ids,
                                   cfg.group_size, chunk.loss_mask)
            chunk_loss, chunk_kl, chunk_clipped = loss_of(logprobs, chunk)
            (chunk_loss * weight).backward()
        loss += chunk_loss.item() * weight
        cut = chunk_clipped.size(1)
        clipped[rows, :cut] = chunk_clipped
        if chunk_kl is not None:
            kl[rows, :cut] = chunk_kl.detach()
    return loss, kl if cfg.beta > 0 else None, clipped
