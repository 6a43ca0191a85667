"""train.py end to end on a tiny random GPT-2 checkpoint (real GPT-2 vocabulary): CLI, logs, checkpoints, resume."""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, write_random_gpt2
from train import TrainConfig, parse_args, train


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, gpt2_tokenizer_files):
    folder = tmp_path_factory.mktemp("tiny_gpt2")
    write_random_gpt2(folder, gpt2_tokenizer_files, n_layer=1, n_embd=32, n_head=2, n_positions=128)
    return folder


def tiny_config(model, out_dir, **kw):
    cfg = TrainConfig(model=str(model), task="add1", steps=3, batch_prompts=2, n_train=50, n_eval=4,
                      dtype="fp32", device="cpu", out_dir=str(out_dir), save_every=1, lr=1e-3, **kw)
    cfg.grpo.group_size, cfg.grpo.max_new_tokens = 2, 4
    return cfg


def test_run_logs_plots_and_checkpoints(tiny_checkpoint, tmp_path, capsys):
    out = train(tiny_config(tiny_checkpoint, tmp_path))
    printed = capsys.readouterr().out
    assert printed.count("step ") >= 3 and "[eval before]" in printed and "[eval after]" in printed
    lines = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(l["loss"])) for l in lines)
    assert (tmp_path / "reward_curve.png").stat().st_size > 1000
    assert set(out) == {"before", "after", "history"} and len(out["after"]["examples"]) == 4


def test_resume_continues_exactly(tiny_checkpoint, tmp_path):
    """A run stopped after step 2 and resumed to step 3 ends with the same weights as one run of 3 steps."""
    train(tiny_config(tiny_checkpoint, tmp_path / "whole"))
    cfg = tiny_config(tiny_checkpoint, tmp_path / "split")
    cfg.steps = 2
    train(cfg)
    resumed = tiny_config(tiny_checkpoint, tmp_path / "split", resume=True)
    out = train(resumed)
    assert [h["step"] for h in out["history"]] == [1, 2, 3]
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_parse_args_sets_both_configs():
    cfg = parse_args(["--task=add2", "--group_size=4", "--beta=0", "--resume", "--top_p=0.9", "--top_k=none"])
    assert (cfg.task, cfg.grpo.group_size, cfg.grpo.beta, cfg.resume, cfg.grpo.top_p, cfg.grpo.top_k) == \
        ("add2", 4, 0.0, True, 0.9, None)


@pytest.mark.parametrize("args,words", [
    (["--group_size=1"], ["group_size", ">= 2"]),
    (["--task=sudoku"], ["sudoku", "add1"]),
    (["--kl_estimator=k2"], ["kl_estimator", "k2"]),
    (["--loss_agg=median"], ["loss_agg", "median"]),
    (["--bogus=1"], ["--bogus"]),
    (["--steps=many"], ["many", "--steps"]),
    (["--model=gpt5"], ["gpt5"]),
])
def test_bad_input_is_one_line(args, words):
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    for w in words:
        assert w in err
