"""engine.py: the batched sampler against its plain reference, token for token, and its own invariants."""
import pytest
import torch

from engine import generate, plain_generate, row_generators, sample_next
from model import GPT, GPTConfig

PROMPTS = ["What is 3 + 5? Answer with just the number.",
           "Write a haiku about the sea.",
           "Which is larger, 42 or 57? Answer with just the number.",
           "List three colours.",
           "How many items are in this list: apple, pear, fig? Answer with just the number."]
# token ids for the tiny models: lengths 3 to 9, the first two tokens shared (a prefill path of its own)
TINY_PROMPTS = [[5, 1, 2, 3], [5, 1, 6, 6, 2, 7, 3], [5, 1, 4], [5, 1, 2, 2, 2, 2, 2, 2, 3]]
G, MAX_NEW = 3, 16


def tiny(arch, seed=0):
    """A random 2-block decoder of 8 tokens, its embedding (the tied head) scaled down so that sampling is not
    all one token."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(arch=arch, vocab_size=8, block_size=64, n_layer=2, n_head=4,
                          n_kv_head=2 if arch == "llama" else 4, n_embd=16, n_inner=32))
    with torch.no_grad():
        model.embed.weight.mul_(0.1)
    return model


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("temperature,top_k,top_p,eos_id", [(0, None, None, None), (1.0, None, None, 4),
                                                             (0.7, 6, 0.9, (4, 6))])
def test_generate_equals_plain_generate_token_for_token(arch, temperature, top_k, top_p, eos_id):
    """Oracle: plain_generate, each row alone with no cache and no padding, one full forward per token, drawing
    from the same per-row generators. Greedy takes as EOS the token its first row makes 6th when nothing
    stops it, so that rows end at different steps there too; in every case enough rows (a quarter) end
    before the last one that the fast sampler drops them from its batch while the others go on."""
    model = tiny(arch)
    kw = dict(num_samples=G, max_new_tokens=MAX_NEW, temperature=temperature, top_k=top_k, top_p=top_p,
              pad_id=0, seeds=[11, 12, 13, 14])
    if temperature == 0:
        eos_id = int(plain_generate(model, TINY_PROMPTS[:1], **kw)[0][0, 5])
    want, want_mask = plain_generate(model, TINY_PROMPTS, eos_id=eos_id, **kw)
    got, got_mask = generate(model, TINY_PROMPTS, eos_id=eos_id, **kw)
    assert got.tolist() == want.tolist() and got_mask.tolist() == want_mask.tolist()
    lengths = want_mask.sum(1)
    assert (lengths < lengths.max()).sum() >= len(lengths) // 4, lengths.tolist()


def test_generate_equals_plain_generate_on_smollm2(smollm2):
    """The same on the real model and chat prompts, greedy and sampled, stopping at its EOS."""
    model, tok = smollm2
    prompts = [tok.chat_prompt(p, system=None) for p in PROMPTS[:3]]
    for temperature in (0, 1.0):
        kw = dict(num_samples=2, max_new_tokens=10, temperature=temperature, eos_id=tok.eos_id,
                  pad_id=tok.pad_id, seeds=[1, 2, 3])
        want, want_mask = plain_generate(model, prompts, **kw)
        got, got_mask = generate(model, prompts, **kw)
        assert got.tolist() == want.tolist() and got_mask.tolist() == want_mask.tolist()


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


def test_sample_next_at_temperature_one_equals_the_plain_softmax():
    """The sampler's one-pass softmax from bf16 logits draws what the cast-then-softmax formula draws."""
    logits = (torch.randn(6, 500, generator=torch.Generator().manual_seed(0)) * 4).bfloat16()
    probs = logits.float().softmax(-1)
    gens = row_generators([1, 2], 3, "cpu")
    u = torch.cat([torch.rand(1, generator=g) for g in row_generators([1, 2], 3, "cpu")])
    cdf = probs.cumsum(-1)
    want = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(-1)
    assert torch.equal(sample_next(logits, 1.0, None, None, gens), want)


def test_top_k_one_is_greedy(smollm2):
    model, tok = smollm2
    p = [tok.chat_prompt(PROMPTS[3], system=None)]
    greedy, _ = generate(model, p, max_new_tokens=8, temperature=0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    topk1, _ = generate(model, p, max_new_tokens=8, temperature=1.0, top_k=1, eos_id=tok.eos_id,
                        pad_id=tok.pad_id, seeds=[3])
    assert greedy.tolist() == topk1.tolist()


