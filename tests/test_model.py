"""Our decoder against transformers on the same weights, and the sampler's own invariants."""
import torch
import pytest

from conftest import write_random_gpt2
from load_weights import load_model
from model import GPT, GPTConfig, generate, left_pad

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
