"""A small decoder-only transformer, GPT-2 or Llama flavoured: the decoder (the sampler: engine.py).

One class covers both families the project loads (see load_weights.py):
  gpt2   (gpt2, distilgpt2): learned positions, LayerNorm, GELU MLP, biases, tied head.
  llama  (SmolLM2-135M):     RoPE, RMSNorm, SwiGLU MLP, grouped-query attention, tied head.

In the order of a forward pass: GPTConfig -> RMSNorm -> RoPE -> Layout (the batch's positions and
mask) -> attention -> MLP -> Block -> GPT.
Each forward is the plain formula, which autograd differentiates. train.py swaps RMSNorm and the
Llama MLP for fused.py's versions (fused.apply): the same forward bits, with written-out backwards
that keep less memory.

Shapes: B rows, T new positions, S = cached + new key positions, C = n_embd, H heads of size D.
Prompts are left-padded; `attention_mask` (B, past + T) marks real tokens with 1 and padding with 0.
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


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
    """y = x * r * w with r = 1 / sqrt(mean(x^2) + eps) per row, computed in (at least) fp32
    whatever x's dtype; y comes back in x's dtype. (gpt2 uses nn.LayerNorm.)"""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        r = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)           # (..., 1)
        return (x32 * r * self.weight.to(x32.dtype)).to(x.dtype)


def rope_cos_sin(positions, head_dim, base):
    """cos, sin of shape (n, 1, D) for integer positions (n,): one angle per head dim, shared by the
    heads. Angle_j = pos / base^(2j/D)."""
    j2 = torch.arange(0, head_dim, 2, device=positions.device).float()         # 2j
    inv_freq = 1.0 / (base ** (j2 / head_dim))
    angles = positions.float()[..., None] * inv_freq              # (n, D/2)
    angles = torch.cat([angles, angles], dim=-1)[:, None]          # (n, 1, D): halves convention
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate (x1, x2) = halves of the head dim by the position's angle (the Hugging Face layout).
    x (n, H, D); cos, sin (n, 1, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


@dataclass
class Layout:
    """Where a forward's positions sit and what each one sees: built once by GPT.hidden, read by
    every block.

    The per-position work (embedding, norms, projections, MLP: nearly all of it) runs on the n
    active positions of the (B, T) grid, packed as (n, C); attention unpacks them to the grid.
    """
    B: int
    T: int
    active: torch.Tensor | None     # (B, T) bool: the positions computed (None = all B*T)
    mask: torch.Tensor              # (B, 1, T, S) bool: query t may attend to key slot s
    cache: object = None            # engine.KVCache holding the S - T earlier positions, or None
    rope: tuple | None = None       # cos, sin (n, 1, D) of the active positions (llama), or None

    def pack(self, x):
        """(B, T, ...) -> (n, ...): the active positions."""
        return x.flatten(0, 1) if self.active is None else x[self.active]

    def unpack(self, x):
        """(n, ...) -> (B, T, ...), the inverse of pack; positions not active are zeros."""
        if self.active is None:
            return x.view(self.B, self.T, *x.shape[1:])
        grid = x.new_zeros(self.B, self.T, *x.shape[1:])
        grid[self.active] = x
        return grid


def causal_mask(attention_mask, past, T, S):
    """(B, 1, T, S) bool: query t (absolute past+t) sees the real keys s <= past+t, never a future
    or unfilled slot; a padding query also sees itself, so that no row of the softmax is empty (its
    output is never used). attention_mask (B, past + T), 1 on real tokens; later slots are real."""
    attention_mask = F.pad(attention_mask, (0, S - attention_mask.size(1)), value=1)
    q_abs = torch.arange(past, past + T, device=attention_mask.device)[:, None]
    k_abs = torch.arange(S, device=attention_mask.device)[None, :]
    mask = (k_abs <= q_abs)[None] & attention_mask.bool()[:, None, :]
    return (mask | (k_abs == q_abs)[None])[:, None]


def attend(q, k, v, mask):
    """softmax(q k^T / sqrt(D) + mask) v with grouped-query attention: query head h reads kv head
    h // rep.

    q (B, H, T, D); k, v (B, Hkv, S, D); mask (B, 1, T, S) bool. The rep query heads that share a kv
    head are stacked as rows of one matmul. For our short sequences (S < a few hundred) two plain
    matmuls are faster on a CPU than torch's fused attention with a mask, forward and backward.
    """
    B, H, T, D = q.shape
    Hkv, S = k.size(1), k.size(2)
    rep = H // Hkv
    scores = (q.reshape(B, Hkv, rep * T, D) @ k.transpose(-1, -2)) * D ** -0.5  # (B, Hkv, rep*T, S)
    # the softmax in (at least) fp32
    scores = scores.view(B, Hkv, rep, T, S).to(torch.promote_types(q.dtype, torch.float32))
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

    def forward(self, x, layout, layer):
        """x (n, C): the active positions (layout.pack); attention itself runs on the (B, T) grid.
        layer: this block's index, for its slot in the cache."""
        H, Hkv, D = self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim
        q = self.q_proj(x).view(-1, H, D)                         # (n, H, D)
        k = self.k_proj(x).view(-1, Hkv, D)                       # (n, Hkv, D)
        v = self.v_proj(x).view(-1, Hkv, D)
        if layout.rope is not None:
            q, k = apply_rope(q, *layout.rope), apply_rope(k, *layout.rope)
        q, k, v = (layout.unpack(t).transpose(1, 2) for t in (q, k, v))     # (B, heads, T, D)
        if layout.cache is not None:
            k, v = layout.cache.update(layer, k, v)               # (B, Hkv, S, D)
            k, v = k.to(q.dtype), v.to(q.dtype)                   # a cache may hold another dtype
        y = attend(q, k, v, layout.mask)                          # (B, H, T, D)
        return self.o_proj(layout.pack(y.transpose(1, 2)).reshape(-1, H * D))


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
        return (F.silu(x @ w_gate.t()) * (x @ w_up.t())) @ w_down.t()    # SwiGLU: silu(gate) * up


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        norm = (lambda: nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)) if cfg.arch == "gpt2" \
            else (lambda: RMSNorm(cfg.n_embd, cfg.norm_eps))
        self.attn_norm, self.attn = norm(), Attention(cfg)
        self.mlp_norm, self.mlp = norm(), MLP(cfg)

    def forward(self, x, layout, layer):
        x = x + self.attn(self.attn_norm(x), layout, layer)
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
        """Cast the embedding and the linear layers to dtype (bf16 where it is fast); the norms'
        weights stay fp32: they are few, and a bf16 weight near 1 moves in steps of 0.4%, which many
        updates at a small learning rate would never reach. Each cast parameter gets a new tensor: a
        reference kept to the old one keeps its values."""
        norms = {id(p) for m in self.modules() if isinstance(m, (RMSNorm, nn.LayerNorm))
                 for p in m.parameters()}
        for p in self.parameters():
            if id(p) not in norms:
                p.data = p.data.to(dtype)
        return self

    def hidden(self, idx, attention_mask=None, cache=None, last=None, active=None):
        """The final normalised hidden states (B, T', C) of the last `last` positions (all T when
        None).

        idx: (B, T) token ids of the new positions; attention_mask: (B, past + T) over cached + new
        positions (None = no padding); cache: an engine.KVCache holding S - T earlier positions, or
        None. active: (B, T) bool, the positions to compute (None = all). The others come back as
        zeros, and as keys they hold zeros, so no active position may attend to one: leave out only
        padding (masked anyway) or the positions after the last one a row needs (after EOS), never
        one in between.
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
        layout = Layout(B, T, active, causal_mask(attention_mask, past, T, S), cache)

        x = self.embed(layout.pack(idx))                                               # (n, C)
        if self.pos_embed is not None:
            x = x + self.pos_embed(layout.pack(positions))
        else:
            layout.rope = rope_cos_sin(layout.pack(positions), self.cfg.head_dim,
                                       self.cfg.rope_base)
        for i, block in enumerate(self.blocks):
            x = block(x, layout, i)
        x = layout.unpack(x)                                                           # (B, T, C)
        if last is not None:
            x = x[:, -last:]
        return self.norm(x)

    def forward(self, idx, attention_mask=None, cache=None, logits_to_keep=None, active=None):
        """Logits (B, T', V) of the last `logits_to_keep` positions (all T when None): see hidden.
        The output head is tied to the embedding."""
        h = self.hidden(idx, attention_mask, cache, logits_to_keep, active)
        return h @ self.embed.weight.t()
