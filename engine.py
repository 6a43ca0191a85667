"""The inference engine around model.GPT: the KV cache, the shared-prefix prefill, the sampler.

In reading order: KVCache -> left_pad, shared_prefix_len, prefill (the prompts run once) -> the
sampling of one token (filter_logits, row_generators, sample_next) -> plain_generate, the reference
(no cache, one token at a time, each row alone) -> generate, the batched sampler that
tests/test_engine.py checks against it token for token -> stop_tensor, completion_mask.

Shapes: B prompts, G = num_samples completions each, N = B * G rows, P prompt positions (padded).
"""
import torch


class KVCache:
    """Preallocated keys and values, one (B, n_kv_head, max_len, D) buffer per layer.

    `update` writes the new positions and returns the layer's whole buffer: slots not written yet
    lie in the future of every query, so the causal mask hides them, and a whole buffer multiplies
    faster than a slice. Writes are autograd-aware, so a cache filled with gradients on (the
    training forward with a shared prompt) backpropagates.
    """

    def __init__(self, cfg, batch_size, max_len, device, dtype):
        shape = (batch_size, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.pos = 0          # positions filled (the same for every layer once a forward ends)
        self.max_len = max_len

    def update(self, layer, k, v):
        t = k.size(2)
        if self.pos + t > self.max_len:
            raise ValueError(f"KV cache full: {self.pos} + {t} positions > max_len {self.max_len}")
        self.k[layer][:, :, self.pos:self.pos + t] = k
        self.v[layer][:, :, self.pos:self.pos + t] = v
        if layer == len(self.k) - 1:
            self.pos += t
        return self.k[layer], self.v[layer]

    def rows(self, index):
        """A cache whose row i is a copy of row index[i] of this one (autograd-aware)."""
        out = object.__new__(KVCache)
        out.k = [k[index] for k in self.k]
        out.v = [v[index] for v in self.v]
        out.pos, out.max_len = self.pos, self.max_len
        return out

    def repeat_interleave(self, repeats):
        """A cache of B*repeats rows where row i*repeats+j is a copy of row i: one prefill serves G
        samples."""
        index = torch.arange(self.k[0].size(0), device=self.k[0].device)
        return self.rows(index.repeat_interleave(repeats))


def new_cache(model, batch_size, max_len):
    """An empty KVCache for the model, on its device and in its compute dtype."""
    p = model.embed.weight
    return KVCache(model.cfg, batch_size, max_len, p.device, p.dtype)


def left_pad(sequences, pad_id, device=None):
    """Token lists -> ids (B, P) left-padded with pad_id, and the mask (B, P), 1 on real tokens."""
    if not sequences or any(len(s) == 0 for s in sequences):
        raise ValueError("cannot pad an empty prompt list or an empty prompt")
    P = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), P), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), P), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, P - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, P - len(s):] = 1
    return ids.to(device), mask.to(device)


def shared_prefix_len(ids, mask):
    """How many first tokens every row of the left-padded ids (B, P) has in common (the chat
    template, a system prompt), keeping at least one token of each row its own; 0 for one row."""
    lens = mask.sum(1)
    m = int(lens.min()) - 1
    if ids.size(0) < 2 or m < 1:
        return 0
    cols = (ids.size(1) - lens)[:, None] + torch.arange(m, device=ids.device)   # each row's first m
    firsts = ids.gather(1, cols)
    differs = (firsts != firsts[:1]).any(0)
    return int(differs.nonzero()[0]) if differs.any() else m


def prefill(model, ids, mask, max_len, return_hidden=False):
    """Run the left-padded prompts ids (B, P) into a new KV cache of max_len slots, their shared
    first tokens once for all rows. Returns (cache, logits (or hidden states) of each row's last
    position (B, 1, .), mask).

    With L shared tokens the cache row is [prefix | padding | rest of the row] instead of [padding |
    prefix | rest]: the same tokens at the same positions (positions count real tokens only), the
    prefix computed once and copied to the B rows (autograd-aware: its gradient is the sum over the
    rows). The mask returned (B, P) describes that layout; use it for every later attention mask.
    """
    B, P = ids.shape
    L = shared_prefix_len(ids, mask)
    cache = new_cache(model, 1 if L else B, max_len)
    if L:
        pad = P - mask.sum(1)                                                 # (B,) padding per row
        model.hidden(ids[:1, pad[0]:pad[0] + L], cache=cache, last=1)
        cache = cache.rows(torch.zeros(B, dtype=torch.long, device=ids.device))
        after = torch.arange(P - L, device=ids.device)[None] >= pad[:, None]  # pad after prefix
        mask = torch.cat([mask.new_ones(B, L), after.to(mask.dtype)], dim=1)
    rest = dict(attention_mask=mask, cache=cache, active=mask[:, L:].bool())   # padding: no work
    out = model.hidden(ids[:, L:], last=1, **rest) if return_hidden else \
        model(ids[:, L:], logits_to_keep=1, **rest)
    return cache, out, mask


# ----------------------------------------------------------------------------- sampling one token

def filter_logits(logits, top_k=None, top_p=None):
    """Set to -inf every logit outside the top-k and outside the smallest set of probability
    >= top_p."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p     # mass before this token >= p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def row_generators(seeds, num_samples, device):
    """One torch.Generator per completion row, seeded from (prompt seed, sample index): a prompt's
    samples do not depend on which other prompts share the batch. Each lives on the model's device
    (torch has generators for cpu, cuda and, since torch 2.0, mps: pick_device's devices), so a
    row's uniform is drawn there; the same seed draws different numbers on different kinds of
    device."""
    gens = []
    for s in seeds:
        for j in range(num_samples):
            g = torch.Generator(device=device)
            g.manual_seed(int(s) * 1_000_003 + j)
            gens.append(g)
    return gens


def sample_next(logits, temperature, top_k, top_p, generators):
    """Next token ids (N,) from logits (N, V): greedy at temperature 0, else inverse-CDF sampling
    with one uniform number per row from that row's generator."""
    if temperature == 0:
        return logits.argmax(-1)
    if temperature != 1.0 or top_k is not None or top_p is not None:
        logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = logits.softmax(-1, dtype=torch.float32)     # one pass from bf16 logits at temperature 1
    u = torch.cat([torch.rand(1, generator=g, device=logits.device) for g in generators])
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    return idx.clamp(max=logits.size(-1) - 1)


# ----------------------------------------------------------------------------- the sampler

@torch.no_grad()
def plain_generate(model, prompts, num_samples=1, max_new_tokens=32, temperature=1.0, top_k=None,
                   top_p=None, eos_id=None, pad_id=0, seeds=None):
    """generate's reference, with the same arguments and results: each row alone, no padding, no
    cache, the whole sequence through the model for every new token."""
    device = model.embed.weight.device
    seeds = seeds if seeds is not None else torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()
    stops = stop_tensor(eos_id, "cpu").tolist() if eos_id is not None else []
    rows = []
    for prompt, g in zip([p for p in prompts for _ in range(num_samples)],
                         row_generators(seeds, num_samples, device)):
        seq = list(prompt)
        for _ in range(max_new_tokens):
            logits = model(torch.tensor([seq], device=device))[:, -1]         # (1, V), from scratch
            seq.append(int(sample_next(logits, temperature, top_k, top_p, [g])))
            if seq[-1] in stops:
                break
        rows.append(seq[len(prompt):])
    T = max(len(r) for r in rows)
    out = torch.tensor([r + [pad_id] * (T - len(r)) for r in rows], device=device)
    return out, completion_mask(out, eos_id)


@torch.no_grad()
def generate(model, prompts, num_samples=1, max_new_tokens=32, temperature=1.0, top_k=None,
             top_p=None, eos_id=None, pad_id=0, seeds=None):
    """Sample `num_samples` completions for each prompt (a list of token-id lists).

    Each prompt is prefilled once (the prompts' shared first tokens once for all, see prefill); its
    KV cache is then copied to its num_samples rows (row i*G + j is sample j of prompt i). Rows that
    have sampled EOS leave the batch (a quarter at a time), so that the decoding steps cost what the
    rows still running need. Returns completion_ids (N, T) padded with pad_id after EOS and
    completion_mask (N, T), 1 on generated tokens up to and including EOS; N = len(prompts) * G.
    eos_id: the id that ends a completion, or a sequence of them (Tokenizer.stop_ids), or None.
    seeds: one per prompt (None: drawn at random).
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    device = model.embed.weight.device
    ids, prompt_mask = left_pad(prompts, pad_id, device)
    B, P = ids.shape
    if P + max_new_tokens > model.cfg.block_size:
        raise ValueError(f"prompt of {P} tokens + {max_new_tokens} new tokens is longer than the "
                         f"model's context ({model.cfg.block_size})")
    seeds = seeds if seeds is not None else torch.randint(0, 2**31 - 1, (B,)).tolist()
    gens = row_generators(seeds, num_samples, device)

    cache, logits, prompt_mask = prefill(model, ids, prompt_mask, P + max_new_tokens)
    logits = logits[:, -1]
    cache = cache.repeat_interleave(num_samples)
    logits = logits.repeat_interleave(num_samples, dim=0)
    N = B * num_samples
    # padding exists only in the prompt; every generated position is a real key
    attn_mask = torch.ones(N, P + max_new_tokens, dtype=torch.long, device=device)
    attn_mask[:, :P] = prompt_mask.repeat_interleave(num_samples, dim=0)
    out = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)
    rows = torch.arange(N, device=device)     # the rows of `out` still in the (shrinking) batch
    done = torch.zeros(N, dtype=torch.bool, device=device)
    stops = stop_tensor(eos_id, device) if eos_id is not None else None   # once, not per token
    for t in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_k, top_p, gens)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        out[rows, t] = tok
        if stops is not None:
            done |= torch.isin(tok, stops)
        if done.all() or t == max_new_tokens - 1:
            break
        if 4 * done.sum() >= len(rows):       # a quarter of the rows has ended: stop computing them
            running = (~done).nonzero().squeeze(1)
            rows, tok, done = rows[running], tok[running], done[running]
            attn_mask, cache = attn_mask[running], cache.rows(running)
            gens = [gens[i] for i in running.tolist()]
        logits = model(tok[:, None], attention_mask=attn_mask[:, :P + t + 1], cache=cache)[:, -1]
    out = out[:, :t + 1]                        # every row has ended: drop the all-padding columns
    return out, completion_mask(out, eos_id)


def stop_tensor(eos_id, device):
    """An EOS id, or a sequence of ids that each end a completion, as a tensor for torch.isin."""
    return torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), device=device)


def completion_mask(completion_ids, eos_id):
    """(N, T) mask: 1 on every token up to and including the first EOS (any of them, for a sequence
    of stop ids), 0 after it."""
    if eos_id is None:
        return torch.ones_like(completion_ids)
    is_eos = torch.isin(completion_ids, stop_tensor(eos_id, completion_ids.device)).long()
    eos_before = is_eos.cumsum(-1) - is_eos       # EOS tokens strictly before position t
    return (eos_before == 0).long()
