"""A run touches only what it wrote, never shares its folder, never saves or evaluates a non-finite model, never
runs code from a checkpoint (issue 21, items 1-5, 7 and 12). On the tiny random GPT-2 checkpoint."""
import hashlib
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoint
import configurator
import task as task_module
import train
from conftest import ROOT, one_line, toy_reward
from test_runs import exit_line, run, runs_of_1_and_2_steps, steps_logged, tiny_argv  # noqa: F401 (a fixture)


@pytest.fixture(autouse=True)
def learning(monkeypatch):
    monkeypatch.setattr(train, "make_reward", lambda *a: toy_reward)


@pytest.fixture
def no_model_load(monkeypatch):
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("a model was loaded before validation"))


def snapshot(folder):
    """Every path under folder with its bytes (None for a folder): what a refused run must leave as it was."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


def user_files(folder):
    """Files of the user's whose names the old cleanup took for leftovers (issue 21, item 1)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.tmp").write_text("x")
    (folder / "backup.tmp").mkdir()
    (folder / "backup.tmp" / "a.txt").write_text("a")
    (folder / "checkpoint-ideas.txt").write_text("ideas")
    (folder / "checkpoint-notes").mkdir()
    (folder / "checkpoint-notes" / "n.txt").write_text("n")
    (folder / "results.tmp-1").write_text("r")


# ----------------------------------------------------------------------------- 1. the run folder is ours alone


def test_a_folder_of_the_users_files_is_refused_before_loading(no_model_load, tiny_checkpoint, tmp_path):
    user_files(tmp_path / "d")
    before = snapshot(tmp_path / "d")
    msg = exit_line(tiny_argv(tiny_checkpoint, tmp_path / "d"))
    assert msg.startswith(f"error: --out_dir={tmp_path / 'd'} holds files that are not a tinygrpo run's "
                          f"(backup.tmp, checkpoint-ideas.txt, checkpoint-notes, ...)"), msg
    assert snapshot(tmp_path / "d") == before


@pytest.mark.parametrize("where,words", [
    ("", ["--out_dir is empty"]), ("/", ["--out_dir=/ is the root folder"]),
    ("home", ["is the home folder"]), ("project", ["is tinygrpo's own folder"]),
])
def test_out_dir_that_is_not_a_folder_of_its_own_is_refused(where, words, no_model_load, tiny_checkpoint):
    out = {"home": str(Path.home()), "project": str(ROOT)}.get(where, where)
    before = sorted(os.listdir(out or "."))
    msg = exit_line(tiny_argv(tiny_checkpoint, out))
    assert all(w in msg for w in words), msg
    assert sorted(os.listdir(out or ".")) == before


def test_a_run_deletes_only_what_it_wrote(tiny_checkpoint, tmp_path):
    """The user's files put into a run folder survive a resume; a killed save's leftover and the older
    checkpoint do not."""
    out = tmp_path / "run"
    run(tiny_checkpoint, out, steps=1)
    assert (out / ".tinygrpo-run").is_file()
    user_files(out)
    (out / "checkpoint-000001" / "my-notes.txt").write_text("kept with its checkpoint")
    mine = {k: v for k, v in snapshot(out).items() if k.split("/")[0] in (
        "data.tmp", "backup.tmp", "checkpoint-ideas.txt", "checkpoint-notes", "results.tmp-1")}
    (out / ".tinygrpo-tmp-checkpoint-000002-99").mkdir()
    run(tiny_checkpoint, out, steps=2, resume=True)
    assert {k: v for k, v in snapshot(out).items() if k in mine} == mine
    assert not (out / ".tinygrpo-tmp-checkpoint-000002-99").exists() and not (out / "checkpoint-000001").exists()
    assert checkpoint.current(out).name == "checkpoint-000002"


def test_a_run_folder_of_an_older_tinygrpo_still_resumes(tiny_checkpoint, tmp_path):
    """No marker, only names a run writes (log.jsonl, latest, checkpoint-NNNNNN): it counts as a run."""
    run(tiny_checkpoint, tmp_path, steps=1)
    (tmp_path / ".tinygrpo-run").unlink()
    out = run(tiny_checkpoint, tmp_path, steps=2, resume=True)
    assert [h["step"] for h in out["history"]] == [1, 2] and (tmp_path / ".tinygrpo-run").is_file()


# ----------------------------------------------------------------------------- 2. one run per folder

HOLD_THE_LOCK = ("import sys, checkpoint; lock = checkpoint.RunLock(sys.argv[1]); print('locked', flush=True); "
                 "sys.stdin.read()")


def test_a_locked_run_folder_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(
        tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run(tiny_checkpoint, out, steps=1)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(out)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = snapshot(out)
        with monkeypatch.context() as mp:
            mp.setattr(train, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
            for extra in ([], ["--resume", "--steps=2"]):            # a second run, and a resume
                msg = exit_line(tiny_argv(tiny_checkpoint, out, *extra))
                assert msg == (f"error: --out_dir={out} is in use by another run (PID {holder.pid}): wait for it "
                               f"to end, or choose another --out_dir"), msg
        with pytest.raises(ValueError) as e:                           # nor is it moved aside
            checkpoint.set_aside(out)
        one_line(e, f"PID {holder.pid}")
        assert snapshot(out) == before and not (tmp_path / "run.1").exists()
    finally:
        holder.kill()                                                  # SIGKILL: the OS drops its flock
        holder.wait()
    out_ = run(tiny_checkpoint, out, steps=2, resume=True)
    assert [h["step"] for h in out_["history"]] == [1, 2]


def test_a_run_holds_its_folder_locked_while_it_runs(tiny_checkpoint, tmp_path, monkeypatch):
    """While train() runs, a probe (another open file of the same process conflicts with flock too) is refused
    naming this process; after it, the lock is free."""
    seen, real = [], train.optimize

    def probing(*a, **k):
        with pytest.raises(ValueError) as e:
            checkpoint.check_out_dir(tmp_path)
        seen.append(str(e.value))
        return real(*a, **k)
    monkeypatch.setattr(train, "optimize", probing)
    run(tiny_checkpoint, tmp_path, steps=1)
    assert seen and f"PID {os.getpid()}" in seen[0]
    checkpoint.check_out_dir(tmp_path)                                 # released


# ----------------------------------------------------------------------------- 3. every update checked


@pytest.mark.parametrize("what", ["loss", "grad_norm", "weights"])
def test_a_non_finite_step_stops_in_one_line_and_is_never_saved(what, tiny_checkpoint, tmp_path, monkeypatch):
    real, calls = train.optimize, []

    def poisoned(policy_pass, optimizer, batch, cfg, world=1):       # step 2 goes wrong
        loss, kl, clipped, grad_norm = real(policy_pass, optimizer, batch, cfg, world)
        calls.append(1)
        if len(calls) == 2:
            if what == "loss":
                loss = float("nan")
            elif what == "grad_norm":
                grad_norm = float("inf")
            else:
                with torch.no_grad():                                  # fp32: the parameter is its master weight
                    next(policy_pass.parameters()).view(-1)[0] = float("inf")
        return loss, kl, clipped, grad_norm
    monkeypatch.setattr(train, "optimize", poisoned)
    msg = exit_line(tiny_argv(tiny_checkpoint, tmp_path))
    assert msg.startswith("error: step 2 is not finite: ") and (what in msg or what == "weights"), msg
    assert msg.endswith(f"continue from {tmp_path / 'checkpoint-000001'} with --resume "
                        f"(a lower --lr, or --grad_clip, may avoid it)"), msg
    assert checkpoint.current(tmp_path).name == "checkpoint-000001" and steps_logged(tmp_path) == [1]
    weights, state = checkpoint.load(checkpoint.current(tmp_path))
    assert not checkpoint.non_finite(weights) and not checkpoint.non_finite(state)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_agrees_with_isfinite_wherever_the_bad_number_is(dtype):
    """checkpoint.finite (min and max, no bool tensor) against torch.isfinite(t).all(): a NaN, +inf or -inf at
    the first, a middle, a SIMD-tail and the last position of a 1M tensor; finite tensors; the other kinds."""
    t = torch.randn(1_000_003).to(dtype)
    assert checkpoint.finite(t) and checkpoint.finite(t[:0]) and checkpoint.finite(torch.arange(5))
    for bad in (math.nan, math.inf, -math.inf):
        for where in (0, 517_211, 999_999, 1_000_002):
            u = t.clone()
            u[where] = bad
            assert checkpoint.finite(u) == bool(torch.isfinite(u).all()) == False, (bad, where)
    assert checkpoint.finite(torch.tensor(3.0e38) * 1) and not checkpoint.finite(torch.tensor(3.0e38) * 10)


def test_save_refuses_a_non_finite_checkpoint(tmp_path):
    state = {"step": 4, "optimizer": {"t": 4, "exp_avg": [torch.zeros(2), torch.tensor([0.0, math.nan])]}}
    with pytest.raises(ValueError) as e:
        checkpoint.save(tmp_path, {"w": torch.ones(2)}, state, {})
    one_line(e, "step 4 was not saved", "1 tensors are not finite", "train state optimizer.exp_avg.1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("arg,words", [
    ("--weight_decay=1e45", ["--weight_decay=1e+45", ">= 0 and <= 1"]),
    ("--lr=1e9", ["--lr=1000000000.0", "> 0 and <= 1"]),
    ("--reward_weights=correct:1e999", ["correct is inf", "finite number > 0"]),
    ("--reward_weights=correct:1,format:0", ["format is 0.0", "finite number > 0"]),
])
def test_numeric_flags_out_of_their_range_are_one_line(arg, words, no_model_load, tiny_checkpoint, tmp_path):
    msg = exit_line([f"--model={tiny_checkpoint}", arg, f"--out_dir={tmp_path / 'run'}"])
    assert all(w in msg for w in words), msg
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("value", ["none", "0"])
def test_grad_clip_none_or_0_means_no_clipping(value, tiny_checkpoint, tmp_path, monkeypatch):
    clips = []
    real = train.optimize
    monkeypatch.setattr(train, "optimize", lambda pp, opt, batch, cfg, world=1:
                        clips.append(cfg.grad_clip) or real(pp, opt, batch, cfg, world))
    train.main(tiny_argv(tiny_checkpoint, tmp_path, f"--grad_clip={value}", "--steps=1"))
    assert clips == [None if value == "none" else 0.0]


# ----------------------------------------------------------------------------- 4. a resume trains what the run did


def write_task(path, answers):
    path.write_text("".join(json.dumps({"question": f"What is {i} plus one?", "answer": a}) + "\n"
                            for i, a in enumerate(answers)))


def test_resume_refuses_a_task_file_that_changed(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(task_module, "TASKS", dict(task_module.TASKS))  # what loading a task file registers
    task = tmp_path / "plus_one.jsonl"
    write_task(task, [i + 1 for i in range(60)])
    run(tiny_checkpoint, tmp_path / "run", steps=1, task=str(task))
    stored = json.loads((checkpoint.current(tmp_path / "run") / "config.json").read_text())
    assert stored["task_sha256"] == hashlib.sha256(task.read_bytes()).hexdigest()
    write_task(task, [i + 2 for i in range(60)])                   # other answers, same path
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    msg = exit_line(tiny_argv(tiny_checkpoint, tmp_path / "run", f"--task={task}", "--resume", "--steps=2"))
    assert msg.startswith(f"error: --resume: the task file {task} changed since the run started (sha256 "
                          f"{stored['task_sha256'][:12]}... then, "), msg


def test_resume_refuses_fewer_steps_than_the_checkpoint_has(tiny_checkpoint, tmp_path, monkeypatch):
    run(tiny_checkpoint, tmp_path, steps=2)
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    msg = exit_line(tiny_argv(tiny_checkpoint, tmp_path, "--resume", "--steps=1"))
    assert msg == (f"error: --resume --steps=1: {tmp_path / 'checkpoint-000002'} is already at step 2; "
                   f"give --steps=2 or more"), msg


# ----------------------------------------------------------------------------- 5. no code from a checkpoint


class Payload:
    """Unpickling it would create a file: a harmless stand-in for a command."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.path),)


def test_a_train_state_with_a_pickled_payload_is_refused_and_never_runs(tiny_checkpoint, tmp_path):
    run(tiny_checkpoint, tmp_path / "run", steps=1)
    folder = checkpoint.current(tmp_path / "run")
    _, state = checkpoint.load(folder)                  # the project's own state loads with weights_only=True
    assert state["optimizer"]["t"] == 1 and [h["step"] for h in state["history"]] == [1]
    assert state["config"]["task"] == "add1" and isinstance(state["config"]["grpo"], dict)
    marker = tmp_path / "payload-ran"
    state["history"][0]["note"] = Payload(marker)
    torch.save(state, folder / "train_state.pt")
    with pytest.raises(ValueError) as e:
        checkpoint.load(folder)
    one_line(e, str(folder / "train_state.pt"), "pickled objects", "not loaded")
    msg = exit_line(tiny_argv(tiny_checkpoint, tmp_path / "run", "--resume"))
    assert msg == f"error: {e.value}" and not marker.exists()
    torch.load(folder / "train_state.pt", weights_only=False)   # the oracle: an unchecked load would run it
    assert marker.exists()


# ----------------------------------------------------------------------------- 7. `latest` stays in its run


@pytest.mark.parametrize("pointer", ["../other/checkpoint-000001", "absolute",
                                     "checkpoint-000002/../../other/checkpoint-000001", "link"])
def test_latest_that_points_out_of_its_run_folder_is_refused_and_nothing_deleted(
        pointer, tiny_checkpoint, runs_of_1_and_2_steps, tmp_path, monkeypatch):
    other = shutil.copytree(runs_of_1_and_2_steps[0], tmp_path / "other")
    mine = shutil.copytree(runs_of_1_and_2_steps[1], tmp_path / "mine")
    if pointer == "absolute":
        pointer = str(other / "checkpoint-000001")
    elif pointer == "link":                             # a checkpoint name, but a link into the other run
        (mine / "checkpoint-000009").symlink_to(other / "checkpoint-000001")
        pointer = "checkpoint-000009"
    (mine / "latest").write_text(pointer)
    before = snapshot(tmp_path)
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    msg = exit_line(tiny_argv(tiny_checkpoint, mine, "--resume"))
    assert msg == (f"error: {mine / 'latest'} names {pointer!r}, not a checkpoint-NNNNNN folder of this run: the "
                   f"run folder was changed by hand; nothing was loaded or deleted"), msg
    checkpoint.clean_leftovers(mine)                    # what a run does first: it keeps every checkpoint here
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- 12. context, SIGTERM


def test_max_new_tokens_beyond_the_context_is_refused_before_loading(no_model_load, tiny_checkpoint, tmp_path):
    msg = exit_line(tiny_argv(tiny_checkpoint, tmp_path / "run", "--max_new_tokens=100000"))
    assert msg == ("error: --max_new_tokens=100000: the model's context is 128 tokens, which must hold the prompt "
                   "and the completion; use fewer"), msg       # conftest's tiny GPT-2: n_positions=128
    assert not (tmp_path / "run").exists()              # no empty log files, no folder


def test_context_length_read_from_the_metadata():
    """SmolLM2-135M's context is 8192 tokens (NOTES.md, from its GGUF; transformers' LlamaConfig of it too)."""
    assert configurator.context_length("smollm2") == 8192


def test_sigterm_stops_like_ctrl_c(tiny_checkpoint, tmp_path):
    argv = tiny_argv(tiny_checkpoint, tmp_path, "--steps=1000")
    proc = subprocess.Popen([sys.executable, "-u", "train.py", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step    2/"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert len(err.strip().splitlines()) == 1 and err.startswith("interrupted: continue from "), err
    checkpoint.load(checkpoint.current(tmp_path))
