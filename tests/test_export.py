"""export.py: a run's weights as GGUF and as a Hugging Face folder. Oracles: our own loader reading the GGUF back
(it must give the very logits of the checkpoint), transformers loading the GGUF and the folder, and the gguf
package's reader for what the file holds."""
import copy
import json

import pytest
import torch
from safetensors.torch import save_file

import export
import load_weights
import train
from checkpoint import weights_path
from conftest import tiny_config, toy_reward
from eval import load_policy
from load_weights import find_smollm2_gguf, load_gpt2, load_smollm2
from engine import generate
from model import GPT, GPTConfig
from test_tokenizer import random_strings

# a Llama small enough to train in seconds, with SmolLM2's whole vocabulary (its tokenizer comes with the GGUF)
TINY_LLAMA = GPTConfig(arch="llama", vocab_size=49152, block_size=256, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                       n_inner=128, rope_base=10000.0)
QUESTION = "Which is larger, 42 or 57? Answer with just the number."


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    """The GGUFs of these tests are dequantized into a cache of their own, not the shared one."""
    mp = pytest.MonkeyPatch()
    mp.setattr(load_weights, "CACHE_DIR", tmp_path_factory.mktemp("cache"))
    yield
    mp.undo()


def train_tiny(model_path, out):
    """A 2-step run (checkpoint at the end) on a reward the random model earns now and then, so that it moves."""
    mp = pytest.MonkeyPatch()
    mp.setattr(train, "make_reward", lambda *a: toy_reward)
    try:
        train.train(tiny_config(model_path, out, steps=2, save_every=2))
    finally:
        mp.undo()
    return out


@pytest.fixture(scope="module")
def tiny_llama_run(tmp_path_factory):
    """(run folder, base GGUF): a random Llama with SmolLM2's tokenizer, written as a GGUF, then trained."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    model = GPT(TINY_LLAMA)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0, 0.3)             # peaked logits: greedy decoding is not decided by rounding noise
    base = export.write_gguf(model, find_smollm2_gguf(), folder / "tiny-llama.gguf")
    return train_tiny(base, folder / "run"), base


@pytest.fixture(scope="module")
def tiny_gpt2_run(tmp_path_factory, tiny_checkpoint):
    return train_tiny(tiny_checkpoint, tmp_path_factory.mktemp("tiny_gpt2") / "run")


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).float()


def our_greedy(model, tok, ids, n=8):
    """Our sampler's greedy completion: its tokens up to and including the first stop token."""
    out, mask = generate(model, [ids], max_new_tokens=n, temperature=0.0, eos_id=tok.stop_ids, pad_id=tok.pad_id)
    return [i for i, m in zip(out[0].tolist(), mask[0].tolist()) if m]


def hf_greedy(hf, tok, ids, n=8):
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, eos_token_id=list(tok.stop_ids), pad_token_id=tok.pad_id)
    new = out[0, len(ids):].tolist()
    end = next((k + 1 for k, i in enumerate(new) if i in tok.stop_ids), len(new))
    return new[:end]


def check_transformers(hf, ours, tok, ids):
    """transformers' model of an export: logits within 1e-4 of ours and the same greedy completion."""
    hf = hf.eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.float()
    assert (theirs - logits(ours, ids)).abs().max().item() < 1e-4
    assert hf_greedy(hf, tok, ids) == our_greedy(ours, tok, ids)


# ----------------------------------------------------------------------------- a trained tiny Llama

def test_gguf_reads_back_to_the_trained_weights(tiny_llama_run, tmp_path):
    run, base = tiny_llama_run
    ours, tok = load_policy(None, run)
    start, _ = load_smollm2(base)                    # from the cache the run's load wrote
    assert not torch.equal(ours.blocks[0].attn.q_proj.weight, start.blocks[0].attn.q_proj.weight)   # it trained
    out = export.main([str(run), "--to=gguf", f"--out={tmp_path / 'model.gguf'}"])
    back, tok2 = load_smollm2(out, cache_dir=tmp_path / "cache")
    for name, w in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], w), name
    ids = tok.chat_prompt(QUESTION)
    assert torch.equal(logits(back, ids), logits(ours, ids))
    assert tok2.encode(QUESTION) == tok.encode(QUESTION) and tok2.eos_id == tok.eos_id
    # the source's metadata is carried over: tokenizer, chat template, special ids; the shapes are the model's
    from gguf import GGUFReader
    src, new = GGUFReader(find_smollm2_gguf()).fields, GGUFReader(out)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.pre", "tokenizer.chat_template",
                "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id", "general.license"):
        assert new.fields[key].contents() == src[key].contents(), key
    assert new.fields["llama.block_count"].contents() == 2 and new.fields["llama.embedding_length"].contents() == 64
    assert new.fields["general.file_type"].contents() == 0                 # all f32
    assert "output.weight" not in {t.name for t in new.tensors}            # tied to token_embd, as in the source


@pytest.mark.parametrize("dtype,qtype", [("bf16", "BF16"), ("q8_0", "Q8_0")])
def test_gguf_in_bf16_and_q8_0(dtype, qtype, tiny_llama_run, tmp_path):
    """The matrices in the smaller type, the norms in f32; read back, bf16 is exactly the weights rounded to bf16
    and q8_0 within half a step of each block of 32 (step = the block's largest |w| / 127, itself stored in fp16:
    up to 127 steps * 2^-11 more)."""
    from gguf import GGUFReader
    run, _ = tiny_llama_run
    ours, _ = load_policy(None, run)
    out = export.main([str(run), "--to=gguf", f"--out={tmp_path / 'model.gguf'}", f"--dtype={dtype}"])
    types = {t.name: t.tensor_type.name for t in GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == qtype
    assert types["blk.0.attn_norm.weight"] == types["output_norm.weight"] == "F32"
    back, _ = load_smollm2(out, cache_dir=tmp_path / "cache")
    for name, w in ours.state_dict().items():
        got = back.state_dict()[name]
        if w.ndim == 1:
            assert torch.equal(got, w), name
        elif dtype == "bf16":
            assert torch.equal(got, w.to(torch.bfloat16).float()), name
        else:
            blocks = w.reshape(-1, 32)
            step = blocks.abs().amax(1, keepdim=True) / 127
            assert ((got.reshape(-1, 32) - blocks).abs() <= step * (0.5 + 127 / 2048)).all(), name


def test_transformers_loads_the_tiny_llama_exports(tiny_llama_run, tmp_path):
    from transformers import AutoModelForCausalLM
    run, _ = tiny_llama_run
    ours, tok = load_policy(None, run)
    ids = tok.chat_prompt(QUESTION)
    gguf_file = export.main([str(run), "--to=gguf", f"--out={tmp_path / 'model.gguf'}"])
    check_transformers(AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf_file.name, dtype=torch.float32),
                       ours, tok, ids)
    folder = export.main([str(run), "--to=hf", f"--out={tmp_path / 'hf'}"])
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "tokenizer.json",
                                                   "tokenizer_config.json", "generation_config.json"}
    check_transformers(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), ours, tok, ids)


def test_hf_tokenizer_encodes_like_ours(tiny_llama_run, tmp_path):
    """The folder's tokenizer.json (built from the GGUF's vocabulary and merges) gives our ids, special tokens
    and digits included, and its chat template our chat prompt."""
    from transformers import AutoTokenizer
    run, _ = tiny_llama_run
    _, tok = load_policy(None, run)
    folder = export.main([str(run), "--to=hf", f"--out={tmp_path / 'hf'}"])
    theirs = AutoTokenizer.from_pretrained(folder)
    for s in random_strings(300) + random_strings(100, seed=1, specials=True) + ["", " ", "  1", "a  12"]:
        assert theirs.encode(s, add_special_tokens=False) == tok.encode(s, allow_special=True), repr(s)
    chat = theirs.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                      tokenize=False)
    assert theirs.encode(chat, add_special_tokens=False) == tok.chat_prompt(QUESTION)
    assert theirs.eos_token_id == tok.eos_id and theirs.pad_token_id == tok.pad_id


# ----------------------------------------------------------------------------- a GPT-2 run

def test_gpt2_run_round_trips_through_hf(tiny_gpt2_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    ours, tok = load_policy(None, tiny_gpt2_run)
    folder = export.main([str(tiny_gpt2_run), "--to=hf", f"--out={tmp_path / 'hf'}"])
    back, tok2 = load_gpt2(folder)                     # our loader: the very same weights
    for name, w in ours.state_dict().items():
        assert torch.equal(back.state_dict()[name], w), name
    ids = tok.chat_prompt("What is 3 + 5?")
    check_transformers(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), ours, tok, ids)
    theirs = AutoTokenizer.from_pretrained(folder)
    for s in random_strings(200, seed=3):
        assert theirs.encode(s) == tok.encode(s) == tok2.encode(s), repr(s)
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == tok.eos_id


def test_gpt2_run_to_gguf_is_refused(tiny_gpt2_run, tmp_path):
    with pytest.raises(SystemExit) as e:
        export.main([str(tiny_gpt2_run), "--to=gguf", f"--out={tmp_path / 'm.gguf'}"])
    assert "\n" not in str(e.value.code) and "gpt2 run" in str(e.value.code) and "--to=hf" in str(e.value.code)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- bad input: one line, nothing left

def refused(argv, *words):
    with pytest.raises(SystemExit) as e:
        export.main(argv)
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


def test_bad_input(tiny_llama_run, tiny_gpt2_run, tmp_path, monkeypatch):
    run, _ = tiny_llama_run
    out = tmp_path / "m.gguf"
    (tmp_path / "empty").mkdir()
    refused([str(tmp_path / "empty"), "--to=gguf", f"--out={out}"], "has no checkpoint")
    refused([str(tmp_path / "nowhere"), "--to=gguf", f"--out={out}"], "nowhere", "not found")
    refused([str(run), "--to=onnx", f"--out={out}"], "--to=onnx")
    refused([str(run), "--to=hf", f"--out={tmp_path / 'hf'}", "--dtype=q8_0"], "--dtype=q8_0")
    refused([str(run), "--to=gguf", f"--out={tmp_path / 'no' / 'such' / 'folder.gguf'}"], "does not exist")
    refused([str(run), "--to=gguf", "--out=/proc/m.gguf"], "cannot write in /proc")
    # a checkpoint of another model: the tiny GPT-2's weights in the tiny Llama's run
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(weights_path(tiny_gpt2_run).read_bytes())
    (other / "config.json").write_text(json.dumps({"model": str(tiny_llama_run[1])}))
    refused([str(other), "--to=gguf", f"--out={out}"], "does not fit the model")
    assert not out.exists()
    # an existing output is refused before anything is loaded, and replaced with --force
    out.write_text("precious")
    monkeypatch.setattr(export, "run_weights", lambda *a: pytest.fail("loaded before checking --out"))
    refused([str(run), "--to=gguf", f"--out={out}"], str(out), "exists", "--force")
    monkeypatch.undo()
    assert out.read_text() == "precious"
    export.main([str(run), "--to=gguf", f"--out={out}", "--force"])
    assert out.read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize("to", ["gguf", "hf"])
def test_a_failed_export_leaves_nothing(to, tiny_llama_run, tmp_path, monkeypatch):
    """A write that fails at the end (a full disk) leaves neither the output nor its temporary file; an existing
    output (--force) is untouched."""
    import gguf
    run, _ = tiny_llama_run

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    if to == "gguf":
        original = gguf.GGUFWriter.write_tensors_to_file
        monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file",
                            lambda self, *a, **k: (original(self, *a, **k), full_disk()))
    else:
        monkeypatch.setattr(export, "save_file", full_disk)
    out = tmp_path / "out"
    refused([str(run), f"--to={to}", f"--out={out}"], "No space left on device")
    assert list(tmp_path.iterdir()) == []
    out.mkdir() if to == "hf" else out.write_text("old")
    refused([str(run), f"--to={to}", f"--out={out}", "--force"], "No space left on device")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ----------------------------------------------------------------------------- the real SmolLM2

@pytest.fixture(scope="module")
def smollm2_run(smollm2, tmp_path_factory):
    """A 'run' of the real SmolLM2: a checkpoint folder of its weights, moved a little (so that the export must
    be of the checkpoint, not of the source GGUF)."""
    model, tok = smollm2
    torch.manual_seed(0)
    weights = {k: (v + 1e-3 * torch.randn_like(v)).contiguous() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("smollm2_run")
    save_file(weights, str(folder / "model.safetensors"), metadata={"step": "1"})
    (folder / "config.json").write_text(json.dumps({"model": "smollm2"}))
    ours = copy.deepcopy(model)
    ours.load_state_dict(weights)
    return folder, ours, tok


def test_real_smollm2_exports(smollm2_run, tmp_path):
    """One forward each on a chat prompt: the GGUF read back by our loader gives identical logits; transformers
    on the GGUF and on the folder within 1e-4 and the same greedy completion."""
    from transformers import AutoModelForCausalLM
    run, ours, tok = smollm2_run
    ids = tok.chat_prompt(QUESTION)
    out = export.main([str(run), "--to=gguf", f"--out={tmp_path / 'smollm2.gguf'}"])
    back, _ = load_smollm2(out, cache_dir=tmp_path / "cache")
    assert torch.equal(logits(back, ids), logits(ours, ids))
    del back
    check_transformers(AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32),
                       ours, tok, ids)
    out.unlink()
    folder = export.main([str(run), "--to=hf", f"--out={tmp_path / 'hf'}"])
    check_transformers(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), ours, tok, ids)
