"""AdamW on fp32 master weights, for a model that samples and trains in bf16 (or in fp32).

AdamW (Loshchilov & Hutter 2019, torch.optim.AdamW's update) per tensor, with g the clipped gradient, t the step:
    m = b1 m + (1 - b1) g                         first moment
    v = b2 v + (1 - b2) g^2                       second moment
    w = w (1 - lr wd) - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
A step moves a weight by about lr (m / sqrt(v) is ~1), 1e-5 by default, while a bf16 weight w can only move in
steps of |w|/256 to |w|/128 (8 significant bits): on bf16 weights most steps would round away. So w stays fp32
(the master weights), and the model gets w rounded to its dtype after each step.

The moments may be kept in bf16 (moments="bf16", train.py's default: 0.5 GiB less for 134.5M parameters); the
update itself runs in fp32 on an upcast slice of them. m takes a tenth of each new gradient, so rounding it to
the nearest bf16 costs at most 2^-9 of it. v takes 1 - b2 = 0.001 of each g^2, less than bf16's half-step (2^-9
of v) once t is past a few hundred: rounded to the nearest, v would stop following g^2. So v is rounded
stochastically, up with probability equal to the remainder's share of the step, which keeps E[v] exact.
"""
import sys

import torch
from torch.optim.adamw import adamw
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from fused import give_back_free_heap


class MasterAdamW:
    """torch.optim.AdamW's update on fp32 master weights of a model that computes in bf16 (or in fp32).

    The bf16 model samples, runs the forward and holds bf16 gradients; each step upcasts them a slice at a time,
    moves the fp32 master weight with torch's fused AdamW kernel (torch's plain implementation of the same update
    on a device that has none, see fused_adamw) and copies it, rounded, back into the model.
    Nothing holds fp32 gradients for the whole model, nor a second low-precision copy to sample from. An fp32
    parameter is its own master weight. The update is the formula at the top of this file.
    """

    SLICE = 1 << 22                # numbers per slice of a tensor that the update upcasts at a time

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, fp32_weights=None, fused=None,
                 moments="fp32"):
        """params: the model's parameters (bf16 or fp32); fp32_weights: their fp32 values in the same order
        (by default the params' own), from before a cast to bf16 (see cast_for_training); they become the
        master weights, not copies of them. fused: use torch's fused kernel (default: where it has one).
        moments: "fp32" or "bf16", the dtype that m and v are kept in between steps."""
        if moments not in MOMENT_DTYPES:
            raise ValueError(f"moments={moments!r}: AdamW keeps its moments in one of {', '.join(MOMENT_DTYPES)}")
        params = list(params)
        if fp32_weights is not None and len(fp32_weights) != len(params):
            raise ValueError(f"{len(fp32_weights)} fp32 weights for {len(params)} parameters")
        pairs = [(p, w) for p, w in zip(params, fp32_weights or params) if p.requires_grad]
        for p, _ in pairs:
            if p.dtype not in (torch.float32, torch.bfloat16):
                raise ValueError(f"MasterAdamW trains fp32 or bf16 parameters, not {p.dtype}")
        self.params = [p for p, _ in pairs]
        self.master = [p if p.dtype == torch.float32 else w.detach().float() for p, w in pairs]
        self.moments = moments
        self.exp_avg = [torch.zeros_like(w, dtype=MOMENT_DTYPES[moments]) for w in self.master]
        self.exp_avg_sq = [torch.zeros_like(w, dtype=MOMENT_DTYPES[moments]) for w in self.master]
        # one slice of fp32 gradient (and of each bf16 moment), reused: a fresh 16 MB tensor per slice costs its
        # page faults every step
        largest = min(max((p.numel() for p in self.params), default=0), self.SLICE)
        device = self.params[0].device if self.params else torch.device("cpu")
        self.grad32 = torch.empty(largest, dtype=torch.float32, device=device)
        if moments == "bf16":
            self.m32, self.v32 = torch.empty_like(self.grad32), torch.empty_like(self.grad32)
            # the stochastic rounding's random low bits: one fixed draw, read from a different offset each time
            self.dither = torch.randint(0, 1 << 16, (largest + DITHER_OFFSETS,), dtype=torch.int32, device=device,
                                        generator=torch.Generator(device).manual_seed(0))
        self.lr, self.betas, self.eps, self.weight_decay, self.t = lr, betas, eps, weight_decay, 0
        self.fused = fused if fused is not None else all(fused_adamw(p.device) for p in self.params)

    @classmethod
    def slices(cls, p):
        """Slices of p's flat view, 4M numbers each: an fp32 copy of one stays small even for the 28M embedding."""
        return [slice(i, i + cls.SLICE) for i in range(0, p.numel(), cls.SLICE)]

    def upcast(self, grad):
        """A slice of a gradient in fp32, in the reused buffer (valid until the next call)."""
        return self.grad32[:grad.numel()].copy_(grad)

    @torch.no_grad()
    def grad_norm(self):
        """The L2 norm of all gradients together, accumulated in fp32 (each slice upcast into the reused
        buffer: vector_norm(dtype=float32) would map a fresh fp32 copy of it, the same numbers, at twice the time)."""
        norms = [torch.linalg.vector_norm(self.upcast(p.grad.view(-1)[part]))
                 for p in self.params if p.grad is not None for part in self.slices(p)]
        return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())

    @torch.no_grad()
    def step(self, max_grad_norm=None):
        """Clip the gradients to a total norm of max_grad_norm (as clip_grad_norm_), update, and free the
        gradients. Returns the norm before clipping."""
        norm = self.grad_norm()
        scale = (max_grad_norm / (norm + 1e-6)).clamp(max=1.0) if max_grad_norm else None
        self.t += 1
        for i, (p, w, m, v) in enumerate(zip(self.params, self.master, self.exp_avg, self.exp_avg_sq)):
            if p.grad is None:
                continue
            for k, part in enumerate(self.slices(p)):
                g = self.upcast(p.grad.view(-1)[part])
                if scale is not None:
                    g.mul_(scale)
                m_part, v_part = m.view(-1)[part], v.view(-1)[part]
                if self.moments == "bf16":          # the update runs on fp32 copies of the moments' slices
                    m_part, v_part = self.m32[:g.numel()].copy_(m_part), self.v32[:g.numel()].copy_(v_part)
                # torch's own AdamW update (the formula above), in one fused pass where it can; it counts step t
                # from t - 1, a tensor on the weights' device for the fused kernel, on the CPU for the plain one
                step = torch.tensor(float(self.t - 1), device=w.device if self.fused else "cpu")
                adamw([w.view(-1)[part]], [g], [m_part], [v_part], [], [step], fused=self.fused,
                      amsgrad=False, beta1=self.betas[0], beta2=self.betas[1], lr=self.lr,
                      weight_decay=self.weight_decay, eps=self.eps, maximize=False)
                if self.moments == "bf16":
                    m.view(-1)[part].copy_(m_part)                  # to the nearest
                    offset = (self.t * 7_919 + i * 104_729 + k * 15_485_863) % DITHER_OFFSETS
                    v.view(-1)[part].copy_(stochastic_round(v_part, self.dither[offset:offset + g.numel()]))
            p.grad = None
            if p is not w:
                p.copy_(w)
        give_back_free_heap()           # the gradients just freed, and the step's other leftovers (fused.py)
        return norm

    def master_state_dict(self, model):
        """The fp32 master weights under the model's parameter names (what a checkpoint saves)."""
        master = {id(p): w for p, w in zip(self.params, self.master)}
        return {name: master.get(id(p), p).detach().float() for name, p in model.named_parameters()}

    def state_dict(self):
        return {"t": self.t, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    def load_state_dict(self, state):
        self.t = state["t"]
        for mine, saved in ((self.exp_avg, state["exp_avg"]), (self.exp_avg_sq, state["exp_avg_sq"])):
            for a, b in zip(mine, saved):
                a.copy_(b)


MOMENT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DITHER_OFFSETS = 1 << 16      # distinct offsets into the dither: each number meets a fresh one for 65,536 steps


def stochastic_round(x, dither):
    """x (fp32) rounded to bf16 up or down at random, E[result] = x: bf16 is fp32's upper 16 bits, so adding
    a uniform integer in [0, 2^16) (dither, int32, x's shape) to the bits and dropping the lower 16 rounds the
    magnitude up with probability (its remainder) / (the step). In place: returns x, now a bf16 number (its
    lower 16 bits zero), which a copy into a bf16 tensor keeps exactly."""
    x.view(torch.int32).add_(dither).bitwise_and_(-65536)    # -65536 = 0xFFFF0000: sign, exponent, 7 mantissa bits
    return x


def fused_adamw(device):
    """Whether torch has a fused AdamW kernel for this device (torch 2.13: cpu, cuda and mps among others); where
    it has none, one line says that the update runs torch's plain implementation (the same formula, slower)."""
    if torch.device(device).type in _get_fused_kernels_supported_devices():
        return True
    print(f"note: torch {torch.__version__} has no fused AdamW kernel for {torch.device(device).type}; "
          f"AdamW runs its plain implementation (the same update, slower)", file=sys.stderr)
    return False


def cast_for_training(policy, dtype, optimizer_class=None, **adamw_args):
    """Cast the policy to the compute dtype (GPT.to_compute_dtype) and return the MasterAdamW (or the subclass
    given) that keeps its fp32 weights: the policy samples and trains in dtype, the optimizer steps in fp32."""
    fp32_weights = [p.data for p in policy.parameters()]      # the cast gives the params new tensors
    policy.to_compute_dtype(dtype)
    return (optimizer_class or MasterAdamW)(policy.parameters(), fp32_weights=fp32_weights, **adamw_args)
