"""Run a notebook's code cells in this process and record, for every function the cells define, which code
ran under that name: the cell's own definition, or a module's copy of it.

    python tests/notebook_trace.py NOTEBOOK OUT.json      (tests/test_notebook.py runs it, in smoke mode)

OUT.json: {"defined": {name: cell index}, "calls": {name: [file of the code that ran, ...]}}. A cell's code is
compiled under the file name "<cell N>", so a call of the notebook's own copy is recorded as "<cell N>" and a
call of grpo.py's as ".../grpo.py".
"""
import ast
import json
import os
import sys

import matplotlib
import nbformat

matplotlib.use("Agg")                      # plt.show() draws nothing, headless


def main(path, out):
    nb = nbformat.read(path, as_version=4)
    cells = [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    defined = {node.name: i for i, source in cells for node in ast.parse(source).body
               if isinstance(node, ast.FunctionDef)}
    calls = {name: set() for name in defined}

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_name in calls:
            calls[frame.f_code.co_name].add(frame.f_code.co_filename)

    namespace = {"__name__": "__main__"}
    sys.setprofile(profile)
    try:
        for i, source in cells:
            exec(compile(source, f"<cell {i}>", "exec"), namespace)
    finally:
        sys.setprofile(None)
    with open(out, "w") as f:
        json.dump({"defined": defined, "calls": {k: sorted(v) for k, v in calls.items()}}, f)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main(sys.argv[1], sys.argv[2])
