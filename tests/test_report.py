"""report.html: one self-contained page per run, written by train.py at the end and by report.py / show.py --html."""
import base64
import json
from html.parser import HTMLParser

import pytest

import report
import show
import train
from conftest import tiny_config, toy_reward

SECTIONS = ("eval", "figure", "examples", "groups", "components", "audit", "settings")


class Page(HTMLParser):
    """Every tag's attributes, and the text of each cell that carries a data-key (in order)."""

    def __init__(self):
        super().__init__()
        self.tags, self.cells, self._key, self.text = [], [], None, []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "td" and "data-key" in dict(attrs):
            self._key = dict(attrs)["data-key"]
            self.cells.append([self._key, ""])

    def handle_endtag(self, tag):
        if tag == "td":
            self._key = None

    def handle_data(self, data):
        self.text.append(data)
        if self._key is not None:
            self.cells[-1][1] += data


def parse(path):
    page = Page()
    page.feed(path.read_text())
    page.close()
    return page


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_checkpoint):
    """A 3-step run of the tiny GPT-2 on a reward it earns now and then; train.train's result beside it."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    mp = pytest.MonkeyPatch()
    mp.setattr(train, "make_reward", lambda *a: toy_reward)
    try:
        result = train.train(tiny_config(tiny_checkpoint, out))
    finally:
        mp.undo()
    return out, result


def test_train_writes_a_self_contained_report(tiny_run):
    out, result = tiny_run
    path = out / "report.html"
    page = parse(path)
    ids = {a.get("id") for _, a in page.tags}
    assert set(SECTIONS) <= ids
    # nothing is fetched: no src or href points outside the file (a link to a section is '#...')
    for tag, attrs in page.tags:
        for name in set(attrs) & {"src", "href"}:
            value = attrs[name] or ""
            assert not value.startswith(("http:", "https:", "//")), (tag, attrs)
            assert name != "href" or value.startswith("#"), (tag, attrs)
    assert not any(tag in ("script", "link", "iframe") for tag, _ in page.tags)
    images = [a["src"] for tag, a in page.tags if tag == "img"]
    assert len(images) == 1 and images[0].startswith("data:image/png;base64,")
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size < 300_000


def test_report_numbers_are_the_logs(tiny_run):
    out, result = tiny_run
    page = parse(out / "report.html")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [(key, text) for key, text in page.cells if "." not in key]       # the step table, row by row
    keys = ["reward", *sorted(k for k in log[0] if k.startswith("reward/")), "reward_std", "frac_reward_zero_std",
            "kl", "completion_length", "truncated"]
    assert [key for key, _ in steps] == keys * len(log)
    for i, record in enumerate(log):
        for key, text in steps[i * len(keys):(i + 1) * len(keys)]:
            assert float(text) == pytest.approx(round(record[key], 3), abs=1e-9), (i, key)
    # before/after: eval.json holds train's evaluations, and the page shows them
    saved = json.loads((out / "eval.json").read_text())
    assert saved["grader"] == "the task's verifier" and saved["n_eval"] == 4
    for name in ("before", "after"):
        assert saved[name]["accuracy"] == result[name]["accuracy"]
        assert saved[name]["reward"] == result[name]["reward"]
        cells = dict((k, v) for k, v in page.cells if k.startswith(name + "."))
        assert cells[f"{name}.accuracy"] == f"{result[name]['accuracy']:.1%}"
        assert cells[f"{name}.format"] == f"{result[name]['format']:.1%}"
        assert float(cells[f"{name}.reward"]) == pytest.approx(round(result[name]["reward"], 3))
    text = "".join(page.text)
    assert "graded by the task's verifier" in text
    for question, output, _, _ in result["after"]["examples"]:
        assert question in text and output in text
    for step in (1, 2, 3):                       # 3 steps: the first, the middle and the last
        assert f"step {step}: group" in text
    assert "cases: 0 false positives, 0 false negatives" in text     # add1's audit
    assert '"add1"' in text and "group_size" in text                 # the settings


def test_report_and_show_html_rewrite_it(tiny_run, capsys):
    out, _ = tiny_run
    (out / "report.html").unlink()
    report.main([str(out)])
    assert (out / "report.html").is_file() and "wrote" in capsys.readouterr().out
    first = (out / "report.html").read_text()
    (out / "report.html").unlink()
    show.main([str(out), "--html"])
    assert (out / "report.html").read_text() == first
    assert not list(out.glob("*.tmp-*"))


def test_a_resumed_run_keeps_the_before(tiny_run, tmp_path):
    """--resume does not evaluate the base model again: eval.json keeps the "before" it had."""
    out, result = tiny_run
    report.write_report(out, {"before": None, "after": {"accuracy": 0.5, "format": 0.25, "reward": 1.0,
                                                         "completion_chars": 3.0, "examples": []}, "n_eval": 4})
    saved = json.loads((out / "eval.json").read_text())
    assert saved["before"]["accuracy"] == result["before"]["accuracy"] and saved["after"]["accuracy"] == 0.5
    report.write_report(out, {"before": result["before"], "after": result["after"], "n_eval": 4})


def test_a_folder_without_a_run(tmp_path):
    with pytest.raises(SystemExit) as e:
        report.main([str(tmp_path)])
    assert str(e.value.code).startswith("error: ") and "log.jsonl" in str(e.value.code)
    assert "\n" not in str(e.value.code)
