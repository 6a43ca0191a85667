"""report.html: one self-contained page per run, written by train.py at the end and by report.py / show.py --html."""
import base64
import json
import shutil
from html.parser import HTMLParser

import pytest

import grpo
import report
import show
import train
from conftest import tiny_config, toy_reward
from load_weights import load_model
from task import Prompt
from test_show import random_ref

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
    assert "url(" not in "".join(a.get("style") or "" for _, a in page.tags) + path.read_text().split("</style>")[0]
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
    for name in ("before", "after", "paraphrase"):           # paraphrase: the reworded held-out questions
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


# ----------------------------------------------------------------------------- each token's share and KL


def token_spans(page):
    """(data-share, data-kl or None, class) of each token span of the page, in order."""
    return [(float(a["data-share"]), float(a["data-kl"]) if "data-kl" in a else None, a["class"])
            for tag, a in page.tags if tag == "span" and "data-share" in a]


def shown_groups(out):
    """The completions of the group the report shows for each of the three steps (the largest reward std)."""
    records = show.read_records(out / "completions.jsonl")
    return [r["prompts"][report.informative_group(r["prompts"])]["completions"] for r in records]


def test_step_record_keeps_each_tokens_share_and_kl(tiny_checkpoint):
    """Oracle: token_contributions and kl_per_token under the policy's own log-probs (the record is made from the
    rollout alone), and by hand: with seq_mean, token t of completion i carries -A_i / (|o_i| * N)."""
    model, tok = load_model(str(tiny_checkpoint))
    cfg = grpo.GRPOConfig(group_size=4, max_new_tokens=6, beta=0.04)
    prompts = [Prompt("What is 2 + 2?", 4), Prompt("What is 1 + 5?", 6)]
    batch = grpo.rollout(model, tok, prompts, toy_reward, cfg, ref_model=random_ref(model), seeds=[5, 6])
    logprobs = grpo.logprobs_by_chunk(model, batch, 4, cfg.prompts_per_pass)
    by_advantage, _ = show.token_contributions(logprobs, batch, cfg)
    kl = grpo.kl_per_token(logprobs, batch.ref_logprobs)
    record = show.step_record(1, prompts, batch, 4, tok.stop_ids, tok, cfg, kl)
    rows = [c for p in record["prompts"] for c in p["completions"]]
    assert any(c["advantage"] != 0 for c in rows) and all(x > 0 for c in rows for x in c["kl"])
    for i, c in enumerate(rows):
        n = c["length"]
        assert len(c["tokens"]) == len(c["share"]) == len(c["kl"]) == n
        # the texts join to the completion, and its stop token when it has one
        assert "".join(c["tokens"]) == c["text"] + ("" if c["truncated"] else c["tokens"][-1])
        # rounded to 3 significant digits: within 0.5%
        assert c["share"] == pytest.approx(by_advantage[i, :n].tolist(), rel=5e-3, abs=1e-12)
        assert c["share"] == pytest.approx([-c["advantage"] / (n * 8)] * n, rel=5e-3, abs=1e-12)
        assert c["kl"] == pytest.approx(kl[i, :n].tolist(), rel=5e-3, abs=1e-12)
        assert all(x == float(f"{x:.3g}") for x in c["share"] + c["kl"])        # 3 significant digits
    # beta = 0: no KL recorded; no tokenizer: the completions as an older run wrote them
    plain = show.step_record(1, prompts, batch, 4, tok.stop_ids, tok, cfg, None)
    assert all("kl" not in c and "share" in c for p in plain["prompts"] for c in p["completions"])
    bare = show.step_record(1, prompts, batch, 4, tok.stop_ids)
    assert all(set(c) == {"text", "reward", "parts", "advantage", "length", "truncated"}
               for p in bare["prompts"] for c in p["completions"])
    # a group out of the loss (drop_zero_std_groups): its KL was never computed, so none is recorded
    batch.loss_mask[:4] = 0
    dropped = show.step_record(1, prompts, batch, 4, tok.stop_ids, tok, cfg, kl)["prompts"]
    assert all(c["kl"] is None for c in dropped[0]["completions"])
    assert [c["kl"] for c in dropped[1]["completions"]] == [c["kl"] for c in record["prompts"][1]["completions"]]


def test_a_run_records_the_kl_it_logs(tiny_run):
    """Oracle: log.jsonl's kl, the mean per-token KL over the step's tokens (show.step_metrics), from optimize's
    kl; and each share by hand, -A_i / (|o_i| * N) with N = 4 completions a step."""
    out, _ = tiny_run
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    records = show.read_records(out / "completions.jsonl")
    for record, logged in zip(records, log):
        rows = [c for p in record["prompts"] for c in p["completions"]]
        kls = [x for c in rows for x in c["kl"]]
        assert sum(kls) / len(kls) == pytest.approx(logged["kl"], rel=5e-3, abs=1e-9)
        for c in rows:
            assert c["share"] == pytest.approx([-c["advantage"] / (c["length"] * 4)] * c["length"], rel=5e-3)
    assert log[0]["kl"] == 0 and log[-1]["kl"] > 0          # pi = pi_ref at step 1, not after


def test_report_shades_each_token_by_its_recorded_share_and_kl(tiny_run):
    out, _ = tiny_run
    spans = token_spans(parse(out / "report.html"))
    comps = [c for group in shown_groups(out) for c in group]
    assert [s for s, _, _ in spans] == [x for c in comps for x in c["share"]]
    assert [k for _, k, _ in spans] == [x for c in comps for x in c["kl"]]
    assert any(s != 0 for s, _, _ in spans) and any(k for _, k, _ in spans)
    for share, kl, classes in spans:
        shade = {c[0] for c in classes.split() if c[0] in "udk" and c[1:].isdigit()}
        assert shade == ({"u"} if share < 0 else {"d"} if share > 0 else set()) | ({"k"} if kl else set())
    text = "".join(parse(out / "report.html").text)
    assert "share of the update" in text and "KL to the reference" in text


def copy_with_completions(out, to, rewrite):
    """A copy of the run folder out at to, each completion of completions.jsonl replaced by rewrite(completion)."""
    shutil.copytree(out, to)
    records = show.read_records(to / "completions.jsonl")
    for record in records:
        for p in record["prompts"]:
            p["completions"] = [rewrite(c) for c in p["completions"]]
    (to / "completions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return to


def test_a_group_out_of_the_loss_renders_without_kl(tiny_run, tmp_path):
    """completions.jsonl of a run with drop_zero_std_groups where every group of a step was left out: "kl" is None
    on each completion; the page shades the shares, underlines nothing and says why."""
    dropped = copy_with_completions(tiny_run[0], tmp_path / "dropped", lambda c: c | {"kl": None})
    page = parse(report.write_report(dropped))
    spans = token_spans(page)
    assert spans and all(k is None for _, k, _ in spans)
    assert not any(c[0] == "k" and c[1:].isdigit() for _, _, classes in spans for c in classes.split())
    assert "out of the loss (drop_zero_std_groups): no KL" in "".join(page.text)


def test_an_older_run_without_token_records_still_renders(tiny_run, tmp_path):
    """A completions.jsonl written before the per-token records: whole completions, coloured by advantage."""
    old = copy_with_completions(tiny_run[0], tmp_path / "old",
                                lambda c: {k: v for k, v in c.items() if k not in ("tokens", "share", "kl")})
    page = parse(report.write_report(old))
    assert set(SECTIONS) <= {a.get("id") for _, a in page.tags} and not token_spans(page)
    text = "".join(page.text)
    assert "no per-token records" in text
    for group in shown_groups(old):
        assert all(c["text"] in text for c in group)


def test_the_group_shown_is_the_one_whose_rewards_spread_most():
    group = lambda *rewards: {"completions": [{"reward": r} for r in rewards]}
    # std 0, 0.25, 0.5, 0.5: the first of the two largest
    assert report.informative_group([group(1, 1), group(0, 0.5), group(0, 1), group(1, 0)]) == 2
    assert report.informative_group([group(0, 0), group(1, 1)]) == 0          # nothing to learn anywhere: the first
