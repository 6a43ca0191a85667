"""Our decoder against transformers on the same weights, and its own invariants (the sampler: test_engine.py)."""
import torch
import pytest

from conftest import write_random_gpt2
from load_weights import load_model
from engine import generate, left_pad, new_cache
from model import GPT, GPTConfig
from task import FORMAT_EXAMPLE

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
    # a format example is an earlier user and assistant turn, as the template writes a two-turn conversation
    shown = [{"role": "user", "content": FORMAT_EXAMPLE[0]}, {"role": "assistant", "content": FORMAT_EXAMPLE[1]}]
    ref = ref_tok.apply_chat_template(shown + msgs, add_generation_prompt=True, tokenize=False)
    assert tok.decode(tok.chat_prompt(PROMPTS[0], example=FORMAT_EXAMPLE)) == ref
    with_example = tok.decode(tok.chat_prompt(PROMPTS[0], system=None, example=FORMAT_EXAMPLE))
    assert with_example == ref[ref.index("<|im_start|>user"):]


def test_kv_cache_logits_equal_full_forward(smollm2):
    model, tok = smollm2
    ids = torch.tensor([tok.chat_prompt(PROMPTS[1])])
    with torch.no_grad():
        full = model(ids)
        cache = new_cache(model, 1, ids.size(1))
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


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_active_computes_only_the_active_positions_and_changes_none_of_them(arch):
    """Oracle: the same forward over all positions; active = left padding dropped and each row cut after its end."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(arch=arch, vocab_size=11, block_size=32, n_layer=2, n_head=4, n_kv_head=2 if arch == "llama" else 4,
                          n_embd=16, n_inner=32))
    ids, mask = left_pad([[1, 2, 3, 4, 5, 6], [7, 8, 9], [3, 3, 3, 3, 3]], 0)
    active = mask.bool() & (torch.arange(6) < torch.tensor([[4], [6], [5]]))    # rows end at 4, 6, 5
    with torch.no_grad():
        full = model.hidden(ids, attention_mask=mask)
        packed = model.hidden(ids, attention_mask=mask, active=active)
        assert torch.equal(model(ids, attention_mask=mask), full @ model.embed.weight.t())   # forward = head(hidden)
    assert (packed[active] - full[active]).abs().max() <= 1e-5
    assert packed[~active].abs().max() == 0


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
