"""Issue 21, items 6, 8, 10, 11: no code from a run folder, a tokenizer built from its files' contents, and
eval.py / judge.py / show.py checked like train.py (one line, before any model loads). Item 9 (task files) is in
tests/test_custom_task.py. Payloads here only write a marker file."""
import json
import shutil

import pytest

import eval as eval_module
import judge
import load_weights
import show
import train

# ----------------------------------------------------------------------------- 6: no code from a run folder


def payload_run(tmp_path):
    """A downloaded run folder whose config.json names a task file beside it that, imported, writes a marker."""
    run, marker = tmp_path / "downloaded_run", tmp_path / "payload_ran"
    run.mkdir()
    (run / "payload.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "def make_prompt(rng):\n    return 'q', 1\n")
    (run / "model.safetensors").write_bytes(b"not weights")
    (run / "config.json").write_text(json.dumps({"task": str(run / "payload.py"), "model": "gpt2"}))
    return run, marker


def test_eval_never_imports_the_task_file_a_run_names(tmp_path, monkeypatch):
    run, marker = payload_run(tmp_path)
    monkeypatch.setattr(eval_module, "load_policy", lambda *a: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as e:
        eval_module.main([f"--checkpoint={run}"])
    msg = str(e.value.code)
    assert not marker.exists()
    assert "\n" not in msg and f"--task={run / 'payload.py'}" in msg and "Python code" in msg


def test_judge_never_imports_the_task_file_a_run_names(tmp_path, tiny_checkpoint):
    run, marker = payload_run(tmp_path)
    with pytest.raises(SystemExit) as e:
        judge.main([f"--checkpoint={run}", f"--model={tiny_checkpoint}", "--n_eval=2",
                    f"--out={tmp_path / 'agreement.json'}"])
    assert "\n" not in str(e.value.code) and not marker.exists()     # fails on the bogus weights, task unread


# ----------------------------------------------------------------------------- 8: the GPT-2 tokenizer


def test_gpt2_tokenizer_follows_its_files_at_the_same_path(tmp_path, tiny_checkpoint):
    """Swap two tokens (their ids in vocab.json and their merges in merges.txt): the same folder then encodes
    "Hello" as the other id. tiktoken's loader, keyed by path in /tmp/data-gym-cache, served the old one."""
    folder = tmp_path / "gpt2_folder"
    shutil.copytree(tiny_checkpoint, folder)
    hello, other = 15496, 15497
    assert load_weights.load_model(str(folder))[1].encode("Hello") == [hello]
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in vocab.items()}
    vocab[by_id[hello]], vocab[by_id[other]] = other, hello
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    a, b = hello - 256 + 1, other - 256 + 1                       # line 0 is "#version: ..."
    lines[a], lines[b] = lines[b], lines[a]
    (folder / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    assert load_weights.load_model(str(folder))[1].encode("Hello") == [other]


def test_gpt2_files_that_disagree_give_one_line(tmp_path, tiny_checkpoint):
    folder = tmp_path / "gpt2_folder"
    shutil.copytree(tiny_checkpoint, folder)
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    lines[1], lines[2] = lines[2], lines[1]                       # merges reordered, vocab.json not
    (folder / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError) as e:
        load_weights.load_model(str(folder))
    assert "\n" not in str(e.value) and "merges.txt" in str(e.value) and "vocab.json" in str(e.value)


# ----------------------------------------------------------------------------- 10: eval.py's flags


def exit_line(main, argv):
    with pytest.raises(SystemExit) as e:
        main(argv)
    msg = str(e.value.code)
    assert "\n" not in msg, msg
    return msg.removeprefix("error: ")


@pytest.mark.parametrize("argv,words", [
    (["--max_new_tokens=0"], ["--max_new_tokens=0", "max_new_tokens must be >= 1"]),
    (["--max_new_tokens=-5"], ["max_new_tokens must be >= 1"]),
    (["--temperature=-1", "--samples=2"], ["--temperature=-1.0", "temperature must be >= 0"]),
    (["--temperature=nan"], ["--temperature=nan", "finite"]),
    (["--temperature=0", "--samples=2"], ["--samples=2", "temperature > 0"]),
    (["--samples=-1"], ["--samples=-1", "samples must be >= 0"]),
    (["--n_eval=0"], ["--n_eval=0", "n_eval must be >= 1"]),
])
def test_eval_flags_are_refused_before_loading(monkeypatch, argv, words):
    monkeypatch.setattr(eval_module, "load_policy", lambda *a: pytest.fail("a model was loaded"))
    msg = exit_line(eval_module.main, argv)
    assert all(w in msg for w in words) and "n_train" not in msg, msg


@pytest.mark.parametrize("flag", ["--n_eval=0", "--max_new_tokens=0", "--temperature=-1", "--seed=-1"])
def test_eval_checks_a_flag_as_train_does(monkeypatch, flag):
    """Oracle: train.py's own line for the same flag (configurator.validate / GRPOConfig.validate)."""
    monkeypatch.setattr(eval_module, "load_policy", lambda *a: pytest.fail("a model was loaded"))
    assert exit_line(eval_module.main, [flag]) == exit_line(train.main, [flag])


# ----------------------------------------------------------------------------- 11: show.py and judge.py


def completion_record(step):
    return {"step": step, "prompts": [{"question": "Which is larger, 42 or 57?", "answer": 57, "completions": [
        {"text": f"57 (step {step})", "reward": 1.0, "parts": {"correct": 1.0}, "advantage": 0.7, "length": 3,
         "truncated": False},
        {"text": "42", "reward": 0.0, "parts": {"correct": 0.0}, "advantage": -0.7, "length": 2,
         "truncated": False}]}]}


@pytest.fixture
def show_run(tmp_path):
    """A run folder whose completions.jsonl ends in a line a kill cut short."""
    lines = [json.dumps(completion_record(s)) for s in (1, 2)] + [json.dumps(completion_record(3))[:50]]
    (tmp_path / "completions.jsonl").write_text("\n".join(lines))
    return tmp_path


def test_show_reads_a_cut_off_last_line_as_resume_does(show_run, capsys):
    show.main([str(show_run)])
    assert "of step 2" in capsys.readouterr().out                  # the last complete record
    assert "no step 3 (it has 1 to 2)" in exit_line(show.main, [str(show_run), "3"])     # cut off: not there


@pytest.mark.parametrize("argv,words", [
    (["RUN", "abc"], ["'abc'", "not a number"]),
    (["RUN", "7"], ["no step 7", "1 to 2"]),
    (["RUN/missing"], ["not found"]),
])
def test_show_bad_arguments_give_one_line(show_run, argv, words):
    msg = exit_line(show.main, [a.replace("RUN", str(show_run)) for a in argv])
    assert all(w in msg for w in words), msg


def test_judge_out_is_checked_before_judging(tmp_path, monkeypatch):
    monkeypatch.setattr(load_weights, "load_model", lambda *a: pytest.fail("a model was loaded"))
    assert "is a folder" in exit_line(judge.main, [f"--out={tmp_path}", "--n_eval=2"])
    assert "n_eval must be >= 1" in exit_line(judge.main, ["--n_eval=0", f"--out={tmp_path / 'a.json'}"])


def test_judge_prompt_longer_than_the_context_gives_one_line(tmp_path, tiny_checkpoint):
    """The tiny model reads 128 tokens; these questions are ~300."""
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"question": f"Question {i}: " + "tell me more " * 100, "answer": i}) + "\n"
                            for i in range(5)))
    msg = exit_line(judge.main, [f"--task={data}", f"--model={tiny_checkpoint}", "--n_eval=2",
                                 f"--out={tmp_path / 'agreement.json'}"])
    assert "context (128)" in msg and not (tmp_path / "agreement.json").exists()
