"""Our tiktoken tokenizers against Hugging Face `tokenizers` built from the same vocabulary and merges."""
import random

import pytest

from load_weights import load_gpt2

SPECIAL = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
PIECES = ["0", "7", "42", "2026", "3.14", "-5", "1,000", "x²", "½", "١٢٣", "hello", "Hello", " world", "don't",
          "we'll", "I'M", "café", "naïve", "Ünïcödé", "日本語", "中文字符", "😀", "👍🏽", "Ελληνικά", "привет",
          "\n", "\n\n", "\r\n", "\t", "  ", "    ", " ", "!", "?!", "...", "—", "$", "#", "{}", "()", "a+b=c",
          "<", ">", "|", "\\", "'", '"', "`code`", "snake_case", "CamelCase", "e-mail", "http://x.y/z"]


def random_strings(n, seed=0, specials=False):
    rng = random.Random(seed)
    pool = PIECES + (SPECIAL if specials else [])
    out = []
    for _ in range(n):
        k = rng.randint(1, 12)
        out.append("".join(rng.choice(pool) + rng.choice(["", " ", "", "  ", "\n"]) for _ in range(k)))
    return out


@pytest.fixture(scope="module")
def smollm2_reference(hf_smollm2):
    """transformers' GGUF tokenizer with SmolLM2's real pre-tokenizer (llama.cpp's "smollm": each digit
    is split off first, then GPT-2's byte-level regex). transformers' converter leaves out the digit split."""
    from tokenizers import pre_tokenizers
    _, tok = hf_smollm2
    backend = tok.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    return backend


def test_smollm2_ids_equal_reference(smollm2, smollm2_reference):
    _, tok = smollm2
    texts = random_strings(1000) + ["", " ", "  1", "a  12", "Hello world, 12345!"]
    for s in texts:
        assert tok.encode(s) == smollm2_reference.encode(s, add_special_tokens=False).ids, repr(s)
        assert tok.decode(tok.encode(s)) == s


def test_smollm2_special_tokens_in_text(smollm2, smollm2_reference):
    _, tok = smollm2
    for s in random_strings(300, seed=1, specials=True):
        assert tok.encode(s, allow_special=True) == smollm2_reference.encode(s, add_special_tokens=False).ids, repr(s)
        assert tok.decode(tok.encode(s, allow_special=True)) == s
        # without allow_special the markers are plain text, never control tokens
        assert tok.decode(tok.encode(s)) == s
        assert tok.eos_id not in tok.encode(s)


def test_gpt2_ids_equal_reference(tmp_path, gpt2_tokenizer_files):
    from transformers import GPT2TokenizerFast
    encoder_json, vocab_bpe = gpt2_tokenizer_files
    (tmp_path / "vocab.json").write_bytes(encoder_json.read_bytes())
    (tmp_path / "merges.txt").write_bytes(vocab_bpe.read_bytes())
    ref = GPT2TokenizerFast.from_pretrained(tmp_path)
    from load_weights import GPT2_PATTERN, Tokenizer
    import tiktoken, tiktoken.load
    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    tok = Tokenizer(tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                                      special_tokens={"<|endoftext|>": 50256}), 50256, 50256, chat=False)
    assert tok.encode("Hello world, 12345!") == [15496, 995, 11, 17031, 2231, 0]
    for s in random_strings(1000, seed=2):
        assert tok.encode(s) == ref.encode(s), repr(s)
        assert tok.decode(tok.encode(s)) == s
