"""Take the trained model with you: a run's weights as a GGUF file (llama.cpp, Ollama, LM Studio) or as a Hugging
Face folder (transformers, vLLM).

    python export.py runs/default --to=gguf --out=model.gguf              # f32; --dtype=bf16 or q8_0 for less
    python export.py runs/default --to=hf --out=smollm2-larger            # a folder from_pretrained loads
    llama-cli -m model.gguf -cnv                                          # chat with it (llama.cpp)
    ollama create smollm2-larger -f Modelfile                             # Modelfile: FROM ./model.gguf

GGUF (Llama runs, e.g. SmolLM2): every key-value of the source GGUF is copied (the tokenizer's vocabulary and
merges, its pre-tokenizer, the chat template, the special ids) but the llama.* shapes, written from the model;
the tensors are the run's. llama.cpp's
converter stores each head's Q and K rows reordered for its RoPE (load_weights.unpermute_qk undoes that on
reading); permute_qk here redoes it, so the file reads back to the very same weights.
HF: config.json, model.safetensors in Hugging Face's tensor names, the tokenizer files (SmolLM2: a tokenizer.json
built from the GGUF's vocabulary and merges, with its digit-splitting pre-tokenizer and chat template; GPT-2:
the source folder's vocab.json and merges.txt), generation_config.json.

The output is written under a temporary name beside it and renamed into place when complete: a failed or
interrupted export leaves nothing. An existing output is replaced only with --force.
"""
import argparse
import functools
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from checkpoint import run_config, weights_path, write_error
from load_weights import GGUF_NAMES, find_smollm2_gguf, resolve_model

DTYPES = ("f32", "bf16", "q8_0")


def permute_qk(w, n_head):
    """llama.cpp's layout of a Q or K weight (rows, C): each head's rows from (half, D/2) to (D/2, pair), the
    exact inverse of load_weights.unpermute_qk."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ----------------------------------------------------------------------------- checks and the run's weights

def check_output(out, force):
    """One line, before anything is loaded, when the output exists (without --force) or cannot be written."""
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not force:
        raise ValueError(f"{out} exists: choose another --out or pass --force to replace it")
    folder = out.parent
    if not folder.is_dir():
        raise ValueError(f"--out={out}: the folder {folder} does not exist")
    error = write_error(folder)
    if error:
        raise ValueError(f"--out={out}: cannot write in {folder} ({error})")


def run_weights(run):
    """(model name, its fp32 GPT with the run's weights, Tokenizer) of a run folder, a checkpoint folder or a
    model.safetensors; one line for a folder with no checkpoint or weights that do not fit the run's model."""
    run = Path(run)
    if not run.exists():
        raise ValueError(f"{run} not found (a run folder such as runs/default)")
    try:
        path = weights_path(run)
    except FileNotFoundError:
        raise ValueError(f"{run} has no checkpoint (no 'latest' file or model.safetensors): train first, or "
                         f"wait for the run's first checkpoint (--save_every)") from None
    from eval import load_policy
    name = (run_config(path) or {}).get("model", "smollm2")
    model, tok = load_policy(name, path)
    return name, model, tok


def source_gguf(name):
    """The GGUF file a Llama run started from (its metadata is copied), or None for a GPT-2 run."""
    kind, path = resolve_model(name)
    if kind != "gguf":
        return None
    return path or find_smollm2_gguf()


def replace_into(tmp, out):
    """Move the complete tmp (a file or a folder) to out, replacing what is there (--force)."""
    out = Path(out)
    if out.is_dir() and not out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


# ----------------------------------------------------------------------------- GGUF

@functools.lru_cache(maxsize=2)
def gguf_fields(path):
    """{key: (value, value type, array element type)} of a GGUF file's key-values, as GGUFWriter.add_key_value
    takes them. Read once per process: GGUFReader parses the 49,152 tokens and 48,900 merges one by one."""
    from gguf import GGUFReader, GGUFValueType
    fields = {}
    for key, field in GGUFReader(path).fields.items():
        vtype = field.types[0]
        fields[key] = (field.contents(), vtype, field.types[-1] if vtype == GGUFValueType.ARRAY else None)
    return fields


def gguf_tensors(model):
    """[(GGUF name, fp32 numpy array in our (PyTorch) shape)] in llama.cpp's order and layout."""
    state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    cfg = model.cfg
    out = [("token_embd.weight", state["embed.weight"])]
    for i in range(cfg.n_layer):
        for gguf_kind, ours in GGUF_NAMES.items():
            w = state[f"blocks.{i}.{ours}.weight"]
            if gguf_kind == "attn_q":
                w = permute_qk(w, cfg.n_head)
            elif gguf_kind == "attn_k":
                w = permute_qk(w, cfg.n_kv_head)
            out.append((f"blk.{i}.{gguf_kind}.weight", np.ascontiguousarray(w)))
    out.append(("output_norm.weight", state["norm.weight"]))      # the head is tied to token_embd: no output
    return out


def write_gguf(model, source, out, dtype="f32"):
    """The model as a GGUF at `out` (a temporary file renamed into place), with every key-value of the source
    GGUF but the file type and the llama.* shapes (the model's). Norm weights (1-D) stay f32 in every dtype,
    as llama.cpp's converter keeps them; q8_0 stores blocks of 32 weights as int8 times one fp16 scale."""
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType
    from gguf.quants import quantize
    qtype = {"f32": GGMLQuantizationType.F32, "bf16": GGMLQuantizationType.BF16,
             "q8_0": GGMLQuantizationType.Q8_0}[dtype]
    file_type = {"f32": LlamaFileType.ALL_F32, "bf16": LlamaFileType.MOSTLY_BF16,
                 "q8_0": LlamaFileType.MOSTLY_Q8_0}[dtype]
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        writer = GGUFWriter(str(tmp), "llama")          # writes general.architecture itself
        for key, value in gguf_fields(Path(source).resolve()).items():
            if key.startswith(("GGUF.", "llama.")) or key in ("general.architecture", "general.file_type"):
                continue                                # the header's counts, and what is set below
            writer.add_key_value(key, *value)
        cfg = model.cfg                                 # the shapes are the model's (a test's tiny Llama too)
        writer.add_file_type(int(file_type))
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_context_length(cfg.block_size)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_feed_forward_length(cfg.n_inner)
        writer.add_head_count(cfg.n_head)
        writer.add_head_count_kv(cfg.n_kv_head)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_rope_freq_base(cfg.rope_base)
        writer.add_layer_norm_rms_eps(cfg.norm_eps)
        for name, w in gguf_tensors(model):
            if w.ndim == 1 or qtype == GGMLQuantizationType.F32:
                writer.add_tensor(name, w.astype(np.float32))
            else:
                writer.add_tensor(name, quantize(w, qtype), raw_dtype=qtype)   # bytes: the shape follows
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        replace_into(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


# ----------------------------------------------------------------------------- Hugging Face folder

def hf_llama_state(model):
    """Our Llama names -> Hugging Face LlamaForCausalLM's. Both keep Q and K in the half-split RoPE layout, so
    the tensors are the same; the head is tied (no lm_head.weight)."""
    names = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm", "attn": "self_attn"}
    out = {}
    for k, v in model.state_dict().items():
        if k == "embed.weight":
            k = "model.embed_tokens.weight"
        elif k == "norm.weight":
            k = "model.norm.weight"
        else:
            _, i, part, *rest = k.split(".")
            k = ".".join(["model.layers", i, names.get(part, part), *rest])
        out[k] = v
    return out


def hf_gpt2_state(model):
    """Our GPT-2 names -> Hugging Face GPT2LMHeadModel's, the inverse of load_weights.gpt2_state_dict: Q, K, V
    concatenated into c_attn, and every Linear stored as Conv1D's (in, out)."""
    sd = model.state_dict()
    out = {"transformer.wte.weight": sd["embed.weight"], "transformer.wpe.weight": sd["pos_embed.weight"],
           "transformer.ln_f.weight": sd["norm.weight"], "transformer.ln_f.bias": sd["norm.bias"]}
    for i in range(model.cfg.n_layer):
        b, h = f"blocks.{i}.", f"transformer.h.{i}."
        qkv = [sd[f"{b}attn.{x}_proj.weight"] for x in "qkv"]
        out[h + "attn.c_attn.weight"] = torch.cat(qkv, dim=0).t()
        out[h + "attn.c_attn.bias"] = torch.cat([sd[f"{b}attn.{x}_proj.bias"] for x in "qkv"])
        for theirs, ours in (("attn.c_proj", "attn.o_proj"), ("mlp.c_fc", "mlp.up_proj"),
                             ("mlp.c_proj", "mlp.down_proj")):
            out[h + theirs + ".weight"] = sd[b + ours + ".weight"].t()
            out[h + theirs + ".bias"] = sd[b + ours + ".bias"]
        for theirs, ours in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
            out[h + theirs + ".weight"], out[h + theirs + ".bias"] = sd[b + ours + ".weight"], sd[b + ours + ".bias"]
    return out


def llama_config(cfg, meta, dtype):
    """config.json of a LlamaForCausalLM equal to our model (SiLU MLP, no biases, tied head, default RoPE)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.n_embd, "intermediate_size": cfg.n_inner, "num_hidden_layers": cfg.n_layer,
            "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim,
            "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_base,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True,
            "bos_token_id": meta["bos"], "eos_token_id": meta["eos"], "pad_token_id": meta["pad"],
            "torch_dtype": dtype}


def gpt2_config(cfg, eos, dtype):
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
            "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
            "n_inner": cfg.n_inner, "layer_norm_epsilon": cfg.norm_eps, "activation_function": "gelu_new",
            "tie_word_embeddings": True, "bos_token_id": eos, "eos_token_id": eos, "torch_dtype": dtype}


def gguf_tokenizer_meta(source):
    """The tokenizer of a SmolLM2-style GGUF: tokens, merges, control tokens, special ids, chat template."""
    fields = gguf_fields(Path(source).resolve())
    field = lambda k, default=None: fields[k][0] if k in fields else default
    tokens, types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.token_type")
    eos = field("tokenizer.ggml.eos_token_id")
    return {"tokens": tokens, "merges": field("tokenizer.ggml.merges"),
            "control": [i for i, t in enumerate(types) if t == 3], "bos": field("tokenizer.ggml.bos_token_id", eos),
            "eos": eos, "pad": field("tokenizer.ggml.padding_token_id", eos),
            "unk": field("tokenizer.ggml.unknown_token_id"), "chat_template": field("tokenizer.chat_template")}


def tokenizer_json(meta):
    """Hugging Face `tokenizers`' file for byte-level BPE with SmolLM2's pre-tokenizer (llama.cpp's "smollm":
    each digit split off on its own first, then GPT-2's byte-level regex); control tokens are special."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    added = [{"id": i, "content": meta["tokens"][i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i in meta["control"]]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": True}, byte_level]},
            "post_processor": byte_level, "decoder": byte_level,
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {t: i for i, t in enumerate(meta["tokens"])},
                      "merges": [m.split(" ") for m in meta["merges"]]}}


def write_hf(model, tok, name, out, dtype="f32"):
    """A Hugging Face folder at `out` (built under a temporary name, renamed into place when complete)."""
    torch_dtype = {"f32": "float32", "bf16": "bfloat16"}[dtype]
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        cfg = model.cfg
        if cfg.arch == "llama":
            meta = gguf_tokenizer_meta(source_gguf(name))
            state, config = hf_llama_state(model), llama_config(cfg, meta, torch_dtype)
            (tmp / "tokenizer.json").write_text(json.dumps(tokenizer_json(meta), ensure_ascii=False))
            special = lambda i: meta["tokens"][i] if i is not None else None
            tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": special(meta["bos"]),
                          "eos_token": special(meta["eos"]), "pad_token": special(meta["pad"]),
                          "unk_token": special(meta["unk"]), "model_max_length": cfg.block_size,
                          "clean_up_tokenization_spaces": False, "chat_template": meta["chat_template"]}
            (tmp / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1, ensure_ascii=False))
            ids = {"bos_token_id": meta["bos"], "eos_token_id": meta["eos"], "pad_token_id": meta["pad"]}
        else:
            folder = resolve_model(name)[1]
            state, config = hf_gpt2_state(model), gpt2_config(cfg, tok.eos_id, torch_dtype)
            for f in ("vocab.json", "merges.txt"):
                shutil.copyfile(folder / f, tmp / f)
            ids = {"bos_token_id": tok.eos_id, "eos_token_id": tok.eos_id}
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        (tmp / "generation_config.json").write_text(json.dumps(ids, indent=1))
        cast = torch.bfloat16 if dtype == "bf16" else torch.float32
        save_file({k: v.detach().to(cast).contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        umask = os.umask(0)
        os.umask(umask)
        for f in tmp.iterdir():                     # safetensors writes its file readable by its owner only
            f.chmod(0o666 & ~umask)
        replace_into(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ----------------------------------------------------------------------------- entry point

def export(run, to, out, dtype="f32", force=False):
    """Check the arguments (one line each), then load the run's weights and write them: the output path."""
    if to not in ("gguf", "hf"):
        raise ValueError(f"--to={to}: use gguf or hf")
    if dtype not in DTYPES or (to == "hf" and dtype == "q8_0"):
        raise ValueError(f"--dtype={dtype}: use " + ("f32 or bf16 with --to=hf" if to == "hf" else "f32, bf16 or q8_0"))
    check_output(out, force)
    name, model, tok = run_weights(run)
    if to == "gguf":
        if model.cfg.arch != "llama":
            raise ValueError(f"{run} is a {model.cfg.arch} run: --to=gguf writes Llama models (SmolLM2); "
                             f"export it with --to=hf")
        return write_gguf(model, source_gguf(name), out, dtype)
    return write_hf(model, tok, name, out, dtype)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run folder (its current checkpoint), a checkpoint folder or a model.safetensors")
    ap.add_argument("--to", required=True, help="gguf (llama.cpp, Ollama) or hf (transformers, vLLM)")
    ap.add_argument("--out", required=True, help="the .gguf file or the folder to write")
    ap.add_argument("--dtype", default="f32", help="f32 | bf16 | q8_0 (gguf only): the weights' precision")
    ap.add_argument("--force", action="store_true", help="replace an existing output")
    args = ap.parse_args(argv)
    try:
        out = export(args.run, args.to, args.out, args.dtype, args.force)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
