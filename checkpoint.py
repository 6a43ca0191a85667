"""A run folder and its checkpoints. A checkpoint is one unit, made current by one atomic step, so that a kill,
a Ctrl-C or a full disk at any moment leaves the last good one whole.

    runs/default/
      log.jsonl                 one line per step (on --resume rewritten from the checkpoint: each step once)
      completions.jsonl         one line per step: its prompts and completions (show.step_record; on --resume
                                cut back to the checkpoint's step)
      reward_curve.png
      eval.json, report.html    the evaluations before and after; the run on one page (report.py)
      latest                    the name of the current checkpoint folder
      checkpoint-000010/
        model.safetensors       fp32 master weights, metadata {"step": "10"}
        train_state.pt          optimizer state, the step (10), the log up to it, the config
        config.json             the run's settings (eval.py reads the model name from it)

      .tinygrpo-run             the marker: tinygrpo made this folder; flock'ed by the run that writes it, with
                                its PID inside (a second run into the folder is refused, naming it)

save() writes .tinygrpo-tmp-checkpoint-000010-<pid>, fsyncs it, renames it into place and then replaces `latest`
with os.replace; only that last rename makes it current. Older checkpoint folders are deleted after it, and what a
killed save left (.tinygrpo-tmp-*, or a checkpoint-NNNNNN folder `latest` does not name) is deleted at the next
start. A run deletes nothing else: only names that tinygrpo writes, and only in a folder that carries the marker.
"""
import contextlib
import fcntl
import json
import math
import os
import pickle
import re
import shutil
import signal
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from load_weights import read_safetensors

LATEST = "latest"
MARKER = ".tinygrpo-run"        # in every run folder tinygrpo made: the lock file, holding the runner's PID
TMP = ".tinygrpo-tmp-"          # the prefix of what a save writes before its rename: a name only tinygrpo uses
CHECKPOINT = re.compile(r"checkpoint-\d{6}")
# what runs of tinygrpo (this and older versions) write into a run folder: a folder of only these is a run's
RUN_NAME = re.compile(r"(log\.jsonl|completions\.jsonl|reward_curve\.png|eval\.json|report\.html|latest"
                      r"|checkpoint-\d{6}"
                      r"|model\.safetensors|train_state\.pt|config\.json)(\.tmp(-\d+)?)?|\.tinygrpo-.+")
# what killed saves leave: ours, and the temporary names of older versions (checkpoint-000010.tmp-123)
LEFTOVER = re.compile(r"\.tinygrpo-tmp-.+|(checkpoint-\d{6}|latest|log\.jsonl|completions\.jsonl)\.tmp(-\d+)?")
PROJECT_ROOT = Path(__file__).resolve().parent
# settings that cannot change what a resumed run computes; every other one must equal the checkpoint's
MAY_CHANGE_ON_RESUME = ("steps", "log_every", "save_every", "resume", "eval_before", "eval_samples", "out_dir",
                        "device", "heap", "map_large_blocks")    # map_large_blocks: heap's name before 2026-12-04


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
    tmp = out_dir / f"{TMP}{folder_name(step)}-{os.getpid()}"
    pointer = out_dir / f"{TMP}{LATEST}-{os.getpid()}"
    bad = non_finite(weights) + non_finite(state, "train state ")
    if bad:                                              # never a checkpoint that cannot be trained on
        raise ValueError(f"the checkpoint of step {step} was not saved: {len(bad)} tensors are not finite "
                         f"({', '.join(bad[:2])}{', ...' if len(bad) > 2 else ''})")
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


def save_step(out_dir, policy, optimizer, step, history, config):
    """train.py's save of a step: the fp32 master weights, the optimizer, the log so far and the config
    (configurator.recorded_config). A failed save (disk full, read-only) stops the run in one line, with the
    last good checkpoint still current."""
    weights = {k: v.contiguous() for k, v in optimizer.master_state_dict(policy).items()}
    state = {"optimizer": optimizer.state_dict(), "step": step, "history": history, "config": config}
    try:
        save(out_dir, weights, state, config)
    except OSError as e:
        last = last_good(out_dir)
        raise ValueError(f"could not save the checkpoint of step {step} in {out_dir} ({e.strerror or e}); "
                         + (f"the last good one, {last}, is intact: free space and continue with --resume"
                            if last else "there is no earlier checkpoint")) from None


def non_finite(tensors, prefix=""):
    """The names of the tensors holding a NaN or an infinity, in a dict or list of them (nested)."""
    items = tensors.items() if isinstance(tensors, dict) else enumerate(tensors)
    bad = []
    for name, t in items:
        if isinstance(t, (dict, list, tuple)):
            bad += non_finite(t, f"{prefix}{name}.")
        elif isinstance(t, torch.Tensor) and not finite(t):
            bad.append(f"{prefix}{name}")
    return bad


def finite(t):
    """Whether every number of tensor t is finite: its min and max are (both are NaN if any number is), found
    without the bool tensor of t's size that isfinite(t).all() makes (20x slower on the 28M embedding)."""
    if not t.is_floating_point() or t.numel() == 0:
        return True
    low, high = torch.aminmax(t)
    return bool(torch.isfinite(low) & torch.isfinite(high))


def check_step(step, metrics, weights, out_dir):
    """After each update: a NaN or an infinity in the step's metrics (loss, grad_norm, ...) or in the updated
    weights stops the run in one line, before anything of it is saved, naming the checkpoint to go back to."""
    bad = [f"{k} {v}" for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    what = (f"its {', '.join(bad)}" if bad else
            f"{len(names)} weight tensors ({names[0]}, ...)" if (names := non_finite(weights)) else None)
    if what:
        last = last_good(out_dir)
        raise ValueError(f"step {step} is not finite: {what}; the run stopped before saving it: "
                         + (f"continue from {last} with --resume (a lower --lr, or --grad_clip, may avoid it)"
                            if last else "there is no earlier checkpoint (try a lower --lr, or --grad_clip)"))


def current(out_dir):
    """The current checkpoint folder of a run (None when it has none). `latest` must name a checkpoint-NNNNNN
    folder of this run, not a path: a run never follows it into another folder."""
    pointer = Path(out_dir) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_bytes()[:200].decode(errors="replace").strip()
    folder = Path(out_dir) / name
    if pointer.is_symlink() or not CHECKPOINT.fullmatch(name) or folder.is_symlink():
        raise ValueError(f"{pointer} names {name!r}, not a checkpoint-NNNNNN folder of this run: the run folder "
                         f"was changed by hand; nothing was loaded or deleted")
    if not folder.is_dir():
        raise ValueError(f"{pointer} names {folder.name}, which is missing: the run folder was changed by hand")
    return folder


def last_good(out_dir):
    """current(out_dir), or None when there is none or `latest` is broken (for the hint of an error line)."""
    try:
        return current(out_dir) if Path(out_dir).is_dir() else None
    except ValueError:
        return None


def step_of(folder):
    """checkpoint-000010 -> 10."""
    return int(Path(folder).name.removeprefix("checkpoint-"))


def clean_leftovers(out_dir):
    """Delete what killed saves left: .tinygrpo-tmp-* (and older versions' checkpoint-NNNNNN.tmp-PID), and the
    checkpoint-NNNNNN folders that `latest` does not name (none when `latest` is missing or broken: then they may
    be all that is left of the run). Only in a folder that carries the marker, and only names tinygrpo writes."""
    out_dir = Path(out_dir)
    if not (out_dir / MARKER).is_file():
        return
    keep = last_good(out_dir)
    for p in out_dir.iterdir():
        if LEFTOVER.fullmatch(p.name) or (keep and CHECKPOINT.fullmatch(p.name) and p != keep):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


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
        # weights_only: tensors and plain data only; unpickling anything else could run code from the file
        state = torch.load(folder / "train_state.pt", weights_only=True, map_location=device)
    except pickle.UnpicklingError:
        raise ValueError(f"{folder / 'train_state.pt'} holds pickled objects that tinygrpo never writes (it could "
                         f"run code): not loaded") from None
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
    tmp = path.with_name(f"{TMP}{path.name}-{os.getpid()}")
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


def check_out_dir(out_dir):
    """One line for a folder a run must not take, checked before loading and writing nothing: none (empty), /,
    the home folder, tinygrpo's own folder, a folder holding files that are not a run's (no marker; a folder of
    an older tinygrpo's run, only its names, counts as a run), or one that another run is using."""
    if not str(out_dir).strip():
        raise ValueError("--out_dir is empty: name the run's folder, e.g. --out_dir=runs/NAME")
    path = Path(out_dir).resolve()
    for place, what in ((Path("/"), "the root folder"), (Path.home().resolve(), "the home folder"),
                        (PROJECT_ROOT, "tinygrpo's own folder")):
        if path == place:
            raise ValueError(f"--out_dir={out_dir} is {what}: a run needs a folder of its own, e.g. runs/NAME")
    if path.is_dir() and not (path / MARKER).is_file():
        foreign = sorted(p.name for p in path.iterdir() if not RUN_NAME.fullmatch(p.name))
        if foreign:
            raise ValueError(f"--out_dir={out_dir} holds files that are not a tinygrpo run's ("
                             f"{', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): name a new or "
                             f"empty folder, e.g. runs/NAME")
    RunLock(out_dir, probe=True)


class RunLock:
    """The exclusive lock of a run folder: flock on its marker file, which holds the holder's PID. The OS drops
    a flock when its process ends in any way (SIGKILL too), so a killed run leaves no stale lock behind.
    probe=True: only check that no other process holds it (creating nothing)."""

    def __init__(self, out_dir, probe=False):
        path, self.fd = Path(out_dir) / MARKER, None
        if probe and not path.is_file():
            return
        fd = os.open(path, os.O_RDONLY if probe else os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 20, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(f"--out_dir={out_dir} is in use by another run (PID {holder}): wait for it to end, "
                             f"or choose another --out_dir") from None
        if probe:
            os.close(fd)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self):
        if self.fd is not None:
            os.close(self.fd)               # closing the file drops the flock
            self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def open_run(out_dir, resume):
    """The run folder, made, marked and locked for as long as the run lasts, what killed saves left deleted.
    A fresh run (no --resume, or nothing to resume) first moves an earlier run aside. Yields where it went."""
    out_dir = Path(out_dir)
    fresh = not (resume and current(out_dir))
    moved = set_aside(out_dir) if fresh else None
    out_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(out_dir):
        clean_leftovers(out_dir)
        yield moved


def set_aside(out_dir):
    """Move an earlier run out of the way of a fresh one: runs/default -> runs/default.1 (the next free number),
    cleaned of what killed saves left; never a run that another process is writing (its lock). Returns where it
    went, or None when out_dir holds no run."""
    out_dir = Path(out_dir)
    if not holds_a_run(out_dir):
        return None
    with RunLock(out_dir):                 # marks a folder of an older tinygrpo (only run names: check_out_dir)
        clean_leftovers(out_dir)
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
    error = write_error(existing)
    if error:
        raise ValueError(f"--out_dir={out_dir}: cannot write there ({error} in {existing})")


def write_error(folder):
    """Why a file cannot be written in folder (a probe file made and removed), or None when it can."""
    probe = Path(folder) / f".tinygrpo-tmp-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        return e.strerror or str(e)
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is, so that it stops as on Ctrl-C: the checkpoint named, exit status 143."""


def stop_on_sigterm(signum, frame):
    raise Terminated


@contextlib.contextmanager
def exit_in_one_line(out_dir):
    """train.main's ending when a run cannot go on: one line, no traceback, naming the last good checkpoint of
    out_dir() (None until the settings are read) where there is one. SIGTERM (kill, a job scheduler) stops the
    run as Ctrl-C does. Exit status 1 (on ranks other than 0 without the line), or the shell's 128 + SIGINT (2)
    or SIGTERM (15)."""
    on_sigterm = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        yield
    except ValueError as e:                     # bad input, or a save that failed
        sys.exit(f"error: {e}" if os.environ.get("RANK", "0") == "0" else 1)
    except OSError as e:                        # a missing file, or a full or read-only disk (log.jsonl, the plot)
        last = last_good(out_dir()) if out_dir() is not None else None
        hint = f"; the last checkpoint, {last}, is intact: continue with --resume" if last else ""
        sys.exit(f"error: {e}{hint}" if os.environ.get("RANK", "0") == "0" else 1)
    except KeyboardInterrupt as e:              # Ctrl-C, or SIGTERM: the same line
        last = last_good(out_dir()) if out_dir() is not None else None
        print("interrupted: " + (f"continue from {last} with --resume" if last else "no checkpoint saved yet"),
              file=sys.stderr)
        sys.exit(143 if isinstance(e, Terminated) else 130)
    finally:
        signal.signal(signal.SIGTERM, on_sigterm)
