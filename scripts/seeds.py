"""Robustness as a report: run train.py's default recipe (plus any --name=value you add) over seeds and
dtypes, and write every run's numbers to results/seeds-<machine>.json and README's table.

    OMP_NUM_THREADS=1 python scripts/seeds.py                       # seeds 0-4 x fp32, bf16: 10 default runs
    OMP_NUM_THREADS=1 python scripts/seeds.py --seeds=0,1 --dtypes=bf16 --steps=20   # another recipe: its own file
    python scripts/seeds.py --table                                 # only print the table of the file

Per run: held-out greedy accuracy before and after (the task's verifier, n_eval prompts), exact format after,
the accuracy on the held-out questions reworded (eval.paraphrased), the first step at which the small periodic
held-out check (every 5 steps, --eval_subset prompts, logged in log.jsonl as eval_accuracy) passed 90%,
and the run's wall time (load and both evaluations included; on a shared machine not a speed measurement).
Resumable: a run already in the file (same recipe, seed, dtype) is skipped, and a run stopped after a checkpoint
continues from it (train.py --resume, exact; its base-model evaluation is not redone: "before" is the one the
first part wrote in eval.json, else "-"; the wall time is the resumed part's), so an interrupted sweep continues
where it stopped, and a longer recipe can continue the runs of a shorter one. Each run's folder is
runs/seeds/<dtype>-seed<N>.
"""
import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import checkpoint                                                   # noqa: E402
import train                                                        # noqa: E402
from device import machine_name                                     # noqa: E402
from report import read_evals                                       # noqa: E402

# train.py's default recipe (README): the shaped `short` component, 16 new tokens, advantages not divided by the
# group's std (Dr. GRPO), sampling at temperature 1.2, and the periodic check (--eval_every=5 on --eval_subset=50)
# the table's "90% at" reads.
# Flags given to this script are added to every run (another recipe: its own file).


def run_key(cfg):
    """What makes two runs the same run: every setting but the folder and the logging."""
    c = asdict(cfg)
    for k in ("out_dir", "log_every", "save_every", "resume"):
        c.pop(k)
    return json.dumps(c, sort_keys=True)


def first_pass(history, threshold=0.9):
    return next((m["step"] for m in history if m.get("eval_accuracy", 0) >= threshold), None)


def summary(values):
    values = [v for v in values if v is not None]
    return {"mean": round(statistics.mean(values), 4), "min": min(values), "max": max(values)} if values else None


def table(runs):
    """README's table: one row per run, then mean / min / max."""
    lines = ["| seed | dtype | before | after | exact format | reworded | 90% at step | wall time |",
             "|---|---|---|---|---|---|---|---|"]
    pct = lambda v: "-" if v is None else f"{v:.1%}"
    for r in sorted(runs, key=lambda r: (r['seed'], r['dtype'] != 'fp32')):
        lines.append(f"| {r['seed']} | {r['dtype']} | {pct(r['before'])} | {pct(r['after'])} | {pct(r['format'])} | "
                     f"{pct(r['paraphrase'])} | {r['step_90'] or 'never'} | {r['wall_s'] / 60:.1f} min |")
    for name in ("mean", "min", "max"):
        s = {k: summary([r[k] for r in runs]) for k in ("before", "after", "format", "paraphrase", "step_90", "wall_s")}
        cell = lambda k, f: "-" if s[k] is None else f(s[k][name])
        lines.append(f"| {name} | | {cell('before', pct)} | {cell('after', pct)} | {cell('format', pct)} | "
                     f"{cell('paraphrase', pct)} | {cell('step_90', lambda v: f'{v:.1f}')} | "
                     f"{cell('wall_s', lambda v: f'{v / 60:.1f} min')} |")
    return "\n".join(lines)


def split_args(argv, lists):
    """This script's and scripts/tasks.py's command line: ({name: values} of each --name=a,b option named in
    `lists`, else its default there; whether --table was given; every other flag, for train.py)."""
    values, only_table, extra = dict(lists), False, []
    for a in argv:
        name, _, value = a.removeprefix("--").partition("=")
        if a.startswith("--") and name in lists and value:
            values[name] = value.split(",")
        elif a == "--table":
            only_table = True
        else:
            extra.append(a)
    return values, only_table, extra


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    lists, only_table, extra = split_args(argv, {"seeds": ["0", "1", "2", "3", "4"], "dtypes": ["fp32", "bf16"]})
    seeds, dtypes = [int(s) for s in lists["seeds"]], lists["dtypes"]
    name = "seeds-" + machine_name() + ("" if not extra else "-custom")
    path = ROOT / "results" / f"{name}.json"
    data = json.loads(path.read_text()) if path.exists() else {"runs": []}
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
    for seed in ([] if only_table else seeds):
        for dtype in dtypes:
            out_dir = ROOT / 'runs' / 'seeds' / f'{dtype}-seed{seed}'
            args = extra + [f"--seed={seed}", f"--dtype={dtype}", f"--out_dir={out_dir}"]
            if checkpoint.current(out_dir):    # an interrupted run continues exactly (its "before" is not redone)
                args.append("--resume")        # (run_key leaves --resume out)
            cfg = train.parse_args(args)
            key = run_key(cfg)
            if any(r["key"] == key and r["threads"] == threads for r in data["runs"]):
                print(f"seed {seed} {dtype}: in {path.name} already, skipped")
                continue
            print(f"\n=== seed {seed} {dtype}: python train.py {' '.join(args)}", flush=True)
            t = time.perf_counter()
            out = train.train(cfg)
            wall = time.perf_counter() - t
            after, para = out["after"], out["paraphrase"]
            # a resumed run's: the first part's, kept in eval.json (report.write_report)
            before = out["before"] or read_evals(out_dir).get("before")
            data = json.loads(path.read_text()) if path.exists() else {"runs": []}   # another sweep may have
            data["runs"].append({                                                       # added runs meanwhile
                "seed": seed, "dtype": dtype, "threads": threads,
                "command": f"OMP_NUM_THREADS={threads} python train.py {' '.join(args)}",
                "before": before["accuracy"] if before else None, "after": after["accuracy"],
                "format": after["format"], "paraphrase": para["accuracy"] if para else None,
                "step_90": first_pass(out["history"]), "wall_s": round(wall, 1),
                "eval_accuracy": {m["step"]: m["eval_accuracy"] for m in out["history"] if "eval_accuracy" in m},
                "key": key})
            data["machine"] = machine_name()
            data["note"] = ("wall times on a 2-core machine shared with other jobs: not a speed measurement")
            for k in ("before", "after", "format", "paraphrase", "step_90", "wall_s"):
                data.setdefault("summary", {})[k] = summary([r[k] for r in data["runs"]])
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(data, indent=1) + "\n")
            print(f"=== seed {seed} {dtype}: wrote {path}", flush=True)
    print(f"\n{path.name} ({data.get('machine', machine_name())}):\n" + table(data["runs"]))


if __name__ == "__main__":
    main()
