"""README's task table with the default recipe: each task's held-out greedy accuracy (the task's verifier)
before and after `python train.py --task=NAME` (plus any --name=value given here, e.g. --steps=60), its
exact format after and the accuracy on its reworded held-out questions, written to results/tasks-<machine>.json.

    OMP_NUM_THREADS=1 python scripts/tasks.py --tasks=add2,count_letter,sort,reverse
    python scripts/tasks.py --table          # only print the table of the file

Resumable: a task already in the file with the same settings is skipped.
"""
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import train                                                        # noqa: E402
from device import machine_name                                     # noqa: E402
from seeds import run_key, split_args                               # noqa: E402


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    lists, only_table, extra = split_args(argv, {"tasks": ["add2", "count_letter", "sort", "reverse"]})
    tasks = lists["tasks"]
    path = ROOT / "results" / f"tasks-{machine_name()}.json"
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
    for task in ([] if only_table else tasks):
        args = [f"--task={task}", f"--out_dir={ROOT / 'runs' / 'tasks' / task}"] + extra
        cfg = train.parse_args(args)
        data = json.loads(path.read_text()) if path.exists() else {"runs": []}
        if any(r["key"] == run_key(cfg) and r["threads"] == threads for r in data["runs"]):
            print(f"{task}: in {path.name} already, skipped")
            continue
        print(f"\n=== python train.py {' '.join(args)}", flush=True)
        t = time.perf_counter()
        out = train.train(cfg)
        data = json.loads(path.read_text()) if path.exists() else {"runs": []}
        data["runs"].append({"task": task, "threads": threads, "steps": cfg.steps, "flags": " ".join(extra),
                             "command": f"OMP_NUM_THREADS={threads} python train.py {' '.join(args)}",
                             "before": out["before"]["accuracy"], "after": out["after"]["accuracy"],
                             "format": out["after"]["format"],
                             "paraphrase": out["paraphrase"]["accuracy"] if out["paraphrase"] else None,
                             "wall_s": round(time.perf_counter() - t, 1), "key": run_key(cfg)})
        data["machine"] = machine_name()
        data["note"] = "wall times on a 2-core machine shared with other jobs: not a speed measurement"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
    data = json.loads(path.read_text()) if path.exists() else {"runs": []}
    print("| task | settings | before | after | exact format | reworded | wall time |\n|---|---|---|---|---|---|---|")
    for r in data["runs"]:
        print(f"| `{r['task']}` | {r.get('flags') or 'default'} | {r['before']:.1%} | {r['after']:.1%} | "
              f"{r['format']:.1%} | " + ("-" if r["paraphrase"] is None else f"{r['paraphrase']:.1%}") +
              f" | {r['wall_s'] / 60:.1f} min |")


if __name__ == "__main__":
    main()
