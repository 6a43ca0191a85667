"""Runs that survive: bad settings caught before any loading, checkpoints that are one unit, resume that restores
the run exactly (or refuses), kills, Ctrl-C and a full disk. On the tiny random GPT-2 checkpoint."""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import checkpoint
import eval as eval_module
import train
from load_weights import load_model
from conftest import ROOT, TRAIN_WITH_TOY_REWARD, one_line, tiny_config, toy_reward


@pytest.fixture(autouse=True)
def learning(monkeypatch):
    """Runs of the tiny model on toy_reward: they learn, so equal weights after a resume mean something."""
    monkeypatch.setattr(train, "make_reward", lambda *a: toy_reward)


def tiny_argv(model, out_dir, *extra):
    """The command-line flags of conftest.tiny_config (for main() and subprocesses)."""
    return [f"--model={model}", "--task=add1", "--steps=3", "--batch_prompts=2", "--n_train=50", "--n_eval=4",
            "--device=cpu", f"--out_dir={out_dir}", "--save_every=1", "--lr=1e-3", "--dtype=fp32",
            "--group_size=2", "--max_new_tokens=4", "--eval_max_new_tokens=4", "--eval_before=false", *extra]


@pytest.fixture
def no_model_load(monkeypatch):
    """Any attempt to load a model fails the test: validation must come first."""
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("a model was loaded before validation"))


def exit_line(argv):
    """main(argv)'s exit message, checked to be one 'error: ...' line."""
    with pytest.raises(SystemExit) as e:
        train.main(argv)
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("arg,allowed", [
    ("--temperature=-1", ">= 0"), ("--top_p=2", "(0, 1]"), ("--top_p=-0.5", "(0, 1]"), ("--top_k=0", ">= 1"),
    ("--steps=-1", ">= 1"), ("--steps=0", ">= 1"), ("--save_every=0", ">= 1"), ("--log_every=0", ">= 1"),
    ("--mu=0", ">= 1"), ("--batch_prompts=0", ">= 1"), ("--n_eval=0", ">= 1"), ("--n_train=0", ">= 1"),
    ("--lr=0", "> 0"), ("--lr=nan", "finite"), ("--beta=inf", "finite"), ("--grad_clip=-1", ">= 0"),
    ("--weight_decay=-0.1", ">= 0"), ("--eval_samples=-1", ">= 0"), ("--seed=-3", ">= 0"), ("--steps=none", "value"),
    ("--group_size=1", ">= 2"), ("--max_new_tokens=0", ">= 1"), ("--prompts_per_pass=0", ">= 1"),
    ("--oversample=0", ">= 1"),
    ("--adv_eps=0", "> 0"), ("--device=foo", "cuda, cuda:N"), ("--device=mps", "MPS"), ("--dtype=fp16", "bf16"),
])
def test_bad_setting_is_one_line_before_any_loading(arg, allowed, no_model_load, tmp_path):
    name, _, value = arg[2:].partition("=")
    msg = exit_line([arg, f"--out_dir={tmp_path / 'run'}"])
    assert name in msg and value.lower() in msg.lower() and allowed in msg
    assert not (tmp_path / "run").exists()        # nothing written either


def test_more_prompts_drawn_than_there_are_is_one_line(no_model_load, tmp_path):
    msg = exit_line(["--batch_prompts=8", "--oversample=4", "--n_train=30", f"--out_dir={tmp_path / 'run'}"])
    assert "--batch_prompts=8 x --oversample=4" in msg and "--n_train=30" in msg
    assert not (tmp_path / "run").exists()


def test_cuda_without_a_gpu_is_one_line(no_model_load, monkeypatch, tmp_path):
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: False)
    msg = exit_line(["--device=cuda", f"--out_dir={tmp_path}"])
    assert "--device=cuda" in msg and "no CUDA GPU" in msg


def test_a_device_that_is_there_but_fails_is_one_line(no_model_load, monkeypatch, tmp_path):
    """torch says CUDA is available, but the first tensor on it fails (a broken driver): one line, no load."""
    monkeypatch.setattr(train.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(train.torch.cuda, "device_count", lambda: 1)
    msg = exit_line(["--device=cuda", f"--out_dir={tmp_path}"])
    assert msg.startswith("error: --device=cuda: cuda:0 is there but does not work: "), msg


def test_more_prompts_than_the_train_set(no_model_load, tmp_path):
    msg = exit_line(["--batch_prompts=16", "--n_train=8", f"--out_dir={tmp_path}"])
    assert "--batch_prompts=16" in msg and "--n_train=8" in msg


@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_out_dir(where, no_model_load, tmp_path):
    if where == "under_a_file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "run"
    else:
        out = "/proc/tinygrpo-run"                # a folder nobody, root included, can create
    msg = exit_line([f"--out_dir={out}"])
    assert f"--out_dir={out}" in msg and "cannot write" in msg


# ----------------------------------------------------------------------------- checkpoints and resume


def steps_logged(out_dir, name="log.jsonl"):
    return [json.loads(line)["step"] for line in (Path(out_dir) / name).read_text().splitlines()]


def run(model, out_dir, **kw):
    """train() of the tiny config without the before/after evaluations' prints mattering."""
    return train.train(tiny_config(model, out_dir, **{"eval_before": False} | kw))


def test_checkpoint_is_one_folder_with_the_step_in_both_halves(tiny_checkpoint, tmp_path):
    run(tiny_checkpoint, tmp_path, save_every=2)
    folder = checkpoint.current(tmp_path)
    assert folder == tmp_path / "checkpoint-000003" and (tmp_path / "latest").read_text() == folder.name
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tinygrpo-run", "checkpoint-000003", "completions.jsonl",
                                                           "eval.json", "latest", "log.jsonl", "report.html",
                                                           "reward_curve.png"]      # older ones deleted
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"step": "3"}
    state = torch.load(folder / "train_state.pt", weights_only=True)
    assert state["step"] == 3 and [h["step"] for h in state["history"]] == [1, 2, 3]
    assert json.loads((folder / "config.json").read_text())["model"] == str(tiny_checkpoint)


def test_resume_cuts_the_log_back_to_the_checkpoint(tiny_checkpoint, tmp_path):
    """A run killed after logging step 3 but before saving it: resume runs step 3 again and logs it once."""
    run(tiny_checkpoint, tmp_path, steps=2)
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "reward": 0.5}) + "\n")
    out = run(tiny_checkpoint, tmp_path, resume=True)
    assert steps_logged(tmp_path) == [1, 2, 3] and [h["step"] for h in out["history"]] == [1, 2, 3]


def test_resume_cleans_what_a_killed_save_left(tiny_checkpoint, tmp_path):
    """Ours (.tinygrpo-tmp-*), an older version's (checkpoint-NNNNNN.tmp-PID), an unnamed checkpoint folder."""
    run(tiny_checkpoint, tmp_path, steps=2)
    leftovers = [tmp_path / ".tinygrpo-tmp-checkpoint-000003-99", tmp_path / "checkpoint-000007",
                 tmp_path / ".tinygrpo-tmp-latest-99", tmp_path / "checkpoint-000004.tmp-98"]
    leftovers[0].mkdir(), leftovers[1].mkdir(), leftovers[2].write_text("checkpoint-000003")
    leftovers[3].mkdir()
    run(tiny_checkpoint, tmp_path, steps=2, resume=True)
    assert not any(p.exists() for p in leftovers) and checkpoint.current(tmp_path).name == "checkpoint-000002"


@pytest.fixture(scope="module")
def runs_of_1_and_2_steps(tiny_checkpoint, tmp_path_factory):
    """Two finished runs of the tiny model (1 and 2 steps), made once: tests damage copies of them."""
    folder = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "make_reward", lambda *a: toy_reward)
        for steps in (1, 2):
            run(tiny_checkpoint, folder / f"steps{steps}", steps=steps)
    return folder / "steps1", folder / "steps2"


@pytest.mark.parametrize("damage", ["mixed", "weights_truncated", "state_truncated", "weights_empty"])
def test_resume_refuses_a_damaged_checkpoint(damage, tiny_checkpoint, runs_of_1_and_2_steps, tmp_path):
    one_step = runs_of_1_and_2_steps[0]
    shutil.copytree(runs_of_1_and_2_steps[1], tmp_path / "b")
    folder = checkpoint.current(tmp_path / "b")
    weights, state = folder / "model.safetensors", folder / "train_state.pt"
    if damage == "mixed":                 # new optimizer state beside the weights of another step
        shutil.copy(checkpoint.current(one_step) / "model.safetensors", weights)
    elif damage == "weights_empty":
        weights.write_bytes(b"")
    else:
        path = weights if damage == "weights_truncated" else state
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    with pytest.raises(ValueError) as e:
        run(tiny_checkpoint, tmp_path / "b", resume=True)
    one_line(e, *{"mixed": ["step 1", "step 2", "do not belong together"],
                  "weights_truncated": ["model.safetensors", "truncated"],
                  "weights_empty": ["model.safetensors", "empty"],
                  "state_truncated": ["train_state.pt", "truncated"]}[damage])


@pytest.mark.parametrize("changed,named", [
    (["--group_size=4"], ["group_size 2 -> 4"]),
    (["--task=add2", "--lr=0.002"], ["task add1 -> add2", "lr 0.001 -> 0.002"]),
    (["--seed=1"], ["seed 0 -> 1"]),
])
def test_resume_with_changed_settings_refuses_before_loading(changed, named, tiny_checkpoint, tmp_path,
                                                             monkeypatch):
    run(tiny_checkpoint, tmp_path, steps=1)
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    argv = tiny_argv(tiny_checkpoint, tmp_path, "--resume", *changed)
    msg = exit_line(argv)
    assert "--resume" in msg and "settings differ" in msg and all(n in msg for n in named), msg


def test_resume_of_an_older_layout_refuses(no_model_load, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "train_state.pt").write_bytes(b"")
    msg = exit_line([f"--out_dir={tmp_path}", "--resume"])
    assert "older tinygrpo" in msg and str(tmp_path) in msg


def test_resume_may_change_steps_and_logging(tiny_checkpoint, tmp_path):
    run(tiny_checkpoint, tmp_path, steps=1)
    out = run(tiny_checkpoint, tmp_path, resume=True, steps=2, log_every=2, save_every=5, eval_samples=1)
    assert [h["step"] for h in out["history"]] == [1, 2] and checkpoint.current(tmp_path).name == "checkpoint-000002"


def test_a_fresh_run_moves_the_earlier_one_aside(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "run"
    run(tiny_checkpoint, out, steps=1)
    first = (out / "log.jsonl").read_text()
    run(tiny_checkpoint, out, steps=2)
    run(tiny_checkpoint, out, steps=1)
    printed = capsys.readouterr().out
    assert f"moved it to {tmp_path / 'run.1'}" in printed and f"moved it to {tmp_path / 'run.2'}" in printed
    assert (tmp_path / "run.1" / "log.jsonl").read_text() == first
    assert steps_logged(tmp_path / "run.2") == [1, 2] and steps_logged(out) == [1]
    assert checkpoint.current(tmp_path / "run.1").name == "checkpoint-000001"


# ----------------------------------------------------------------------------- a full disk, Ctrl-C, kills


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB tmpfs: room for one checkpoint of the tiny model (~13 MB: fp32 weights, bf16 moments), not for
    the next beside it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?); test_failed_save_simulated covers the logic")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)   # lazy: a log file may still be open


def assert_failed_save_kept_step_1(msg, out_dir, reason):
    assert "could not save the checkpoint of step 2" in msg and reason in msg, msg
    assert f"{out_dir / 'checkpoint-000001'}, is intact" in msg and "--resume" in msg, msg
    assert checkpoint.current(out_dir).name == "checkpoint-000001"
    assert not [p for p in out_dir.iterdir() if "tmp" in p.name]            # the half-written save is gone
    _, state = checkpoint.load(checkpoint.current(out_dir))
    assert state["step"] == 1


def test_full_disk_keeps_the_last_checkpoint(tiny_checkpoint, small_disk):
    out = small_disk / "run"
    msg = exit_line(tiny_argv(tiny_checkpoint, out))
    assert_failed_save_kept_step_1(msg, out, "No space left on device")


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_failed_save_simulated(err, tiny_checkpoint, tmp_path, monkeypatch):
    real_save = checkpoint.torch.save

    def save_once(obj, f):            # the first save works, then the disk is full (or read-only)
        if obj["step"] > 1:
            raise OSError(err, os.strerror(err))
        real_save(obj, f)
    monkeypatch.setattr(checkpoint.torch, "save", save_once)
    msg = exit_line(tiny_argv(tiny_checkpoint, tmp_path))
    assert_failed_save_kept_step_1(msg, tmp_path, os.strerror(err))


@pytest.mark.parametrize("when", ["step", "save"])
def test_ctrl_c_exits_130_with_the_last_checkpoint_intact(when, tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Ctrl-C (KeyboardInterrupt) in the second step, or inside its save."""
    target, name = (train, "optimize") if when == "step" else (checkpoint.torch, "save")
    real, calls = getattr(target, name), []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(target, name, interrupted)
    with pytest.raises(SystemExit) as e:
        train.main(tiny_argv(tiny_checkpoint, tmp_path))
    assert e.value.code == 130
    err = capsys.readouterr().err.strip()
    assert err == f"interrupted: continue from {tmp_path / 'checkpoint-000001'} with --resume"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")] == ["checkpoint-000001"]
    monkeypatch.undo()
    out = run(tiny_checkpoint, tmp_path, resume=True)
    assert [h["step"] for h in out["history"]] == [1, 2, 3] and steps_logged(tmp_path) == [1, 2, 3]


def test_sigint_exit_status_is_130(tiny_checkpoint, tmp_path):
    """The real signal, in a subprocess: one line on stderr, status 130."""
    proc = subprocess.Popen([sys.executable, "-u", "train.py", *tiny_argv(tiny_checkpoint, tmp_path, "--steps=1000")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step    2/"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert len(err.strip().splitlines()) == 1 and err.startswith("interrupted: continue from "), err
    checkpoint.load(checkpoint.current(tmp_path))


# each fsync of a save 20 ms slower: a save of the tiny model lasts long enough to be caught in the act
SLOW_SAVES = "import checkpoint, time; fsync = checkpoint.fsync; checkpoint.fsync = lambda p: time.sleep(0.02) or fsync(p); "


def start(model, out_dir, *extra, **popen):
    """train.py's main() on toy_reward in a subprocess: 6 steps of the tiny model, a checkpoint after each."""
    return subprocess.Popen([sys.executable, "-u", "-c", SLOW_SAVES + TRAIN_WITH_TOY_REWARD,
                             *tiny_argv(model, out_dir, "--steps=6", *extra)], cwd=ROOT, stderr=subprocess.DEVNULL,
                            text=True, env=os.environ | {"PYTHONPATH": str(ROOT / "tests")}, **popen)


def kill_during_a_save(proc, out_dir):
    """SIGKILL as soon as a new checkpoint folder is being written (polled every millisecond)."""
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if out_dir.is_dir() and any(p.name.startswith(".tinygrpo-tmp-checkpoint-") for p in out_dir.iterdir()):
            proc.kill()
            return proc.wait()
        time.sleep(0.001)
    pytest.fail("the run ended without a save to interrupt")


def kill_during_a_step(proc, rng):
    """SIGKILL at a random moment after the first step of this process has been logged."""
    for line in proc.stdout:
        if line.startswith("step "):
            time.sleep(rng.uniform(0.0, 1.0))
            proc.kill()
            return proc.wait()
    pytest.fail("the run ended without logging a step")


def test_kills_at_random_points_then_resume_equal_an_uninterrupted_run(tiny_checkpoint, tmp_path):
    """Three SIGKILLs (during a save, during a step, during a save), then --resume to the end: the log holds each
    step once (completions.jsonl too, equal to the uninterrupted run's) and the final weights equal those of a
    run never interrupted."""
    run(tiny_checkpoint, tmp_path / "whole", steps=6)
    out, rng = tmp_path / "killed", random.Random(15)
    assert kill_during_a_save(start(tiny_checkpoint, out), out) == -signal.SIGKILL
    assert kill_during_a_step(start(tiny_checkpoint, out, "--resume", stdout=subprocess.PIPE), rng) == -signal.SIGKILL
    assert kill_during_a_save(start(tiny_checkpoint, out, "--resume"), out) == -signal.SIGKILL
    assert start(tiny_checkpoint, out, "--resume", stdout=subprocess.DEVNULL).wait(timeout=300) == 0
    assert steps_logged(out) == [1, 2, 3, 4, 5, 6] and steps_logged(out, "completions.jsonl") == [1, 2, 3, 4, 5, 6]
    assert (out / "completions.jsonl").read_text() == (tmp_path / "whole" / "completions.jsonl").read_text()
    assert sorted(p.name for p in out.iterdir()) == [".tinygrpo-run", "checkpoint-000006", "completions.jsonl",
                                                     "eval.json", "latest", "log.jsonl", "report.html",
                                                     "reward_curve.png"]
    a, _ = checkpoint.load(checkpoint.current(tmp_path / "whole"))
    b, _ = checkpoint.load(checkpoint.current(out))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    start_weights = load_model(str(tiny_checkpoint))[0].state_dict()
    assert max((a[k] - start_weights[k]).abs().max().item() for k in a) > 1e-4          # the run learned


# ----------------------------------------------------------------------------- eval.py's checked loader


@pytest.fixture
def tiny_run(runs_of_1_and_2_steps, tmp_path):
    """A copy of a finished 1-step run of the tiny model."""
    return shutil.copytree(runs_of_1_and_2_steps[0], tmp_path / "run")


def test_eval_takes_the_model_from_the_run(tiny_run, tiny_checkpoint, monkeypatch, capsys):
    """No --model, no --task: the run's own (the tiny GPT-2, add1), not smollm2 and larger; and the checkpoint's
    weights, exactly."""
    loaded = []
    real = eval_module.load_model
    monkeypatch.setattr(eval_module, "load_model", lambda name, device: loaded.append(name) or real(name, device))
    eval_module.main([f"--checkpoint={tiny_run}", "--n_eval=4", "--max_new_tokens=4", "--dtype=fp32"])
    assert loaded == [str(tiny_checkpoint)] and "add1: greedy accuracy" in capsys.readouterr().out
    model, _ = eval_module.load_policy(checkpoint=tiny_run)
    weights, _ = checkpoint.load(checkpoint.current(tiny_run))
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("damage,words", [
    ("empty", ["empty"]), ("truncated", ["truncated"]),
    ("foreign", ["does not fit", "tensors missing", "unused ['transformer.h.0."]),
    ("other_size", ["does not fit", "embed.weight is [50257, 16] there but the model's is [50257, 32]"]),
])
def test_eval_refuses_a_bad_checkpoint_in_one_line(damage, words, tiny_run, tiny_checkpoint, tmp_path):
    weights = checkpoint.current(tiny_run) / "model.safetensors"
    data = weights.read_bytes()
    if damage == "empty":
        weights.write_bytes(b"")
    elif damage == "truncated":
        weights.write_bytes(data[:len(data) - 100])
    elif damage == "foreign":                     # another model's file: transformers' GPT-2 names
        shutil.copy(tiny_checkpoint / "model.safetensors", weights)
    else:                                         # our layout, another width
        small, _ = load_model(str(tiny_checkpoint))
        save_file({k: v[..., :16].contiguous() if k == "embed.weight" else v for k, v in small.state_dict().items()},
                  str(weights))
    with pytest.raises(SystemExit) as e:
        eval_module.main([f"--checkpoint={tiny_run}", "--task=add1", "--n_eval=4"])
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "\n" not in msg and str(weights) in msg, msg
    assert all(w in msg for w in words), msg


def test_full_disk_while_logging_names_the_last_checkpoint(tiny_checkpoint, tmp_path, monkeypatch):
    """A write of log.jsonl that fails (disk full) after step 1's checkpoint: one line, the checkpoint named."""
    real_dumps = train.json.dumps

    def dumps_then_full(obj, *a, **k):               # the log line of step 2 (json is the checkpoint's too)
        if isinstance(obj, dict) and obj.get("step") == 2 and "loss" in obj:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_dumps(obj, *a, **k)
    monkeypatch.setattr(train.json, "dumps", dumps_then_full)
    msg = exit_line(tiny_argv(tiny_checkpoint, tmp_path))
    assert "No space left on device" in msg and f"{tmp_path / 'checkpoint-000001'}, is intact" in msg, msg


def test_a_broken_run_folder_is_refused_on_resume_and_moved_aside_by_a_fresh_run(tiny_checkpoint, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "latest").write_text("checkpoint-000004")          # a folder changed by hand: its checkpoint is gone
    (out / "log.jsonl").write_text('{"step": 1}\n')
    (out / "checkpoint-000005.tmp-7").mkdir()
    msg = exit_line(tiny_argv(tiny_checkpoint, out, "--resume"))
    assert "names checkpoint-000004, which is missing" in msg, msg
    (out / "checkpoint-000003").mkdir()                        # not named by latest, but maybe all there is
    run(tiny_checkpoint, out, steps=1)
    assert sorted(p.name for p in (tmp_path / "run.1").iterdir()) == [
        ".tinygrpo-run", "checkpoint-000003", "latest", "log.jsonl"]
    assert steps_logged(out) == [1]
