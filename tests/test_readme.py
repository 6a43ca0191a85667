"""README's Files section: the line counts it gives for the five files of the reading path are theirs, and the
path keeps the budget it promises (read in one sitting: at most 300 lines a file, 1,400 in all)."""
import re

from conftest import ROOT

READING_PATH = ["model.py", "engine.py", "task.py", "grpo.py", "train.py"]


def test_the_reading_path_line_counts_in_readme_are_the_files_own_and_within_budget():
    readme = (ROOT / "README.md").read_text()
    lines = {f: len((ROOT / f).read_text().splitlines()) for f in READING_PATH}
    for f, n in lines.items():
        said = {int(x) for x in re.findall(rf"`{re.escape(f)}` \((\d+)", readme)}
        assert said == {n}, (f, said, n)
        assert n <= 300, (f, n)
    total = sum(lines.values())
    said_total = {int(x.replace(",", "")) for x in re.findall(r"(\d,\d{3})(?: lines\)|\) \|)", readme)}
    assert said_total == {total} and total <= 1400, (said_total, total)
