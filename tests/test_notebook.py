"""notebook.ipynb, the assignment's deliverable: its 9 cells, an executed clean run, its rendered size, and
the functions it pastes, which must be the modules' own (scripts/build_notebook.py pastes them).

Fast: reads the committed notebook; nothing here executes it (scripts/run_notebook.py does).
"""
import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebook.ipynb"
MODULES = ["task.py", "grpo.py", "show.py", "eval.py", "model.py", "train.py", "load_weights.py"]
KINDS = ["markdown", "markdown", "code", "code", "code", "code", "code", "code", "markdown"]
HEADER = {"format": {"html": {"code-fold": True}}, "jupyter": "python3"}
# cell index -> what the lesson must show pasted there
PASTED = {4: {"verify_number", "correct_reward", "format_reward", "get_reward"},
          5: {"group_advantages", "token_logprobs", "plain_completion_logprobs", "kl_per_token", "grpo_step",
              "token_contributions"}}
RUN_IT = "execute it with `python scripts/run_notebook.py` (rebuilds, runs from a clean kernel, renders)"


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"_nb_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nb():
    assert NOTEBOOK.exists(), f"{NOTEBOOK} is missing: build it with `python scripts/build_notebook.py`"
    return nbformat.read(str(NOTEBOOK), as_version=4)


@pytest.fixture(scope="module")
def runner():
    return load_script("run_notebook")


# ----------------------------------------------------------------------------- pasted == module

def parse_cell(source):
    """ast of a code cell; IPython magics and shell lines (%, !) are blanked out first."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    return ast.parse("\n".join(lines))


def assigned_name(node):
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def module_definitions(root=ROOT):
    """name -> [(module file, ast.dump)] for every top-level function, class and assignment of the modules."""
    defs = {}
    for name in MODULES:
        path = root / name
        if not path.exists():
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs.setdefault(node.name, []).append((name, ast.dump(node)))
            elif assigned_name(node):
                defs.setdefault(assigned_name(node), []).append((name, ast.dump(node)))
    return defs


def pasted_mismatches(source, defs, constants=()):
    """(name, problem) for every top-level def/class of a cell, and every assignment to a name in `constants`,
    that is not identical (as an AST: code and docstring, not comments or spacing) to the module's."""
    problems = []
    for node in parse_cell(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = node.name
        elif assigned_name(node) in constants:
            name = assigned_name(node)
        else:
            continue
        if name not in defs:
            problems.append((name, "defined in the notebook but in none of " + ", ".join(MODULES)))
        elif all(dump != ast.dump(node) for _, dump in defs[name]):
            where = ", ".join(module for module, _ in defs[name])
            problems.append((name, f"differs from {where}: rebuild with `python scripts/build_notebook.py`"))
    return problems


def all_constants():
    return set().union(*PASTED.values())


def test_pasted_functions_equal_the_modules(nb):
    defs = module_definitions()
    problems = [(i, name, why) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
                for name, why in pasted_mismatches(cell.source, defs, all_constants())]
    assert problems == [], "\n".join(f"cell {i}: {name}: {why}" for i, name, why in problems)


def test_the_lesson_functions_are_pasted(nb):
    for i, names in PASTED.items():
        tree = parse_cell(nb.cells[i].source)
        shown = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        shown |= {assigned_name(n) for n in tree.body if assigned_name(n)}
        assert names <= shown, f"cell {i} does not paste {sorted(names - shown)}"


def test_a_drifted_copy_is_caught():
    defs = module_definitions()
    source = (ROOT / "task.py").read_text()
    node = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "verify_number")
    original = ast.get_source_segment(source, node)
    assert pasted_mismatches(original, defs) == []
    assert pasted_mismatches("# a comment\n" + original.replace("    pass", "    pass  # same code"), defs) == []
    for changed in [original.replace("all_hold and len(", "all_hold or len("),            # code
                    original.replace("Right iff every claim", "Right if every claim"),       # docstring
                    original.replace("def verify_number(prompt: Prompt, response: str)",
                                     "def verify_number(prompt, response)")]:             # signature
        assert changed != original
        assert [name for name, _ in pasted_mismatches(changed, defs)] == ["verify_number"]
    assert pasted_mismatches("def helper_only_here():\n    pass\n", defs)[0][0] == "helper_only_here"
    assert pasted_mismatches("MAX_DIGITS = 101\n", defs, {"MAX_DIGITS"})[0][0] == "MAX_DIGITS"


def test_the_generator_pastes_module_source():
    build = load_script("build_notebook")
    defs = module_definitions()
    nb = build.build()
    assert [c.cell_type for c in nb.cells] == KINDS
    for i in PASTED:
        assert pasted_mismatches(nb.cells[i].source, defs, all_constants()) == []


def test_no_pasted_function_is_shadowed_at_run_time(tmp_path, tiny_checkpoint):
    """Run the built notebook's code cells (smoke settings, the tiny random model) under a profiler: every function
    a cell defines ran, and only as the cell's own copy, never as a module's (a module function calling its
    module's copy, or a registry holding it, would show the module's file here)."""
    build = load_script("build_notebook")
    nb_path, out = tmp_path / "nb.ipynb", tmp_path / "calls.json"
    nbformat.write(build.build(), str(nb_path))
    env = os.environ | {"TINYGRPO_NB_SMOKE": "1", "TINYGRPO_NB_MODEL": str(tiny_checkpoint), "OMP_NUM_THREADS": "1",
                        "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(ROOT / "tests" / "notebook_trace.py"), str(nb_path), str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["defined"]) >= set().union(*PASTED.values())
    for name, cell in result["defined"].items():
        assert result["calls"][name], f"{name} (cell {cell}) never ran"
        assert result["calls"][name] == [f"<cell {cell}>"], f"{name}: a module's copy ran: {result['calls'][name]}"


# ----------------------------------------------------------------------------- structure

def test_cells_are_the_assignment_cells_in_order(nb):
    assert [c.cell_type for c in nb.cells] == KINDS


def test_yaml_header(nb):
    source = nb.cells[0].source.strip()
    assert source.startswith("---\n") and source.endswith("\n---"), "cell 0 must be a YAML block between --- lines"
    assert yaml.safe_load(source[4:-4]) == HEADER


def test_plan_states_the_formulas(nb):
    plan = nb.cells[1].source
    for needed in ["SmolLM2-135M-Instruct", "134.5M", "A_i", "k_1", "k_3", r"\beta", "/2", "verifier", "fails closed", "format"]:
        assert needed in plan, f"cell 1 lacks {needed!r}"


def test_analysis_has_no_placeholders(nb):
    """The lead fills cell 8 (in scripts/build_notebook.py) with the run's and the sweep's numbers."""
    left = re.findall(r"TODO[^\n]{0,40}|NB_[A-Z_]+|SWEEP_CONCLUSION|\{\{\w+\}\}", nb.cells[8].source)
    assert not left, f"cell 8 still has placeholders: {left[:3]}"


NUMBER = re.compile(r"\d+(?:\.\d+)?")


def json_numbers(value):
    """Every number in a parsed JSON value, as the analysis may print it: 3 -> '3'; 0.9551 -> '1', '0.96',
    '0.955', '95.5', '96' ... (0-3 decimals, and as a percentage with 0-2), plus the numbers inside its strings."""
    if isinstance(value, dict):
        return set().union(set(), *(json_numbers(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(set(), *(json_numbers(v) for v in value))
    if isinstance(value, str):
        return set(NUMBER.findall(value))
    if isinstance(value, bool) or value is None:
        return set()
    forms = {str(value)} | {f"{abs(value):.{d}f}" for d in range(4)} | {f"{abs(100 * value):.{d}f}" for d in range(3)}
    return forms


def printed_forms(number):
    """A printed number and its roundings, as a fraction and as a percentage: '0.9551' -> '0.955', '0.96', '1',
    '95.5', '96' ..."""
    decimals = len(number.partition(".")[2])
    x = float(number)
    return {number} | {f"{x:.{d}f}" for d in range(decimals)} | {f"{100 * x:.{d}f}" for d in range(max(0, decimals - 1))}


def backing_numbers(nb, results=ROOT / "results"):
    """The numbers that the notebook's outputs print (and their roundings) and the committed results files hold."""
    known = set()
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text = out.get("text", "") + out.get("data", {}).get("text/plain", "") + out.get("data", {}).get("text/html", "")
            known |= set().union(set(), *(printed_forms(n) for n in NUMBER.findall(text)))
    for path in sorted(results.rglob("*.json")):
        known |= json_numbers(json.loads(path.read_text()))
    return known


def unbacked_numbers(text, known):
    return sorted(set(NUMBER.findall(text)) - known, key=text.find)


def test_every_number_in_the_analysis_is_backed(nb):
    """Each number cell 8 quotes appears in an output of this notebook or in a committed results file."""
    missing = unbacked_numbers(nb.cells[8].source, backing_numbers(nb))
    assert missing == [], f"cell 8 quotes numbers that no output or results file holds: {missing[:10]}"


def test_an_unbacked_number_is_caught(nb, tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"accuracy": 0.9551, "runs": [{"G": 16, "reply": "63 is larger."}]}))
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("", outputs=[nbformat.v4.new_output("stream", text="kl 0.3312 | 24 s")]))
    known = backing_numbers(nb, tmp_path)
    assert unbacked_numbers("95.5% and 0.96, G = 16, 63; KL 0.33 (0.331), 24 s", known) == []
    assert unbacked_numbers("accuracy 95.5% -> 97.25%, 12 runs, KL 0.34", known) == ["97.25", "12", "0.34"]


# ----------------------------------------------------------------------------- executed

def test_every_code_cell_ran_cleanly(nb):
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    not_run = [i for i, c in code if c.execution_count is None or not c.outputs]
    assert not not_run, f"cells {not_run} have not been executed (or printed nothing): {RUN_IT}"
    for i, cell in code:
        for out in cell.outputs:
            assert out.output_type != "error", f"cell {i} raised {out.get('ename')}: {out.get('evalue')}"
            if out.output_type == "stream" and out.name == "stderr":
                assert "Traceback" not in out.text, f"cell {i} printed a traceback:\n{out.text[-2000:]}"


def test_it_ran_top_to_bottom_in_one_clean_kernel(nb):
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1)), f"execution counts {counts}: {RUN_IT}"


def test_it_is_not_a_smoke_run(nb):
    text = "".join(out.get("text", "") for c in nb.cells if c.cell_type == "code" for out in c.outputs)
    assert "SMOKE RUN" not in text, "the committed notebook was executed with TINYGRPO_NB_SMOKE=1"


def test_training_plots_one_figure(nb):
    images = [o for o in nb.cells[6].outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, f"cell 6 should end with one reward plot, found {len(images)}: {RUN_IT}"


# ----------------------------------------------------------------------------- size when rendered

def test_markdown_size_nbconvert(runner):
    counts = runner.markdown_chars(NOTEBOOK, use_pandoc=False)
    assert 0 < counts["nbconvert"] < runner.MAX_MARKDOWN_CHARS


@pytest.mark.skipif(shutil.which("pandoc") is None, reason="pandoc is not installed (apt-get install -y pandoc)")
def test_markdown_size_pandoc(runner):
    counts = runner.markdown_chars(NOTEBOOK)
    assert counts["pandoc"] is not None and counts["count"] == max(counts["nbconvert"], counts["pandoc"])
    assert counts["count"] < runner.MAX_MARKDOWN_CHARS


def test_inline_images_are_not_counted(runner):
    payload = "iVBORw0KGgo" + "A" * 5000 + "=="
    text = f"before ![](data:image/png;base64,{payload}) mid <img src=\"data:image/svg+xml;base64,{payload}\"> after"
    stripped = runner.strip_images(text)
    assert len(stripped) < 100 and stripped.startswith("before ") and stripped.endswith(" after")
