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
MODULES = ["task.py", "verify.py", "grpo.py", "show.py", "eval.py", "model.py", "train.py", "load_weights.py"]
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
    source = (ROOT / "verify.py").read_text()
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


def test_the_analysis_is_the_generated_one(nb):
    """Cell 8 is analysis_text() of the committed results: its claims were chosen by those numbers, not typed."""
    assert nb.cells[8].source == load_script("build_notebook").analysis_text(), RUN_IT


def test_the_seeds_claim_counts_the_table_and_names_the_recipe():
    """Cell 8's last paragraph: the runs that reached 95% on both counts, the seed range and dtypes from the table;
    the settings train.py changes read from TrainConfig and GRPOConfig, not typed."""
    build = load_script("build_notebook")
    from grpo import GRPOConfig
    from train import TrainConfig
    runs = [dict(seed=2, dtype="fp32", after=0.99, format=0.96), dict(seed=5, dtype="bf16", after=0.99, format=0.0),
            dict(seed=3, dtype="fp32", after=0.94, format=0.94)]
    text = build.seeds_sentence({"runs": runs}, {"min": 0.0, "max": 0.98}, 24)
    assert "1 of 3 runs reached 95% on both" in text and "seeds 2-5 in bf16 and fp32 (3 runs" in text
    assert "94.0% to 99.0% held-out accuracy and 0.0% to 96.0% exact format" in text
    recipe, paper = TrainConfig(), GRPOConfig()
    assert (f"temperature {recipe.grpo.temperature}" in text) == (recipe.grpo.temperature != paper.temperature)
    assert f"{recipe.steps} steps (here 24)" in text and "0.0% to 98.0% by seed" in text
    assert ("FORMAT_EXAMPLE" in text) == recipe.format_example
    assert build.notebook_lr() == 5e-5
    assert (f"lr {recipe.lr:g} (here 5e-05)" in text) == (recipe.lr != 5e-5)
    code = "".join("".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"])
    assert "cast_for_training(" in code and "moments=" not in code       # the notebook's AdamW: fp32 moments
    assert (f"AdamW's moments in {recipe.adam_moments} (here fp32)" in text) == (recipe.adam_moments != "fp32")


def analysis_inputs():
    run = json.loads((ROOT / "results" / "notebook_run.json").read_text())
    sweep = json.loads((ROOT / "results" / "group_size_sweep.json").read_text())
    return load_script("build_notebook"), run, sweep


def with_means(sweep, key, means):
    """The sweep with `key`'s mean per G (in increasing G) replaced."""
    summary = {G: s | {key: s[key] | {"mean": m}} for (G, s), m in zip(sweep["summary"].items(), means)}
    return sweep | {"summary": summary}


def test_the_kl_claim_follows_the_run():
    build, run, sweep = analysis_inputs()
    mid = [h | {"kl": 2.0 if h["step"] == 5 else 1.0} for h in run["history"]]
    text = build.analysis_text(run | {"history": mid}, sweep)
    assert "its highest, 2.00 at step 5" in text and "not highest at the end" in text
    rising = [h | {"kl": 0.1 * h["step"]} for h in run["history"]]
    text = build.analysis_text(run | {"history": rising}, sweep)
    assert f"to {0.1 * run['steps']:.2f} at step {run['steps']}, its highest at the end" in text
    assert "not highest" not in text


@pytest.mark.parametrize("means,claim", [
    ([0.05, 0.06, 0.10, 0.20], "noisier at every larger G"),
    ([0.08, 0.07, 0.11, 0.18], "noisier at G = 16 than at G = 2, but not at every step up"),
    ([0.20, 0.10, 0.06, 0.05], "not noisier at G = 16 than at G = 2")])
def test_the_noise_claim_follows_the_sweep(means, claim):
    build, run, sweep = analysis_inputs()
    assert list(sweep["summary"]) == ["2", "4", "8", "16"]
    text = build.analysis_text(run, with_means(sweep, "reward_curve_noise", means))
    sentence = text[text.index("The reward curve"):].split(" (")[0]
    assert sentence.endswith(claim) and ("rests on fewer prompts" in text) == (means[-1] > means[0])


@pytest.mark.parametrize("means,claim", [
    ([0.70, 0.65, 0.60, 0.50], "falls at every larger G"),
    ([0.66, 0.70, 0.61, 0.52], "lower at G = 16 than at G = 2, but not at every step up"),
    ([0.50, 0.60, 0.65, 0.70], "not lower at G = 16 than at G = 2")])
def test_the_zero_variance_claim_follows_the_sweep(means, claim):
    build, run, sweep = analysis_inputs()
    text = build.analysis_text(run, with_means(sweep, "frac_zero_std_groups", means))
    sentence = text[text.index("The zero-variance share", text.index("The reward curve")):].split(" (")[0]
    assert sentence.endswith(claim) and ("more likely to mix right and wrong" in text) == (means[-1] < means[0])


def test_the_shortcut_and_eos_claims_follow_cell_7():
    build, run, sweep = analysis_inputs()
    wrong = [["Which is larger, 40 or 47? Answer with just the number.", "40", 0.0, False],
             ["Which is larger, 79 or 97? Answer with just the number.", "99", 0.0, False]]
    tuned = run["tuned"] | {"wrong_examples": wrong}
    split = {"base": [[5, 18], [86, 182]], "GRPO": [[15, 18], [181, 182]]}
    text = build.analysis_text(run | {"tuned": tuned, "same_tens": split, "kl_share_eos": 0.83}, sweep)
    assert "15/18 right on those pairs against 181/182" in text and '"99" for 79 or 97 is neither number' in text
    assert "83% of the KL term" in text
    even = split | {"GRPO": [[18, 18], [170, 182]]}
    unmeasured = {k: v for k, v in run.items() if k != "kl_share_eos"}      # a run that did not measure it
    text = build.analysis_text(unmeasured | {"tuned": tuned, "same_tens": even}, sweep)
    assert "answered as well as the rest (18/18 against 170/182" in text and "neither number" not in text
    assert "of the KL term" not in text                              # not measured: not claimed


def test_the_last_integer_claim_counts_cell_4s_cases():
    build, run, sweep = analysis_inputs()
    paid, wrong = build.last_integer_paid()
    # hand-checked: each ends on the right number and is wrong; "57 or 42" ends on 42; "42" is just wrong
    assert {"15 is larger than 43.", "42 is larger than 57, so 57.", "Not 57.", "42? No, 57"} == set(paid)
    assert {"57 or 42", "42", ""} <= {r for _, r in wrong}
    text = " ".join(build.analysis_text().split())
    assert f"a last-integer rule would pay {len(paid)} of the {len(wrong)} wrong replies" in text


def test_every_run_beat_is_computed():
    build, run, sweep = analysis_inputs()
    assert "Every run beat its base model" in build.analysis_text(run, sweep)
    runs = [dict(sweep["runs"][0], accuracy_after=0.0)] + sweep["runs"][1:]
    assert "Not every run beat its base model" in build.analysis_text(run, sweep | {"runs": runs})


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


def test_one_style_block_for_the_token_views(nb):
    html_out = [o["data"]["text/html"] for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert len(html_out) == 2 and "".join(html_out).count("<style") == 1, RUN_IT


def test_training_plots_one_figure(nb):
    images = [o for o in nb.cells[6].outputs if "image/png" in o.get("data", {})]
    assert len(images) == 1, f"cell 6 should end with one reward plot, found {len(images)}: {RUN_IT}"


# ----------------------------------------------------------------------------- size when rendered

def test_markdown_size_nbconvert(runner):
    """At most 36,000 characters by `jupyter nbconvert --to markdown` run on the file, under its own name and
    under a 60-character one (the figure's link holds the name)."""
    counts = runner.markdown_chars(NOTEBOOK, use_pandoc=False)
    assert len(runner.long_name()) == 60
    assert 0 < counts["nbconvert"] <= counts["nbconvert_long"] <= runner.MAX_MARKDOWN_CHARS, f"{counts}: {RUN_IT}"


def test_the_figure_link_names_the_notebook_at_most_once(runner):
    """nbconvert puts the figure in {name}_files/; its own file name (output metadata 'filename') does not repeat
    the notebook's, so a longer name costs its length once."""
    counts = runner.markdown_chars(NOTEBOOK, use_pandoc=False)
    assert counts["nbconvert_long"] - counts["nbconvert"] <= len(runner.long_name()) - len(NOTEBOOK.name)


@pytest.mark.skipif(shutil.which("pandoc") is None, reason="pandoc is not installed (apt-get install -y pandoc)")
def test_markdown_size_pandoc(runner):
    counts = runner.markdown_chars(NOTEBOOK)
    assert counts["pandoc"] is not None and counts["count"] == max(counts["nbconvert"], counts["nbconvert_long"],
                                                                   counts["pandoc"])
    assert counts["count"] <= runner.MAX_MARKDOWN_CHARS, f"{counts}: {RUN_IT}"


def test_the_count_is_every_character_nbconvert_writes(runner, tmp_path):
    """No stripping: an inline image counts in full, as a checker running nbconvert would count it."""
    nb = nbformat.v4.new_notebook()
    payload = "iVBORw0KGgo" + "A" * 5000
    nb.cells.append(nbformat.v4.new_markdown_cell(f"before ![](data:image/png;base64,{payload}) after"))
    nbformat.write(nb, tmp_path / "n.ipynb")
    counts = runner.markdown_chars(tmp_path / "n.ipynb", use_pandoc=False)
    assert counts["nbconvert"] > 5000 and counts["nbconvert"] == len(runner.nbconvert_markdown(tmp_path / "n.ipynb"))
