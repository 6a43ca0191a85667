"""A run folder and its checkpoints. A checkpoint is one unit, made current by one atomic step, so that a kill,
a Ctrl-C or a full disk at any moment leaves the last good one whole.

    runs/default/
      log.jsonl                 one line per step (on --resume rewritten from the checkpoint: each step once)
      completions.jsonl         one line per step: its prompts and completions (show.step_record; on --resume
                                cut back to the checkpoint's step)
      reward_curve.png
      latest                    the name of the current checkpoint folder
      checkpoint-000010/
        model.safetensors       fp32 master weights, metadata {"step": "10"}
        train_state.pt          optimizer state, the step (10), the log up to it, the config
        config.json             the run's settings (eval.py reads the model name from it)

save() writes checkpoint-000010.tmp-<pid>, fsyncs it, renames it into place and then replaces `latest` with
os.replace; only that last rename makes it current. Older checkpoint folders are deleted after it, and what a
killed save left (*.tmp-*, or a folder `latest` does not name) is deleted at the next start.
"""
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from load_weights import read_safetensors

LATEST = "latest"
# settings that cannot change what a resumed run computes; every other one must equal the checkpoint's
MAY_CHANGE_ON_RESUME = ("steps", "log_every", "save_every", "resume", "eval_before", "eval_samples", "out_dir",
                        "device")


def folder_name(step):
    return f"checkpoint-{step:06d}"


def fsync(path):
    """Push a file's (or a folder's list of names') bytes to the disk: a rename is only as durable as them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_weights(weights, path, step):
    """The weights, with their step in the file's metadata (train_state.pt holds it too: resume compares)."""
    try:
        save_file(weights, str(path), metadata={"step": str(step)})
    except SafetensorError as e:        # safetensors reports a failed write (a full disk) so: it is an OSError
        raise OSError(str(e).removeprefix("Error while serializing: ")) from None


def write_state(state, path):
    """torch.save into a file opened here: a failed write (a full disk) then surfaces as its OSError, which torch
    would report as a RuntimeError of its zip writer."""
    with open(path, "wb") as f:
        try:
            torch.save(state, f)
        except RuntimeError as e:
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


def save(out_dir, weights, state, config):
    """Write a checkpoint of state["step"] and make it current; raises OSError (disk full, read-only) with the
    previous checkpoint still current and nothing of the new one left behind."""
    out_dir, step = Path(out_dir), state["step"]
    tmp = out_dir / f"{folder_name(step)}.tmp-{os.getpid()}"
    pointer = out_dir / f"{LATEST}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_weights(weights, tmp / "model.safetensors", step)
        write_state(state, tmp / "train_state.pt")
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        for f in tmp.iterdir():
            fsync(f)
        fsync(tmp)
        final = out_dir / folder_name(step)
        shutil.rmtree(final, ignore_errors=True)       # a leftover of a killed run that got this far
        tmp.rename(final)
        pointer.write_text(final.name)
        fsync(pointer)
        os.replace(pointer, out_dir / LATEST)           # the one atomic step: now this checkpoint is current
        fsync(out_dir)
    except BaseException:                               # OSError, KeyboardInterrupt: leave the last good one
        shutil.rmtree(tmp, ignore_errors=True)
        pointer.unlink(missing_ok=True)
        raise
    clean_leftovers(out_dir)
    return final


def current(out_dir):
    """The current checkpoint folder of a run (None when it has none)."""
    pointer = Path(out_dir) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(out_dir) / pointer.read_text().strip()
    if not folder.is_dir():
        raise ValueError(f"{pointer} names {folder.name}, which is missing: the run folder was changed by hand")
    return folder


def clean_leftovers(out_dir):
    """Delete what killed saves left: *.tmp-* (and the old layout's *.tmp), and checkpoint folders that `latest`
    does not name (none when `latest` is missing or broken: then they may be all that is left of the run)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    try:
        keep = current(out_dir)
    except ValueError:
        keep = None
    for p in out_dir.iterdir():
        stale = ".tmp-" in p.name or p.name.endswith(".tmp") or (keep and p.name.startswith("checkpoint-") and p != keep)
        if stale:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def read_config(folder):
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} (damaged checkpoint?): {e}") from None


def load(folder, device="cpu"):
    """(weights, train state) of a checkpoint folder, checked: both halves readable and of the same step."""
    folder = Path(folder)
    weights, meta = read_safetensors(folder / "model.safetensors", device)
    try:
        state = torch.load(folder / "train_state.pt", weights_only=False, map_location=device)
    except Exception as e:       # a truncated zip fails somewhere inside torch.load, with various types
        raise ValueError(f"cannot read {folder / 'train_state.pt'} (truncated or damaged?): "
                         f"{type(e).__name__}") from None
    if meta.get("step") != str(state.get("step")):
        raise ValueError(f"{folder}: its weights are of step {meta.get('step')} but its optimizer state of step "
                         f"{state.get('step')}; the two halves do not belong together")
    return weights, state


def weights_path(path):
    """A run folder (its current checkpoint), a checkpoint folder or a weight file -> the weight file."""
    path = Path(path)
    if path.is_dir():
        path = (current(path) or path) / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return path


def run_config(path):
    """The settings of the run that wrote a checkpoint (None for a weight file with no config.json beside it)."""
    folder = weights_path(path).parent
    return read_config(folder) if (folder / "config.json").exists() else None


def flat(config, prefix=""):
    """{'grpo': {'beta': 0.04}} -> {'beta': 0.04}: a nested config's fields by their option names."""
    out = {}
    for name, value in config.items():
        out |= flat(value, prefix) if name == "grpo" and isinstance(value, dict) else {prefix + name: value}
    return out


def config_differences(stored, now, may_change=MAY_CHANGE_ON_RESUME):
    """'name: stored -> now' for every setting (also those one side lacks) that differs and may not change."""
    stored, now = flat(stored), flat(json.loads(json.dumps(now)))       # JSON both: tuples become lists
    missing = "(not set)"
    return [f"{name} {stored.get(name, missing)} -> {now.get(name, missing)}"
            for name in sorted(stored.keys() | now.keys())
            if name not in may_change and stored.get(name, missing) != now.get(name, missing)]


def replace_lines(path, lines):
    """The file's text = these lines, replaced in one rename (a kill leaves the old text or the new)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def rewrite_log(out_dir, history):
    """log.jsonl = the checkpoint's log: lines of steps after it are gone."""
    replace_lines(Path(out_dir) / "log.jsonl", [json.dumps(h) for h in history])


def cut_after(path, step):
    """A JSONL file of one record per step, written as the run went (completions.jsonl), cut back to the
    records up to `step`, the checkpoint's: the steps after it run again. A line that a kill cut short ends
    it there too. No file (a run of an older tinygrpo): nothing to cut."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] > step:
                break
        except (ValueError, KeyError, TypeError):
            break
        kept.append(line)
    replace_lines(path, kept)


def holds_a_run(out_dir):
    return any((Path(out_dir) / name).exists() for name in (LATEST, "log.jsonl", "train_state.pt"))


def set_aside(out_dir):
    """Move an earlier run out of the way of a fresh one: runs/default -> runs/default.1 (the next free number).
    Returns where it went, or None when out_dir holds no run."""
    out_dir = Path(out_dir)
    if not holds_a_run(out_dir):
        return None
    n = 1
    while out_dir.with_name(f"{out_dir.name}.{n}").exists():
        n += 1
    return out_dir.rename(out_dir.with_name(f"{out_dir.name}.{n}"))


def check_writable(out_dir):
    """One line when out_dir cannot be created or written (checked before any model is loaded, creating
    nothing): a probe file in out_dir, or in the nearest folder above it that exists."""
    out_dir = Path(out_dir)
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    probe = existing / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out_dir={out_dir}: cannot write there ({e.strerror or e} in {existing})") from None
