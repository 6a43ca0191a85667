"""Execute the notebook headlessly from a clean kernel, render it, and count its Markdown size.

    python scripts/run_notebook.py                                   # rebuild, execute, render notebook.ipynb
    TINYGRPO_NB_SMOKE=1 python scripts/run_notebook.py --output /tmp/nb_smoke.ipynb   # tiny validation run
    python scripts/run_notebook.py --no-execute                      # only render and count the committed one

Steps: (1) build the cells from scripts/build_notebook.py (unless --no-build: then execute the input notebook
as it is), (2) run every cell in a fresh python3 kernel with the repository root as working directory and
write the result to --output, (3) rebuild cell 8 (the analysis), whose numbers are filled in from the results
files that the run (cell 7: results/notebook_run.json) and the committed scripts wrote, keeping every output,
(4) render: `quarto render` when quarto is on PATH, else `jupyter nbconvert` to HTML and Markdown, plus
`pandoc -t gfm` when pandoc is installed, (5) print the run time and the Markdown character count as a
checker counts it: `jupyter nbconvert --to markdown` run on the file, and pandoc GFM, every character (an inline
image would count in full). nbconvert names the figure's file after the notebook ({name}_files/run.png), so the
count depends on the file name: it is taken for the notebook's own name and for a 60-character one, and the
largest of all is checked. Exits 1 if a cell fails or the count is over 36,000.

Rendering with nbconvert: cell 0 is Quarto's YAML header (format and options): Quarto consumes it, nbconvert
shows it as a line of text. nbconvert's HTML loads MathJax (the formulas) from a CDN, so offline they show as TeX
source; with Debian's libjs-mathjax installed (apt-get install -y libjs-mathjax) the HTML uses that copy instead.
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebook.ipynb"
MAX_MARKDOWN_CHARS = 36_000          # at most this many, by nbconvert and by pandoc
LONGEST_NAME = 60                    # file names up to this long: the count is checked for one this long
LOCAL_MATHJAX = Path("/usr/share/javascript/mathjax/MathJax.js")     # Debian's libjs-mathjax


def long_name(length=LONGEST_NAME):
    """A file name of `length` characters, .ipynb included."""
    return ("GRPO_assignment_notebook_with_a_long_file_name_" + "x" * length)[:length - len(".ipynb")] + ".ipynb"


def nbconvert_markdown(path):
    """`jupyter nbconvert --to markdown` of a notebook file, as a checker runs it (images go to separate files
    named after the notebook; their links are in the text)."""
    return subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "markdown", "--stdout", str(path),
                           "--log-level", "ERROR"], capture_output=True, text=True, check=True).stdout


def pandoc_gfm(path):
    """pandoc's GitHub Markdown of a notebook file, or None when pandoc is not installed."""
    if shutil.which("pandoc") is None:
        return None
    return subprocess.run(["pandoc", str(path), "-f", "ipynb", "-t", "gfm"], capture_output=True, text=True,
                          check=True).stdout


def markdown_chars(path, use_pandoc=True):
    """{'nbconvert': chars of the file as named, 'nbconvert_long': chars of the same notebook under a
    LONGEST_NAME-character name, 'pandoc': chars or None (pandoc missing or use_pandoc False), 'count': the
    largest}: every character of the text each converter writes."""
    counts = {"nbconvert": len(nbconvert_markdown(path)), "pandoc": None}
    with tempfile.TemporaryDirectory() as tmp:
        renamed = Path(tmp) / long_name()
        shutil.copyfile(path, renamed)
        counts["nbconvert_long"] = len(nbconvert_markdown(renamed))
    gfm = pandoc_gfm(path) if use_pandoc else None
    if gfm is not None:
        counts["pandoc"] = len(gfm)
    counts["count"] = max(v for v in counts.values() if v is not None)
    return counts


def execute(nb, timeout):
    """Run every cell in a fresh kernel (cwd = repository root). Returns (notebook, seconds, error or None)."""
    from nbconvert.preprocessors import CellExecutionError, ExecutePreprocessor
    ep = ExecutePreprocessor(timeout=timeout, kernel_name="python3", record_timing=False)
    t0 = time.perf_counter()
    error = None
    try:
        ep.preprocess(nb, {"metadata": {"path": str(ROOT)}})
    except CellExecutionError as e:
        error = e
    return nb, time.perf_counter() - t0, error


def render(path, out_dir):
    """quarto if present, else nbconvert HTML + Markdown; pandoc GFM if present. Returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    if shutil.which("quarto"):
        subprocess.run(["quarto", "render", str(path), "--to", "html", "--output-dir", str(out_dir)], check=True)
        written = [out_dir / f"{stem}.html"]
    else:
        print("rendering with nbconvert (no quarto): cell 0, Quarto's YAML header, shows as text; "
              + (f"formulas use the local MathJax, {LOCAL_MATHJAX}" if LOCAL_MATHJAX.exists() else
                 "formulas load MathJax from a CDN (offline they show as TeX; apt-get install -y libjs-mathjax)"))
        mathjax = [f"--HTMLExporter.mathjax_url=file://{LOCAL_MATHJAX}?config=TeX-AMS_CHTML-full,Safe"] \
            if LOCAL_MATHJAX.exists() else []
        for fmt in ("html", "markdown"):
            subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", fmt, str(path),
                            "--output-dir", str(out_dir), "--log-level", "WARN"] + (mathjax if fmt == "html" else []),
                           check=True)
        written = [out_dir / f"{stem}.html", out_dir / f"{stem}.md"]
    gfm = pandoc_gfm(path)
    if gfm is not None:
        (out_dir / f"{stem}.gfm.md").write_text(gfm)
        written.append(out_dir / f"{stem}.gfm.md")
    else:
        print("pandoc not found: skipping the GFM rendering (apt-get install -y pandoc)")
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", default=str(NOTEBOOK), help="where to write the executed notebook "
                    "(default: notebook.ipynb in place; use another path for smoke runs)")
    ap.add_argument("--input", default=str(NOTEBOOK), help="the notebook to execute with --no-build or "
                    "--no-execute")
    ap.add_argument("--no-build", action="store_true", help="execute --input as it is instead of rebuilding")
    ap.add_argument("--no-execute", action="store_true", help="only render and count --input")
    ap.add_argument("--render-dir", default=None, help="default: runs/render_<output name>")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = ap.parse_args(argv)

    if args.no_execute:
        path = Path(args.input)
    else:
        path = Path(args.output)
        if args.no_build:
            nb = nbformat.read(args.input, as_version=4)
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from build_notebook import build
            nb = build()
        print(f"executing {len(nb.cells)} cells in a fresh kernel ...", flush=True)
        nb, seconds, error = execute(nb, args.timeout)
        nbformat.write(nb, str(path))
        print(f"run time: {seconds:.1f} s -> {path}")
        if error is not None:
            print(f"FAILED: a cell raised an error:\n{error}", file=sys.stderr)
            return 1
        if not args.no_build:       # the analysis, with the numbers this run just wrote; outputs kept
            nbformat.write(build(keep_outputs_from=path), str(path))
            print(f"cell 8 filled in from results/ -> {path}")

    render_dir = Path(args.render_dir) if args.render_dir else ROOT / "runs" / f"render_{path.stem}"
    for f in render(path, render_dir):
        print(f"rendered {f}")
    counts = markdown_chars(path)
    pandoc = f"{counts['pandoc']:,}" if counts["pandoc"] is not None else "n/a (no pandoc)"
    print(f"markdown chars: {counts['count']:,} (nbconvert {counts['nbconvert']:,} as {path.name}, "
          f"{counts['nbconvert_long']:,} as a {LONGEST_NAME}-character name; pandoc gfm {pandoc}); "
          f"limit {MAX_MARKDOWN_CHARS:,}")
    if counts["count"] > MAX_MARKDOWN_CHARS:
        print(f"FAILED: the Markdown is {counts['count']:,} chars, over the limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
