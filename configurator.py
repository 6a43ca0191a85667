"""train.py's command line: --name=value for every field of TrainConfig and of its GRPOConfig, each converted to
the type of its default and checked before anything is loaded.

    cfg = apply_args(["--task=add2", "--beta=0", "--resume"], TrainConfig())    # bare --flag means True
    device = validate(cfg)        # one line naming the option, its value and what it may be; or the device
"""
import hashlib
import json
import math
import os
import struct
from dataclasses import asdict, fields
from pathlib import Path

import torch

import checkpoint
from ddp import check_world, dist_backend
from device import pick_device, pick_dtype
from load_weights import find_smollm2_gguf, resolve_model
from task import get_task, parse_weights


def option_targets(cfg):
    """{option name: the config object that holds it}: TrainConfig's fields and its GRPOConfig's."""
    return {f.name: cfg for f in fields(cfg) if f.name != "grpo"} | {f.name: cfg.grpo for f in fields(cfg.grpo)}


def usage(doc, cfg):
    """doc (train.py's docstring) and every option with its default value (cfg: a fresh TrainConfig)."""
    return doc + "\noptions (defaults):\n" + "\n".join(
        f"  --{name}={getattr(obj, name)}" for name, obj in option_targets(cfg).items())


def apply_args(argv, cfg):
    """cfg (a TrainConfig) with each --name=value of argv set on it or on its GRPOConfig (bare --flag means True)."""
    targets = option_targets(cfg)
    for arg in argv:
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; use --name=value")
        name, _, value = arg[2:].partition("=")
        if name not in targets:
            raise ValueError(f"unknown option --{name}; known: {', '.join(sorted(targets))}")
        obj = targets[name]
        current = getattr(obj, name)
        setattr(obj, name, convert(name, value if "=" in arg else "true", current))
    return cfg


def convert(name, value, current):
    """The text of --name=value as the type of the option's current value; none (or null) is None."""
    if value.lower() in ("none", "null") and not isinstance(current, bool):
        return None
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return value.lower() in ("true", "1")
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float) or name in ("top_p",):
            return float(value)
        if name == "top_k":
            return int(value)
    except ValueError:
        raise ValueError(f"bad value {value!r} for --{name} (expected {type(current).__name__})") from None
    return value


# what each numeric option of TrainConfig and GRPOConfig may be, and the choices of the others
ALLOWED = {
    "steps": (">= 1", lambda v: v >= 1), "batch_prompts": (">= 1", lambda v: v >= 1),
    "lr": ("> 0 and <= 1", lambda v: 0 < v <= 1), "weight_decay": (">= 0 and <= 1", lambda v: 0 <= v <= 1),
    "grad_clip": (">= 0 (0 or none: no clipping)", lambda v: v is None or v >= 0),
    "mu": (">= 1", lambda v: v >= 1), "n_train": (">= 1", lambda v: v >= 1), "n_eval": (">= 1", lambda v: v >= 1),
    "seed": (">= 0", lambda v: v >= 0), "log_every": (">= 1", lambda v: v >= 1),
    "eval_samples": (">= 0", lambda v: v >= 0), "save_every": (">= 1", lambda v: v >= 1),
    "group_size": (">= 2 (GRPO compares the samples of a group)", lambda v: v >= 2),
    "max_new_tokens": (">= 1", lambda v: v >= 1), "eval_max_new_tokens": (">= 1", lambda v: v >= 1),
    "prompts_per_pass": (">= 1", lambda v: v >= 1), "oversample": (">= 1", lambda v: v >= 1),
    "temperature": (">= 0 (0 = greedy)", lambda v: v >= 0),
    "top_k": (">= 1, or none (no top-k filter)", lambda v: v is None or v >= 1),
    "top_p": ("in (0, 1], or none (no nucleus filter)", lambda v: v is None or 0 < v <= 1),
    "beta": (">= 0 (0: no reference model)", lambda v: v >= 0), "clip_eps": ("> 0", lambda v: v > 0),
    "adv_eps": ("> 0 (it keeps A finite in a flat group)", lambda v: v > 0),
}
MAY_BE_NONE = ("grad_clip",)       # options whose none means "off" although their default is a number
CHOICES = {"adam_moments": ("bf16", "fp32"), "heap": ("auto", "keep", "map", "glibc"),
           "lr_schedule": ("constant", "linear"),
           "kl_estimator": ("k1", "k3"), "kl_mode": ("loss", "reward"),
           "loss_agg": ("seq_mean", "token_mean", "seq_sum", "constant")}


def validate(cfg):
    """Every setting checked before anything is loaded: one line naming the option, its value and what it may
    be. Returns the device to run on."""
    defaults = option_targets(type(cfg)())
    for name, obj in option_targets(cfg).items():
        value, default = getattr(obj, name), getattr(defaults[name], name)
        if value is None and default is not None and name not in MAY_BE_NONE:
            raise ValueError(f"--{name}=none: {name} needs a value (default {default})")
        check_option(name, value)
    resolve_model(cfg.model)                      # a mistyped --model, before an earlier run is moved aside
    get_task(cfg.task)
    weights = parse_weights(cfg.reward_weights)
    for name, w in weights.items():
        if not (math.isfinite(w) and w > 0):
            raise ValueError(f"--reward_weights: the weight of {name} is {w}; it must be a finite number > 0 "
                             f"(leave a component out to not use it)")
    context = context_length(cfg.model)
    budgets = {"max_new_tokens": cfg.grpo.max_new_tokens, "eval_max_new_tokens": cfg.eval_max_new_tokens}
    for name, budget in budgets.items():
        if context is not None and budget >= context:
            raise ValueError(f"--{name}={budget}: the model's context is {context} tokens, "
                             f"which must hold the prompt and the completion; use fewer")
    if weights.get("judge", 0) > 0 and cfg.judge != "ref" and not Path(cfg.judge).exists():
        raise FileNotFoundError(f"--judge={cfg.judge}: no such checkpoint (use ref, the frozen starting model, or a run folder)")
    if cfg.batch_prompts * cfg.grpo.oversample > cfg.n_train:
        times = f" x --oversample={cfg.grpo.oversample}" if cfg.grpo.oversample > 1 else ""
        raise ValueError(f"--batch_prompts={cfg.batch_prompts}{times}: more prompts per step than --n_train={cfg.n_train}")
    check_world(cfg.batch_prompts, int(os.environ.get("WORLD_SIZE", 1)))
    device = pick_device(cfg.device)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist_backend(device)                      # torchrun on a device with no backend is refused here too
    check_device_works(device, cfg.device)
    pick_dtype(cfg.dtype, device)
    writer = os.environ.get("RANK", "0") == "0"   # only rank 0 writes the run folder
    if writer:
        checkpoint.check_out_dir(cfg.out_dir)     # ours to write, and no other run in it
    if cfg.resume:
        check_resumable(cfg)
    if writer:
        checkpoint.check_writable(cfg.out_dir)
    return device


def context_length(model):
    """The model's context in tokens, from its files' metadata without loading any weights (the GGUF header,
    config.json); None where they cannot be read: loading the model then says what is wrong."""
    kind, path = resolve_model(model)
    try:
        if kind == "gpt2":
            return int(json.loads((path / "config.json").read_text())["n_positions"])
        return gguf_field(path or find_smollm2_gguf(), "llama.context_length")
    except Exception:
        return None


# GGUF value types (ggml's gguf.h): number -> struct format; 8 = string, 9 = array
GGUF_TYPES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_field(path, key):
    """One metadata value of a GGUF file, read from its header up to that key: the gguf package's reader maps
    every tensor first, which takes seconds. Header: 'GGUF', version u32, tensors u64, keys u64, then per key
    its name (u64 length + bytes), its type (u32) and its value."""
    with open(path, "rb") as f:
        read = lambda fmt: struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]
        string = lambda: f.read(read("Q"))

        def value(kind):
            if kind == 8:
                return string()
            if kind == 9:
                item, n = read("I"), read("Q")
                return [value(item) for _ in range(n)]
            return read(GGUF_TYPES[kind])
        if f.read(4) != b"GGUF":
            return None
        _, _, n_keys = read("I"), read("Q"), read("Q")
        for _ in range(n_keys):
            name, kind = string().decode(), read("I")
            if name == key:
                return value(kind)
            value(kind)
    return None


def task_sha256(task):
    """sha256 of the bytes of a custom task file (--task=path.py or .jsonl), None for a built-in task: stored in
    the run's config, so that --resume trains on the questions the run started with."""
    if not (task.endswith((".py", ".jsonl")) and Path(task).is_file()):     # a task of task.py by its name
        return None
    return hashlib.sha256(Path(task).read_bytes()).hexdigest()


def recorded_config(cfg):
    """What a checkpoint records of the run (config.json, train_state.pt): every setting, and a custom task
    file's sha256. (checkpoint.run_config reads it back.)"""
    sha = task_sha256(cfg.task)
    return asdict(cfg) | ({"task_sha256": sha} if sha else {})


def check_device_works(device, setting):
    """One line when torch lists a device that then fails on a first tensor (a broken driver, a GPU that another
    program holds), rather than a traceback once the model is on its way there."""
    if device.type == "cuda" and device.index is None:   # under torchrun, this process's own GPU, not GPU 0
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    try:
        torch.ones(1, device=device).add_(1).cpu()
    except Exception as e:
        raise ValueError(f"--device={setting}: {device} is there but does not work: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None


def check_resumable(cfg):
    """--resume: the settings that decide what the run computes must be the checkpoint's."""
    folder = checkpoint.current(cfg.out_dir)
    if folder is None and (Path(cfg.out_dir) / "train_state.pt").exists():
        raise ValueError(f"--resume: {cfg.out_dir} holds a checkpoint of an older tinygrpo (model.safetensors beside "
                         f"train_state.pt); resume it with that version, or start a fresh run without --resume")
    if folder is None:
        return
    if cfg.steps < checkpoint.step_of(folder):
        raise ValueError(f"--resume --steps={cfg.steps}: {folder} is already at step {checkpoint.step_of(folder)}; "
                         f"give --steps={checkpoint.step_of(folder)} or more")
    stored = checkpoint.read_config(folder)
    stored_sha = stored.pop("task_sha256", None)  # None: a built-in task, or an older tinygrpo (not recorded)
    if stored_sha and stored.get("task") == cfg.task and stored_sha != task_sha256(cfg.task):
        now = task_sha256(cfg.task) or "none"
        raise ValueError(f"--resume: the task file {cfg.task} changed since the run started (sha256 "
                         f"{stored_sha[:12]}... then, {now[:12]}... now): resume with the file as it was, "
                         f"or start a fresh run")
    differences = checkpoint.config_differences(stored, asdict(cfg))
    if differences:
        raise ValueError(f"--resume: settings differ from those of {folder}: {'; '.join(differences)} "
                         f"(only {', '.join(checkpoint.MAY_CHANGE_ON_RESUME)} may change; start a fresh run instead)")


# ----------------------------------------------------------------------------- checks the other tools share

def check_option(name, value, like=None):
    """One option's rule (ALLOWED, CHOICES): validate() checks every option with it, and eval.py and judge.py
    the flags they share with train.py (`like`: the train.py option whose rule it follows, where the names
    differ). One line naming --name, or nothing."""
    rule = like or name
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"--{name}={value}: {name} must be a finite number")
    if rule in ALLOWED and not ALLOWED[rule][1](value):
        raise ValueError(f"--{name}={value}: {name} must be {ALLOWED[rule][0]}")
    if rule in CHOICES and value not in CHOICES[rule]:
        raise ValueError(f"--{name}={value}: unknown {name}; choose one of: {', '.join(CHOICES[rule])}")
