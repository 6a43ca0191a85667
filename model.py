"""A small decoder-only transformer, GPT-2 or Llama flavoured, with a KV cache and a batched sampler.

One class covers both families the project loads (see load_weights.py):
  gpt2   (gpt2, distilgpt2): learned positions, LayerNorm, GELU MLP, biases, tied head.
  llama  (SmolLM2-135M):     RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, tied head.

In the order of a forward pass: GPTConfig -> RMSNorm -> RoPE -> attention -> MLP -> Block -> GPT, then the KV cache
and prefill (the prompts run once), then the sampler (generate). Each forward is the plain formula; while autograd
records, RMSNorm and the Llama MLP run it through fused.py, whose written-out backwards keep less memory.

Shapes: B rows, T new positions, S = cached + new key positions, C = n_embd, H heads of size D.
Prompts are left-padded; `attention_mask` (B, past + T) marks real tokens with 1 and padding with 0.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fused import RMSNormFunction, SwiGLUFunction


@dataclass
class GPTConfig:
    arch: str = "llama"          # "gpt2" or "llama"
    vocab_size: int = 49152
    block_size: int = 8192       # context length
    n_layer: int = 30
    n_head: int = 9
    n_kv_head: int = 3           # < n_head: grouped-query attention (llama only)
    n_embd: int = 576
    n_inner: int = 1536          # MLP hidden size
    norm_eps: float = 1e-5
    rope_base: float = 100000.0

    @property
    def head_dim(self):
        return self.n_embd // self.n_head


class RMSNorm(nn.Module):
    """y = x * r * w with r = 1 / sqrt(mean(x^2) + eps) per row, computed in (at least) fp32 whatever x's dtype;
    y comes back in x's dtype. (gpt2 uses nn.LayerNorm.)"""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if torch.is_grad_enabled():         # training: the same y, with a backward that keeps less (fused.py)
            return RMSNormFunction.apply(x, self.weight, self.eps)
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        r = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)           # (..., 1)
        return (x32 * r * self.weight.to(x32.dtype)).to(x.dtype)


def rope_cos_sin(positions, head_dim, base):
    """cos, sin of shape (n, 1, D) for integer positions (n,): one angle per head dim, shared by the heads.
    Angle_j = pos / base^(2j/D)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim))
    angles = positions.float()[..., None] * inv_freq              # (n, D/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]          # (n, 1, D): halves convention
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate (x1, x2) = halves of the head dim by the position's angle (the Hugging Face layout).
    x (n, H, D); cos, sin (n, 1, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def pack(x, keep):
    """(B, T, ...) -> (n, ...): the n positions where keep (B, T) is True (all B*T when keep is None)."""
    return x.flatten(0, 1) if keep is None else x[keep]


def unpack(x, keep, B, T):
    """(n, ...) -> (B, T, ...), the inverse of pack; positions not kept are zeros."""
    if keep is None:
        return x.view(B, T, *x.shape[1:])
    grid = x.new_zeros(B, T, *x.shape[1:])
    grid[keep] = x
    return grid


def attend(q, k, v, mask):
    """softmax(q k^T / sqrt(D) + mask) v with grouped-query attention: query head h reads kv head h // rep.

    q (B, H, T, D); k, v (B, Hkv, S, D); mask (B, 1, T, S) bool. The rep query heads that share a kv head
    are stacked as rows of one matmul. For our short sequences (S < a few hundred) two plain matmuls are
    faster on a CPU than torch's fused attention with a mask, forward and backward.
    """
    B, H, T, D = q.shape
    Hkv, S = k.size(1), k.size(2)
    rep = H // Hkv
    scores = (q.reshape(B, Hkv, rep * T, D) @ k.transpose(-1, -2)) * D ** -0.5     # (B, Hkv, rep*T, S)
    scores = scores.view(B, Hkv, rep, T, S).to(torch.promote_types(q.dtype, torch.float32))   # softmax in >= fp32
    scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
    probs = scores.softmax(-1).to(v.dtype).view(B, Hkv, rep * T, S)
    return (probs @ v).view(B, H, T, D)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        bias = cfg.arch == "gpt2"
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=bias)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=bias)

    def forward(self, x, mask, rope, cache, layer, keep, B, T):
        """x (n, C): the n kept positions of a (B, T) grid (see GPT.forward); attention itself runs on the grid."""
        H, Hkv, D = self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        q = self.q_proj(x).view(-1, H, D)                         # (n, H, D)
        k = self.k_proj(x).view(-1, Hkv, D)                       # (n, Hkv, D)
        v = self.v_proj(x).view(-1, Hkv, D)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = (unpack(t, keep, B, T).transpose(1, 2) for t in (q, k, v))     # (B, heads, T, D)
        if cache is not None:
            k, v = cache.update(layer, k, v)                      # (B, Hkv, S, D)
            k, v = k.to(q.dtype), v.to(q.dtype)                   # a cache may be kept in another dtype
        y = attend(q, k, v, mask)                                 # (B, H, T, D)
        return self.o_proj(pack(y.transpose(1, 2), keep).reshape(-1, H * D))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.arch = cfg.arch
        if cfg.arch == "gpt2":
            self.up_proj = nn.Linear(cfg.n_embd, cfg.n_inner)
            self.down_proj = nn.Linear(cfg.n_inner, cfg.n_embd)
        else:
            self.gate_proj = nn.Linear(cfg.n_embd, cfg.n_inner, bias=False)
            self.up_proj = nn.Linear(cfg.n_embd, cfg.n_inner, bias=False)
            self.down_proj = nn.Linear(cfg.n_inner, cfg.n_embd, bias=False)

    def forward(self, x):
        if self.arch == "gpt2":
            return self.down_proj(F.gelu(self.up_proj(x), approximate="tanh"))
        w_gate, w_up, w_down = self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight
        if torch.is_grad_enabled():         # training: the same y, with a backward that keeps less (fused.py)
            return SwiGLUFunction.apply(x, w_gate, w_up, w_down)
        return (F.silu(x @ w_gate.t()) * (x @ w_up.t())) @ w_down.t()           # SwiGLU: silu(gate) * up, down


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        norm = (lambda: nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)) if cfg.arch == "gpt2" \
            else (lambda: RMSNorm(cfg.n_embd, cfg.norm_eps))
        self.attn_norm, self.attn = norm(), Attention(cfg)
        self.mlp_norm, self.mlp = norm(), MLP(cfg)

    def forward(self, x, mask, rope, cache, layer, keep, B, T):
        x = x + self.attn(self.attn_norm(x), mask, rope, cache, layer, keep, B, T)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.arch not in ("gpt2", "llama"):
            raise ValueError(f"unknown arch {cfg.arch!r}; expected 'gpt2' or 'llama'")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_embed = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.arch == "gpt2" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps) if cfg.arch == "gpt2" \
            else RMSNorm(cfg.n_embd, cfg.norm_eps)
        # the output head is tied to the embedding: logits = h @ embed.weight^T

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def to_compute_dtype(self, dtype):
        """Cast the embedding and the linear layers to dtype (bf16 where it is fast); the norms' weights stay
        fp32: they are few, and a bf16 weight near 1 moves in steps of 0.4%, which many updates at a small
        learning rate would never reach. Each cast parameter gets a new tensor: a reference kept to the old
        one keeps its values."""
        norms = {id(p) for m in self.modules() if isinstance(m, (RMSNorm, nn.LayerNorm)) for p in m.parameters()}
        for p in self.parameters():
            if id(p) not in norms:
                p.data = p.data.to(dtype)
        return self

    def forward(self, idx, attention_mask=None, cache=None, logits_to_keep=None, return_hidden=False, keep=None):
        """Logits (B, T', V) for the last `logits_to_keep` positions (all T when None).

        idx: (B, T) token ids of the new positions; attention_mask: (B, past + T) over cached + new positions
        (None = no padding); cache: a KVCache holding S - T earlier positions, or None.
        With return_hidden the final normalised hidden states (B, T', C) come back instead of logits.
        keep: (B, T) bool, the positions to compute (None = all). The per-position work (embedding, norms,
        projections, MLP: nearly all of it) runs on the kept positions only, packed as (n, C); the others come
        back as zeros, and as keys they hold zeros, so no kept position may attend to one: drop only padding
        (masked anyway) or the positions after the last one a row needs (after EOS), never one in between.
        """
        B, T = idx.shape
        past = cache.pos if cache is not None else 0
        if past + T > self.cfg.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than the model's context "
                             f"({self.cfg.block_size})")
        if attention_mask is None:
            attention_mask = torch.ones(B, past + T, dtype=torch.long, device=idx.device)
        # a left-padded row's first real token gets position 0
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]     # (B, T)
        S = cache.max_len if cache is not None else past + T                          # key slots
        attention_mask = F.pad(attention_mask, (0, S - attention_mask.size(1)), value=1)
        # query t (absolute past+t) sees real keys s <= past+t, never a future or unfilled slot; a padding
        # query also sees itself so that no row of the softmax is empty (its output is never used)
        q_abs = torch.arange(past, past + T, device=idx.device)[:, None]
        k_abs = torch.arange(S, device=idx.device)[None, :]
        mask = (k_abs <= q_abs)[None] & attention_mask.bool()[:, None, :]
        mask = (mask | (k_abs == q_abs)[None])[:, None]                                 # (B, 1, T, S)

        x = self.embed(pack(idx, keep))                                                # (n, C)
        rope = None
        if self.pos_embed is not None:
            x = x + self.pos_embed(pack(positions, keep))
        else:
            rope = rope_cos_sin(pack(positions, keep), self.cfg.head_dim, self.cfg.rope_base)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, rope, cache, i, keep, B, T)
        x = unpack(x, keep, B, T)                                                      # (B, T, C)
        if logits_to_keep is not None:
            x = x[:, -logits_to_keep:]
        x = self.norm(x)
        return x if return_hidden else x @ self.embed.weight.t()

    def new_cache(self, batch_size, max_len, dtype=None):
        p = self.embed.weight
        return KVCache(self.cfg, batch_size, max_len, p.device, dtype or p.dtype)


# ----------------------------------------------------------------------------- KV cache and prefill

class KVCache:
    """Preallocated keys and values, one (B, n_kv_head, max_len, D) buffer per layer.

    `update` writes the new positions and returns the layer's whole buffer: slots not written yet lie in the
    future of every query, so the causal mask hides them, and a whole buffer multiplies faster than a slice.
    Writes are autograd-aware, so a cache filled with gradients on (the training forward with a shared
    prompt) backpropagates.
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
        """A cache of B*repeats rows where row i*repeats+j is a copy of row i: one prefill serves G samples."""
        return self.rows(torch.arange(self.k[0].size(0), device=self.k[0].device).repeat_interleave(repeats))


def left_pad(sequences, pad_id, device=None):
    """Token lists -> ids (B, P) left-padded with pad_id, and the mask (B, P) with 1 on real tokens."""
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
    """How many first tokens every row of the left-padded ids (B, P) has in common (the chat template, a system
    prompt), keeping at least one token of each row its own; 0 for a single row."""
    lens = mask.sum(1)
    m = int(lens.min()) - 1
    if ids.size(0) < 2 or m < 1:
        return 0
    cols = (ids.size(1) - lens)[:, None] + torch.arange(m, device=ids.device)     # each row's first m tokens
    firsts = ids.gather(1, cols)
    differs = (firsts != firsts[:1]).any(0)
    return int(differs.nonzero()[0]) if differs.any() else m


def prefill(model, ids, mask, max_len, return_hidden=False):
    """Run the left-padded prompts ids (B, P) into a new KV cache of max_len slots, their shared first tokens
    once for all rows. Returns (cache, logits (or hidden states) of each row's last position (B, 1, .), mask).

    With L shared tokens the cache row is [prefix | padding | rest of the row] instead of [padding | prefix |
    rest]: the same tokens at the same positions (positions count real tokens only), the prefix computed once
    and copied to the B rows (autograd-aware: its gradient is the sum over the rows). The mask returned (B, P)
    describes that layout; use it for every later position's attention mask.
    """
    B, P = ids.shape
    L = shared_prefix_len(ids, mask)
    cache = model.new_cache(1 if L else B, max_len)
    if L:
        pad = P - mask.sum(1)                                                           # (B,) padding per row
        model(ids[:1, pad[0]:pad[0] + L], cache=cache, return_hidden=True, logits_to_keep=1)
        cache = cache.rows(torch.zeros(B, dtype=torch.long, device=ids.device))
        rest = (torch.arange(P - L, device=ids.device)[None] >= pad[:, None]).to(mask.dtype)   # padding after the prefix
        mask = torch.cat([mask.new_ones(B, L), rest], dim=1)
    out = model(ids[:, L:], attention_mask=mask, cache=cache, logits_to_keep=1, return_hidden=return_hidden,
                keep=mask[:, L:].bool())                                              # padding: no work
    return cache, out, mask


# ----------------------------------------------------------------------------- sampling

def filter_logits(logits, top_k=None, top_p=None):
    """Set to -inf every logit outside the top-k and outside the smallest set with probability >= top_p."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p     # mass before this token already >= p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def row_generators(seeds, num_samples, device):
    """One torch.Generator per completion row, seeded from (prompt seed, sample index): a prompt's
    samples do not depend on which other prompts share the batch. Each lives on the model's device (torch has
    generators for cpu, cuda and, since torch 2.0, mps: pick_device's devices), so a row's uniform is drawn
    there; the same seed draws different numbers on different kinds of device."""
    gens = []
    for s in seeds:
        for j in range(num_samples):
            g = torch.Generator(device=device)
            g.manual_seed(int(s) * 1_000_003 + j)
            gens.append(g)
    return gens


def sample_next(logits, temperature, top_k, top_p, generators):
    """Next token ids (N,) from logits (N, V): greedy at temperature 0, else inverse-CDF sampling with
    one uniform number per row from that row's generator."""
    if temperature == 0:
        return logits.argmax(-1)
    if temperature != 1.0 or top_k is not None or top_p is not None:
        logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = logits.softmax(-1, dtype=torch.float32)           # one pass from bf16 logits at temperature 1
    u = torch.cat([torch.rand(1, generator=g, device=logits.device) for g in generators])
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    return idx.clamp(max=logits.size(-1) - 1)


@torch.no_grad()
def generate(model, prompts, num_samples=1, max_new_tokens=32, temperature=1.0, top_k=None, top_p=None,
             eos_id=None, pad_id=0, seeds=None):
    """Sample `num_samples` completions for each prompt (a list of token-id lists).

    Each prompt is prefilled once (the prompts' shared first tokens once for all, see prefill); its KV cache
    is then copied to its num_samples rows (row i*G + j is sample j of prompt i). Rows that have sampled EOS
    leave the batch (a quarter at a time), so that the decoding steps cost what the rows still running need.
    Returns completion_ids (N, T) padded with pad_id after EOS and completion_mask (N, T), 1 on generated
    tokens up to and including EOS; N = len(prompts) * G. eos_id: the id that ends a completion, or a sequence
    of them (Tokenizer.stop_ids), or None.
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
    rows = torch.arange(N, device=device)       # the rows of `out` still in the batch, which shrinks as rows end
    done = torch.zeros(N, dtype=torch.bool, device=device)
    stops = stop_tensor(eos_id, device) if eos_id is not None else None     # once, not once per token
    for t in range(max_new_tokens):
        tok = sample_next(logits, temperature, top_k, top_p, gens)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        out[rows, t] = tok
        if stops is not None:
            done |= torch.isin(tok, stops)
        if done.all() or t == max_new_tokens - 1:
            break
        if 4 * done.sum() >= len(rows):         # a quarter of the rows has ended: stop computing them
            keep = (~done).nonzero().squeeze(1)
            rows, tok, done, attn_mask, cache = rows[keep], tok[keep], done[keep], attn_mask[keep], cache.rows(keep)
            gens = [gens[i] for i in keep.tolist()]
        logits = model(tok[:, None], attention_mask=attn_mask[:, :P + t + 1], cache=cache)[:, -1]
    out = out[:, :t + 1]                          # every row has ended: drop the all-padding columns
    return out, completion_mask(out, eos_id)


def stop_tensor(eos_id, device):
    """An EOS id, or a sequence of ids that each end a completion, as a tensor for torch.isin."""
    return torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), device=device)


def completion_mask(completion_ids, eos_id):
    """(N, T) mask: 1 on every token up to and including the first EOS (any of them, for a sequence of stop
    ids), 0 after it."""
    if eos_id is None:
        return torch.ones_like(completion_ids)
    is_eos = torch.isin(completion_ids, stop_tensor(eos_id, completion_ids.device)).long()
    eos_before = is_eos.cumsum(-1) - is_eos       # EOS tokens strictly before position t
    return (eos_before == 0).long()
