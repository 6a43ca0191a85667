"""Our decoder against transformers on the same weights, and the sampler's own invariants."""
import torch
import pytest

from conftest import write_random_gpt2
from load_weights import load_model
from model import GPT, GPTConfig, generate, left_pad, row_generators

PROMPTS = ["What is 3 + 5? Answer with just the number.",
           "Write a haiku about the sea.",
           "Which is larger, 42 or 57? Answer with just the number.",
           "List three colours.",
           "How many items are in this list: apple, pear, fig? Answer with just the number."]


def test_smollm2_logits_match_transformers(smollm2, hf_smollm2):
    model, tok = smollm2
    ref, _ = hf_smollm2
    for text in PROMPTS[:3]:
        ids = torch.tensor([tok.chat_prompt(text)])
        with torch.no_grad():
            ours, theirs = model(ids), ref(ids).logits
        assert (ours - theirs).abs().max().item() <= 1e-3


def test_smollm2_greedy_continuations_match_transformers(smollm2, hf_smollm2):
    model, tok = smollm2
    ref, _ = hf_smollm2
    for text in PROMPTS:
        ids = tok.chat_prompt(text)
        ours, mask = generate(model, [ids], max_new_tokens=32, temperature=0, eos_id=tok.eos_id)
        theirs = ref.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):]
        assert ours[0][mask[0].bool()].tolist() == theirs.tolist(), text


def test_chat_prompt_matches_chat_template(smollm2, hf_smollm2):
    _, tok = smollm2
    _, ref_tok = hf_smollm2
    msgs = [{"role": "user", "content": PROMPTS[0]}]
    ref = ref_tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert tok.decode(tok.chat_prompt(PROMPTS[0])) == ref
    short = tok.decode(tok.chat_prompt(PROMPTS[0], system=None))
    assert short == ref[ref.index("<|im_start|>user"):]


def test_kv_cache_logits_equal_full_forward(smollm2):
    model, tok = smollm2
    ids = torch.tensor([tok.chat_prompt(PROMPTS[1])])
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, ids.size(1))
        steps = [model(ids[:, :10], cache=cache)]
        steps += [model(ids[:, t:t + 1], cache=cache) for t in range(10, ids.size(1))]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-4


def test_left_padded_forward_equals_unpadded(smollm2):
    model, tok = smollm2
    seqs = [tok.chat_prompt(p, system=None) for p in PROMPTS[:3]]
    ids, mask = left_pad(seqs, tok.pad_id)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask)
        for i, s in enumerate(seqs):
            alone = model(torch.tensor([s]))
            assert (batched[i, -len(s):] - alone[0]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("temperature,top_k,top_p", [(0, None, None), (1.0, None, None), (0.8, 50, 0.9)])
def test_batched_generation_equals_per_prompt(smollm2, temperature, top_k, top_p):
    model, tok = smollm2
    prompts = [tok.chat_prompt(p, system=None) for p in PROMPTS]
    kw = dict(max_new_tokens=12, temperature=temperature, top_k=top_k, top_p=top_p,
              eos_id=tok.eos_id, pad_id=tok.pad_id)
    seeds = list(range(100, 100 + len(prompts)))
    batch, batch_mask = generate(model, prompts, num_samples=2, seeds=seeds, **kw)
    for i, p in enumerate(prompts):
        alone, alone_mask = generate(model, [p], num_samples=2, seeds=[seeds[i]], **kw)
        T = alone.size(1)
        assert batch[2 * i:2 * i + 2, :T].tolist() == alone.tolist()
        assert batch_mask[2 * i:2 * i + 2, :T].tolist() == alone_mask.tolist()
        assert batch_mask[2 * i:2 * i + 2, T:].sum() == 0       # the batch ran longer only for other rows


def test_generation_stops_at_eos_and_masks_after_it():
    torch.manual_seed(0)
    model = GPT(GPTConfig(arch="llama", vocab_size=5, block_size=64, n_layer=1, n_head=2, n_kv_head=1,
                          n_embd=16, n_inner=32))
    ids, mask = generate(model, [[1, 2, 3]], num_samples=16, max_new_tokens=20, temperature=1.0,
                         eos_id=4, pad_id=0, seeds=[0])
    for row, m in zip(ids.tolist(), mask.tolist()):
        if 4 in row:
            k = row.index(4)
            assert m[:k + 1] == [1] * (k + 1) and sum(m[k + 1:]) == 0
            assert all(t == 0 for t in row[k + 1:])
        else:
            assert sum(m) == 20


def test_rows_leave_the_batch_when_they_end_and_the_rest_sample_the_same():
    """Oracle: each row redone alone without a cache, token by token, from its own generator's uniforms."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(arch="llama", vocab_size=6, block_size=64, n_layer=1, n_head=2, n_kv_head=1,
                          n_embd=16, n_inner=32))
    with torch.no_grad():
        model.embed.weight.mul_(0.2)        # a tied N(0, 1) head is too peaked to ever sample EOS
    prompts = [[1, 2, 3], [2, 5, 5, 1, 3]]
    ids, mask = generate(model, prompts, num_samples=8, max_new_tokens=24, temperature=1.0, eos_id=4, pad_id=0,
                         seeds=[3, 9])
    lengths = mask.sum(1).tolist()
    assert min(lengths) <= 3 and max(lengths) >= 10         # rows ended early, others went on long after
    gens = row_generators([3, 9], 8, "cpu")
    for row, (g, n) in enumerate(zip(gens, lengths)):
        seq = list(prompts[row // 8])
        for t in range(n):
            with torch.no_grad():
                probs = model(torch.tensor([seq]))[0, -1].softmax(-1)
            u = torch.rand(1, generator=g)
            cdf = probs.cumsum(-1)
            seq.append(min(int(torch.searchsorted(cdf, u * cdf[-1])), 5))
        assert ids[row, :n].tolist() == seq[-n:] and (seq[-1] == 4 or n == 24)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_keep_computes_only_the_kept_positions_and_changes_none_of_them(arch):
    """Oracle: the same forward over all positions; kept = left padding dropped and each row cut after its end."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(arch=arch, vocab_size=11, block_size=32, n_layer=2, n_head=4, n_kv_head=2 if arch == "llama" else 4,
                          n_embd=16, n_inner=32))
    ids, mask = left_pad([[1, 2, 3, 4, 5, 6], [7, 8, 9], [3, 3, 3, 3, 3]], 0)
    keep = mask.bool() & (torch.arange(6) < torch.tensor([[4], [6], [5]]))    # rows end at 4, 6, 5
    with torch.no_grad():
        full = model(ids, attention_mask=mask, return_hidden=True)
        packed = model(ids, attention_mask=mask, return_hidden=True, keep=keep)
    assert (packed[keep] - full[keep]).abs().max() <= 1e-5
    assert packed[~keep].abs().max() == 0


def test_rmsnorm_backward_equals_finite_differences_and_autograd():
    """Oracles: torch.autograd.gradcheck (central differences, fp64) and autograd through the plain formula."""
    from fused import RMSNormFunction
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
    from fused import SwiGLUFunction
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_grad_forward_equals_the_autograd_forward(dtype):
    """Without gradients (sampling, reference log-probs) RMSNorm and the MLP skip their autograd Functions: the
    same kernels on the same values, so the hidden states must be bit-identical to the training forward's."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, n_inner=48, block_size=64))
    with torch.no_grad():
        for p in model.parameters():          # norms away from 1, so that their weight is exercised
            p.add_(torch.randn_like(p) * 0.1)
    model.to_compute_dtype(dtype)
    ids = torch.randint(0, 97, (3, 9))
    with torch.no_grad():
        fast = model(ids, return_hidden=True)
    trained = model(ids, return_hidden=True)
    assert trained.requires_grad and fast.dtype == dtype
    assert torch.equal(fast, trained.detach())


def test_sample_next_at_temperature_one_equals_the_plain_softmax():
    """The sampler's one-pass softmax from bf16 logits draws what the cast-then-softmax formula draws."""
    from model import sample_next
    logits = (torch.randn(6, 500, generator=torch.Generator().manual_seed(0)) * 4).bfloat16()
    probs = logits.float().softmax(-1)
    gens = row_generators([1, 2], 3, "cpu")
    u = torch.cat([torch.rand(1, generator=g) for g in row_generators([1, 2], 3, "cpu")])
    cdf = probs.cumsum(-1)
    want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(-1)
    assert torch.equal(sample_next(logits, 1.0, None, None, gens), want)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_compute_dtype_casts_the_matmuls_and_keeps_the_norms_fp32(arch):
    """Oracle: the fp32 model's logits (bf16 rounding allows ~1e-2 here)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(arch=arch, vocab_size=11, block_size=32, n_layer=2, n_head=4, n_kv_head=2 if arch == "llama" else 4,
                          n_embd=16, n_inner=32))
    ids = torch.randint(0, 11, (2, 7))
    with torch.no_grad():
        want = model(ids)
        low = model.to_compute_dtype(torch.bfloat16)(ids)
    norms = {n for n, _ in model.named_parameters() if "norm" in n}
    assert norms and all(p.dtype == (torch.float32 if n in norms else torch.bfloat16) for n, p in model.named_parameters())
    assert low.dtype == torch.bfloat16 and (low.float() - want).abs().max() <= 0.05 * want.abs().max()


def test_top_k_one_is_greedy(smollm2):
    model, tok = smollm2
    p = [tok.chat_prompt(PROMPTS[3], system=None)]
    greedy, _ = generate(model, p, max_new_tokens=8, temperature=0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    topk1, _ = generate(model, p, max_new_tokens=8, temperature=1.0, top_k=1, eos_id=tok.eos_id,
                        pad_id=tok.pad_id, seeds=[3])
    assert greedy.tolist() == topk1.tolist()


@pytest.mark.parametrize("n_layer", [12, 6])      # gpt2 and distilgpt2 layouts (at a small width)
def test_gpt2_checkpoint_matches_transformers(tmp_path, gpt2_tokenizer_files, n_layer):
    ref = write_random_gpt2(tmp_path, gpt2_tokenizer_files, n_layer=n_layer)
    model, tok = load_model(str(tmp_path))
    ids = torch.tensor([tok.encode("Hello world, 12345! The answer is")[:8], tok.encode("Q: what? A: no. " * 3)[:8]])
    with torch.no_grad():
        assert (model(ids) - ref(ids).logits).abs().max().item() <= 1e-4
    out, _ = generate(model, [ids[0].tolist()], max_new_tokens=10, temperature=0)
    theirs = ref.generate(ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=10, do_sample=False,
                          pad_token_id=tok.eos_id)[0, ids.size(1):]
    assert out[0].tolist() == theirs.tolist()
