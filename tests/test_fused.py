"""fused.py: its written-out backwards against finite differences and autograd, and fused.apply, which swaps
them into a model, against the plain model: the same outputs, the same gradients, the plain path without
gradients."""
import copy
import platform
import subprocess
import sys

import pytest
import torch

import fused
from fused import FusedRMSNorm, FusedSwiGLU, RMSNormFunction, SwiGLUFunction
from conftest import ROOT
from model import GPT, MLP, GPTConfig, RMSNorm


def random_model(arch="llama", seed=0):
    """A tiny random decoder whose weights (norms included) are away from their init."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(arch=arch, vocab_size=97, n_layer=2, n_head=4, n_kv_head=2 if arch == "llama" else 4,
                          n_embd=32, n_inner=48, block_size=64))
    with torch.no_grad():
        for p in model.parameters():          # norms away from 1, so that their weight is exercised
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_rmsnorm_backward_equals_finite_differences_and_autograd():
    """Oracles: torch.autograd.gradcheck (central differences, fp64) and autograd through the plain formula."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, dtype=torch.float64, generator=g).requires_grad_()
    w = (torch.rand(8, dtype=torch.float64, generator=g) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: RMSNormFunction.apply(x, w, 1e-5), (x, w))
    xb, wb = x.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    up = torch.randn(3, 4, 8, generator=g).bfloat16()
    (RMSNormFunction.apply(xb, wb, 1e-5) * up).sum().backward()
    x32, w32 = xb.detach().float().requires_grad_(), wb.detach().float().requires_grad_()
    plain = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5) * w32
    (plain * up.float()).sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.allclose(xb.grad.float(), x32.grad, rtol=1e-2, atol=1e-2)
    assert torch.allclose(wb.grad.float(), w32.grad, rtol=1e-2, atol=1e-2)


def test_swiglu_backward_equals_finite_differences_and_autograd():
    """Oracles: torch.autograd.gradcheck (fp64) and, in bf16, autograd through the plain lines, which must give
    the same numbers: the backward runs the same kernels on the same values."""
    g = torch.Generator().manual_seed(0)
    x, wg, wu, wd = (torch.randn(*shape, dtype=torch.float64, generator=g).requires_grad_()
                     for shape in ((5, 6), (7, 6), (7, 6), (6, 7)))
    assert torch.autograd.gradcheck(SwiGLUFunction.apply, (x, wg, wu, wd))
    dy = torch.randn(40, 32, generator=g).bfloat16()
    ours = [(torch.randn(*shape, generator=g) * 0.3).bfloat16().requires_grad_()
            for shape in ((40, 32), (96, 32), (96, 32), (32, 96))]
    plain = [t.detach().clone().requires_grad_() for t in ours]
    (SwiGLUFunction.apply(*ours) * dy).sum().backward()
    x_, wg_, wu_, wd_ = plain
    ((torch.nn.functional.silu(x_ @ wg_.t()) * (x_ @ wu_.t())) @ wd_.t() * dy).sum().backward()
    for a, b in zip(ours, plain):
        assert a.grad.dtype == torch.bfloat16 and torch.equal(a.grad, b.grad)


def outputs_and_grads(model, ids, up):
    """Logits (B, T, V) of a training forward and the gradients of sum(logits * up), by parameter name."""
    logits = model(ids)
    (logits.float() * up).sum().backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_apply_leaves_outputs_and_gradients_unchanged(dtype, tol):
    """Oracle: the same model without the swap, trained on the same batch through autograd's own backward.
    The forward is the same formula on the same kernels: equal bits. The gradients come from other formulas
    (fused.py's docstrings), so they agree to rounding: within tol of each gradient's largest entry (fp32:
    about 4e-7 measured; bf16: the norms' fp32 weights differ by about 2e-7, the rest is bit-equal)."""
    plain = random_model().to_compute_dtype(dtype)
    ours = fused.apply(copy.deepcopy(plain))
    ids = torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(1))
    up = torch.randn(3, 9, 97, generator=torch.Generator().manual_seed(2))
    want, want_grads = outputs_and_grads(plain, ids, up)
    got, got_grads = outputs_and_grads(ours, ids, up)
    assert got.dtype == dtype and torch.equal(got, want)
    assert got_grads.keys() == want_grads.keys()
    for name, g in got_grads.items():
        w = want_grads[name]
        assert g.dtype == w.dtype and (g.float() - w.float()).abs().max() <= tol * w.float().abs().max(), name


def backward_nodes(out):
    """The names of every node in out's autograd graph."""
    seen, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo += [n for n, _ in node.next_functions]
    return {type(n).__name__ for n in seen}


def test_apply_swaps_every_rmsnorm_and_swiglu_and_the_training_pass_runs_them():
    """What apply changes: the class of each Llama norm and MLP (5 norms and 2 MLPs in 2 blocks), not the
    state dict; the training pass's graph goes through the Functions, the plain model's does not."""
    plain = random_model()
    ours = fused.apply(copy.deepcopy(plain))
    assert sum(isinstance(m, FusedRMSNorm) for m in ours.modules()) == 5
    assert sum(isinstance(m, FusedSwiGLU) for m in ours.modules()) == 2
    assert not any(isinstance(m, (FusedRMSNorm, FusedSwiGLU)) for m in plain.modules())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), ours.state_dict().values()))
    assert list(plain.state_dict()) == list(ours.state_dict())
    ids = torch.randint(0, 97, (2, 5))
    assert {"RMSNormFunctionBackward", "SwiGLUFunctionBackward"} <= backward_nodes(ours(ids))
    assert not {"RMSNormFunctionBackward", "SwiGLUFunctionBackward"} & backward_nodes(plain(ids))


def test_apply_leaves_gpt2_as_it_is():
    """GPT-2 has LayerNorm and a GELU MLP: nothing to swap."""
    model = fused.apply(random_model("gpt2"))
    assert [type(m) for m in model.modules() if isinstance(m, (RMSNorm, MLP))] == [MLP, MLP]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_without_gradients_the_swapped_model_runs_the_plain_lines_to_the_same_bits(dtype, monkeypatch):
    """Sampling and the frozen log-probs run the plain lines (the Functions would save tensors for nothing),
    and their hidden states are bit-identical to the training forward's: the same kernels on the same values."""
    model = fused.apply(random_model().to_compute_dtype(dtype))
    ids = torch.randint(0, 97, (3, 9))
    trained = model.hidden(ids)
    monkeypatch.setattr(RMSNormFunction, "apply", None)      # calling either Function now fails
    monkeypatch.setattr(SwiGLUFunction, "apply", None)
    with torch.no_grad():
        fast = model.hidden(ids)
    assert trained.requires_grad and fast.dtype == dtype
    assert torch.equal(fast, trained.detach())


def test_selected_logprobs_keeps_no_vocabulary_sized_block_for_its_backward():
    """The training pass keeps only the forward's inputs (and one number a row) per chunk: no (n, V) logits or
    probabilities wait for the backward (the old version kept the softmax); the gradient still equals
    autograd's through the plain lines."""
    g = torch.Generator().manual_seed(0)
    n, C, V = 64, 8, 50                     # n * V = 3200 numbers, more than any input (the weight: 400)
    h = torch.randn(n, C, generator=g, requires_grad=True)
    W = torch.randn(V, C, generator=g, requires_grad=True)
    ids = torch.randint(0, V, (n,), generator=g)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        got = fused.SelectedLogprobs.apply(h, W, ids)
    assert saved and max(saved) < n * V
    coef = torch.randn(n, generator=g)
    gh, gW = torch.autograd.grad((got * coef).sum(), (h, W))
    want = torch.log_softmax(h @ W.t(), -1).gather(-1, ids[:, None])[:, 0]
    wh, wW = torch.autograd.grad((want * coef).sum(), (h, W))
    assert (got - want).abs().max() <= 1e-5
    assert (gh - wh).abs().max() <= 1e-5 and (gW - wW).abs().max() <= 1e-5


def test_swiglu_keeps_only_its_input_for_the_backward_and_gives_the_same_bits():
    """The MLP's training pass keeps x and the weights, no (n, I) projection (the old version kept gate and up):
    the backward computes them again, to the same bits as autograd through the plain lines (bf16)."""
    g = torch.Generator().manual_seed(3)
    n, C, I = 64, 8, 24                     # an (n, I) block is 1536 numbers, more than x (512) or a weight (192)
    ours = [(torch.randn(*shape, generator=g) * 0.3).bfloat16().requires_grad_()
            for shape in ((n, C), (I, C), (I, C), (C, I))]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = SwiGLUFunction.apply(*ours)
    assert saved and max(saved) < n * I
    dy = torch.randn(n, C, generator=g).bfloat16()
    grads = torch.autograd.grad((y * dy).sum(), ours)
    x, wg, wu, wd = (t.detach().clone().requires_grad_() for t in ours)
    plain = (torch.nn.functional.silu(x @ wg.t()) * (x @ wu.t())) @ wd.t()
    want = torch.autograd.grad((plain * dy).sum(), (x, wg, wu, wd))
    assert torch.equal(y, plain)
    for a, b in zip(grads, want):
        assert torch.equal(a, b)


def test_glibcs_mmap_threshold_returns_freed_blocks_to_the_os():
    """README's lower-peak setting, MALLOC_MMAP_THRESHOLD_=262144 (glibc): in a fresh process a 2 MB tensor
    allocated and freed over and over is mapped fresh each time (its 512 pages faulted in again: glibc unmapped
    it), where glibc's default serves it from its heap after the first free (no new faults, the memory kept).
    Counted by the kernel (ru_minflt)."""
    import os
    code = """if True:
        import resource, torch
        def faults(k=50):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(k):
                x = torch.empty(500_000)
                x.fill_(1.0)
                del x
            return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / k
        faults(5)
        print(faults())
    """
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    per_block = {mode: float(subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
        env=env | ({"MALLOC_MMAP_THRESHOLD_": "262144"} if mode == "on" else {})).stdout.split()[-1])
        for mode in ("on", "off")}
    assert per_block["on"] >= 400 and per_block["off"] <= 50, per_block


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
@pytest.mark.parametrize("mapped", [False, True])
def test_a_fixed_mmap_threshold_gives_a_freed_block_back_at_once(mapped):
    """fused.set_mmap_threshold (--heap=map), with glibc's own count of mmapped blocks (mallinfo2().hblks)
    as the oracle. By default a freed 16 MB block raises glibc's threshold to 16 MB, so a 2 MB block comes from the
    heap afterwards (whose free gaps stay resident); with the threshold then set to 1 MB it gets pages of its own,
    and a 512 KB block (over glibc's first threshold, 128 KB) still comes from the heap."""
    code = ("import ctypes, fused\n"
            "class Info(ctypes.Structure): _fields_ = [(n, ctypes.c_size_t) for n in 'arena ordblks smblks hblks "
            "hblkhd usmblks fsmblks uordblks fordblks keepcost'.split()]\n"
            "libc = ctypes.CDLL('libc.so.6'); libc.mallinfo2.restype = Info; libc.malloc.restype = ctypes.c_void_p\n"
            "libc.free(ctypes.c_void_p(libc.malloc(16 << 20)))\n"
            f"{'fused.set_mmap_threshold(1 << 20)' if mapped else 'pass'}\n"
            "def mapped(size):\n"
            "    before = libc.mallinfo2().hblks; libc.malloc(size); return libc.mallinfo2().hblks - before\n"
            "print('MAPPED', mapped(2 << 20), mapped(512 << 10))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split("MAPPED")[1].split() == (["1", "0"] if mapped else ["0", "0"])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
@pytest.mark.parametrize("setting", ["keep", "glibc"])
def test_keep_holds_the_heaps_free_pages_for_the_next_step_and_glibc_gives_them_back(setting):
    """fused.use_heap: with keep, give_back_free_heap (called once a step) leaves the heap's free pages resident, for
    the next step to reuse without page faults; with glibc (and map) it hands them back. Oracle: the kernel's count
    of this process's resident pages, around 200 MB of 64 KB blocks freed (all but the last, so that free() itself
    cannot give back the heap's top)."""
    code = ("import ctypes, torch, fused\n"
            f"fused.use_heap({setting!r}, torch.bfloat16, 'cpu')\n"
            "libc = ctypes.CDLL('libc.so.6'); libc.malloc.restype = ctypes.c_void_p\n"
            "rss_mb = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096 >> 20\n"
            "blocks = [libc.malloc(64 << 10) for _ in range(3200)]\n"
            "for b in blocks: ctypes.memset(b, 1, 64 << 10)\n"
            "for b in blocks[:-1]: libc.free(ctypes.c_void_p(b))\n"
            "before = rss_mb(); fused.give_back_free_heap(); print('FREED', before - rss_mb())\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    freed = int(out.stdout.split("FREED")[1])
    assert freed < 20 if setting == "keep" else freed > 150, freed
