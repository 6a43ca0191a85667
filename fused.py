"""Autograd Functions with their backward written out, to save memory in the training pass, and
`apply`, which swaps the first two into a model.

Autograd keeps every intermediate tensor that a backward could need. These keep their inputs (and
the norm's 1/RMS per row) and compute the rest again in the backward (the MLP's two projections,
the logits): the same operations on the same numbers give the same bits, and the training pass
holds much less memory for a few more matmuls; each forward is the plain formula:
    RMSNormFunction    y = x * r * w,  r = 1 / sqrt(mean(x^2) + eps)    model.RMSNorm (Llama)
    SwiGLUFunction     y = (silu(x Wg^T) * (x Wu^T)) Wd^T                model.MLP (Llama)
    SelectedLogprobs   log_softmax(h W^T)[token]                         logprobs_from_hidden (below)
model.py holds only the plain lines. `apply(model)`, called once on the model that trains (train.py;
as nanochat swaps in its fp8 layers), makes its RMSNorms and Llama MLPs run the first two Functions
while autograd records (the policy's training pass) and the plain lines otherwise (sampling, frozen
log-probs), to the same forward bits. tests/test_fused.py checks the swap against the plain model,
and the norm's and the MLP's backward against finite differences and autograd through the plain
lines; tests/test_grpo.py checks the log-prob's against autograd.
"""
import ctypes
import os

import torch
import torch.nn.functional as F

from model import MLP, RMSNorm


class RMSNormFunction(torch.autograd.Function):
    """y = x * r * w with r = 1 / sqrt(mean(x^2) + eps) per row, in (at least) fp32 whatever x is.

    The backward is written out, so that all it keeps is x in its own dtype and r (one float a row),
    not the three fp32 copies of x that autograd would keep for the same lines:
        dx = r * (g w - x r^2 mean(g w x)),    dw = sum over rows of g x r
    """

    @staticmethod
    def forward(ctx, x, weight, eps):
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))
        r = torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)                # (..., 1)
        ctx.save_for_backward(x, weight, r)
        return (x32 * r * weight.to(x32.dtype)).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, weight, r = ctx.saved_tensors
        x32 = x.to(r.dtype)
        g32 = g.to(r.dtype)
        gw = g32 * weight.to(r.dtype)
        dx = r * (gw - x32 * r.pow(2) * (gw * x32).mean(-1, keepdim=True))
        dw = (g32 * x32 * r).flatten(0, -2).sum(0)
        return dx.to(x.dtype), dw.to(weight.dtype), None


class SwiGLUFunction(torch.autograd.Function):
    """down(silu(x Wg^T) * (x Wu^T)), the Llama MLP, for x (n, C), weights Wg, Wu (I, C), Wd (C, I).

    The backward is written out and keeps only x: it computes gate = x Wg^T and up = x Wu^T again
    (the same matmuls on the same numbers, so the same bits), then silu(gate) and the product.
    Autograd would keep four (n, I) tensors (gate, up, silu(gate), the product), the largest
    activations of the training pass; this keeps one (n, C) for two more matmuls in the backward.
    With h = silu(gate) * up:
        dWd = dy^T h;  dh = dy Wd;  dup = dh silu(gate);  dgate = silu'(gate) dh up;
        dx = dgate Wg + dup Wu;  dWg = dgate^T x;  dWu = dup^T x
    """

    @staticmethod
    def forward(ctx, x, w_gate, w_up, w_down):
        ctx.save_for_backward(x, w_gate, w_up, w_down)
        return (F.silu(x @ w_gate.t()) * (x @ w_up.t())) @ w_down.t()

    @staticmethod
    def backward(ctx, dy):
        x, w_gate, w_up, w_down = ctx.saved_tensors
        gate, up = x @ w_gate.t(), x @ w_up.t()                 # as the forward computed them
        act = F.silu(gate)
        dh = dy @ w_down
        dgate = torch.ops.aten.silu_backward(dh * up, gate)     # the kernel autograd uses for silu
        dup = dh * act
        return dgate @ w_gate + dup @ w_up, dgate.t() @ x, dup.t() @ x, dy.t() @ (act * up)


class SelectedLogprobs(torch.autograd.Function):
    """log_softmax(hidden @ weight^T)[token] for rows of hidden (n, C), weight (V, C), tokens (n,):
    (n,) fp32.

    The log-softmax runs in fp32 whatever the logits' dtype. The backward is written out,
        d logp / d logits = onehot(token) - softmax(logits),
    and keeps only what the forward had as inputs: it computes the logits and the softmax again
    (the same matmul and log-softmax on the same numbers, so the same bits) rather than keep the
    (n, V) probabilities of every chunk until the backward (100 MB per 512 tokens in fp32, half in
    bf16). Only the token's own entry, g (1 - p_token), is taken from the fp32 log-prob: with
    p_token near 1, 1 - p in bf16 would lose most of its digits. Memory holds one (n, V) block.
    """

    @staticmethod
    def forward(ctx, hidden, weight, token_ids):
        logprobs = torch.log_softmax(hidden @ weight.t(), dim=-1, dtype=torch.float32)      # (n, V)
        selected = logprobs.gather(-1, token_ids[:, None]).squeeze(-1)
        if any(ctx.needs_input_grad):               # not for the reference / old log-prob passes
            ctx.save_for_backward(hidden, weight, token_ids, selected)
        return selected

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, token_ids, selected = ctx.saved_tensors
        logprobs = torch.log_softmax(hidden @ weight.t(), dim=-1, dtype=torch.float32)      # as forward
        probs = logprobs.exp_().to(hidden.dtype)
        del logprobs
        grad_logits = probs.mul_(-grad[:, None].to(probs.dtype))                      # -g p
        rows = torch.arange(token_ids.size(0), device=token_ids.device)
        # g (1 - p) on each row's own token; an index_put, where scatter_ copies the whole (n, V)
        # block on a CPU
        grad_logits[rows, token_ids] = (-grad * torch.expm1(selected)).to(probs.dtype)
        return grad_logits @ weight, grad_logits.t() @ hidden, None


def logprobs_from_hidden(hidden, weight, token_ids, mask=None, chunk_tokens=None):
    """grpo.token_logprobs(hidden @ weight^T, token_ids) where mask is 1: hidden (N, T, C), weight (V, C),
    token_ids and mask (N, T) -> (N, T) fp32, 0 outside the mask.

    Computed in chunks of tokens by SelectedLogprobs (its backward written out from the forward's
    own softmax), so that the (N, T, V) logits are never held at once.
    """
    # Without gradients (reference and old log-probs) chunks of 128 tokens are ~20% faster than 512 on a
    # CPU: the allocator reuses their fp32 log-softmax (25 MB) instead of mapping fresh memory every chunk.
    chunk_tokens = chunk_tokens or (512 if torch.is_grad_enabled() else 128)
    keep = mask.bool() if mask is not None else torch.ones_like(token_ids, dtype=torch.bool)
    h, ids = hidden[keep], token_ids[keep]                                  # (n, C), (n,)
    chunks = [SelectedLogprobs.apply(h[i:i + chunk_tokens], weight, ids[i:i + chunk_tokens])
              for i in range(0, h.size(0), chunk_tokens)]
    out = torch.zeros(token_ids.shape, dtype=torch.float32, device=hidden.device)
    return out.masked_scatter(keep, torch.cat(chunks)) if chunks else out


# ----------------------------------------------------------------------------- swapping them in

class FusedRMSNorm(RMSNorm):
    """model.RMSNorm whose training pass runs RMSNormFunction."""

    def forward(self, x):
        if not torch.is_grad_enabled():     # no backward to keep tensors for: the plain lines
            return super().forward(x)
        return RMSNormFunction.apply(x, self.weight, self.eps)


class FusedSwiGLU(MLP):
    """model.MLP (Llama) whose training pass runs SwiGLUFunction."""

    def forward(self, x):
        if not torch.is_grad_enabled():
            return super().forward(x)
        w_gate, w_up, w_down = self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight
        return SwiGLUFunction.apply(x, w_gate, w_up, w_down)


def apply(model):
    """Make the model's RMSNorms and Llama MLPs the versions above, in place, and return the model.

    Only each module's class changes: the parameters, the state dict and the forward's bits stay the
    same; what changes is what the training pass keeps for its backward. GPT-2's LayerNorm and GELU
    MLP stay as they are (autograd's own)."""
    for m in model.modules():
        if type(m) is RMSNorm:
            m.__class__ = FusedRMSNorm
        elif type(m) is MLP and m.arch == "llama":
            m.__class__ = FusedSwiGLU
    return model


# ----------------------------------------------------------------------------- the C allocator

def use_huge_pages():
    """Ask PyTorch's CPU allocator to back every tensor of 2 MB or more with transparent huge pages (its
    THP_MEM_ALLOC_ENABLE; Linux grants them where /sys/kernel/mm/transparent_hugepage/enabled says madvise or
    always). A training step allocates and frees about a gigabyte of activations and gradients, and in 4 KB pages
    each allocation pays its page faults again: 3.6M faults in a 4-step run, 1.2M with huge pages. PyTorch reads
    the setting once, at its first tensor of 2 MB or more, so call this before that (train.py does, first thing);
    a value already in the environment (THP_MEM_ALLOC_ENABLE=0) wins."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


TRIM_EACH_STEP = True      # give_back_free_heap acts; use_heap turns it off for --heap=keep


def give_back_free_heap():
    """glibc's malloc_trim(0): hand the C heap's free pages back to the OS, once a step
    (optim.MasterAdamW.step, load_weights.drop_from_memory), unless --heap=keep (use_heap). Blocks under the mmap
    threshold stay in the heap, and over many steps their free gaps add up (~0.2 GiB by step 14 of the default
    run); it costs a few milliseconds, and the next step's page faults. A no-op where the C library is not glibc."""
    if TRIM_EACH_STEP:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def use_heap(setting, dtype, device):
    """--heap: how glibc's malloc serves the CPU tensors that a step allocates and frees (a gigabyte or so).
      keep   (auto's choice but for fp32 on a CPU) every block under 64 MB (the largest a step makes, the
             vocabulary's 57 MB, included) comes from the heap, and its free pages stay for the next step: no page
             faults to get them again. The peak stays that of the step itself, as the reference's pass reuses the
             training pass's pages (load_weights.load_into_memory). The default bf16 run: 1.2x faster, the same
             2.8 GiB (README, "the heap kept").
      map    (auto's choice for fp32 on a CPU) every block of 1 MB or more gets pages of its own, and the heap's
             free pages go back once a step (give_back_free_heap): an fp32 run's free gaps would put it over
             3 GiB, and the time it costs (page faults) is fp32's, not the 2 minutes' target.
      glibc  glibc's own thresholds (it raises the mmap threshold to the largest block freed, up to 32 MB), and
             the free heap pages back once a step.
    A no-op where the C library is not glibc."""
    global TRIM_EACH_STEP
    if setting == "auto":
        setting = "map" if dtype == torch.float32 and torch.device(device).type == "cpu" else "keep"
    TRIM_EACH_STEP = setting != "keep"
    if setting == "keep":
        # oneDNN keeps a compiled bf16 matmul for each shape it meets, up to 1,024 of them: with the heap kept that
        # creep (~8 MB a step) is the run's; 64 of them keep it within the heap's free pages. oneDNN reads this
        # at its first matmul, after this call in train.py.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
        set_mmap_threshold(64 << 20)
        mallopt(M_TRIM_THRESHOLD, (1 << 31) - 1)     # else free() gives the heap's top back past 128 KB
    elif setting == "map":
        set_mmap_threshold(1 << 20)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3       # glibc's malloc.h


def set_mmap_threshold(nbytes):
    """Blocks of nbytes or more are mapped (mmap) and handed back to the OS the moment they are freed; glibc no
    longer moves the threshold."""
    mallopt(M_MMAP_THRESHOLD, nbytes)


def mallopt(option, value):
    """glibc's mallopt(option, value); a no-op where the C library is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(option, value)
    except (OSError, AttributeError):
        pass
