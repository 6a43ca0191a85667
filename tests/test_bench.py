"""bench.py's results: one file per benchmark and machine, holding its machine, date and command."""
import json
import re
import sys

from conftest import ROOT

import bench

AMD = {"cpu": "AMD EPYC", "threads": 2, "amx": False, "cuda": None, "torch": "2.13.0+cpu", "auto_dtype": "bfloat16",
       "allocator": "glibc malloc"}


def test_machine_slug():
    assert bench.machine_slug(AMD) == "amd-epyc-2threads"
    assert bench.machine_slug(AMD | {"allocator": "libtcmalloc_minimal.so.4"}) == "amd-epyc-2threads-tcmalloc"
    assert bench.machine_slug(AMD | {"cpu": "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "threads": 1}) \
        == "intel-core-i7-8700-1threads"
    assert bench.machine_slug(AMD | {"cpu": "Intel(R) Xeon(R) Processor"}) == "intel-xeon-2threads"
    assert bench.machine_slug(AMD | {"cuda": "NVIDIA H200"}) == "nvidia-h200"


def test_command_line_names_the_preloaded_allocator(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench.py", "--only=step,trl"])
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert bench.command_line() == "python bench.py --only=step,trl"
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert bench.command_line() == \
        "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python bench.py --only=step,trl"


def test_a_result_file_per_benchmark_and_machine_replaced_by_a_later_run(tmp_path):
    path = bench.write_result(tmp_path, "step", {"step_s": 12.0}, AMD, "python bench.py --only=step")
    assert path == tmp_path / "step-amd-epyc-2threads.json"
    record = json.loads(path.read_text())
    assert record["benchmark"] == "step" and record["machine"] == AMD
    assert record["command"] == "python bench.py --only=step" and record["result"] == {"step_s": 12.0}
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", record["date"])
    assert "commit" in record
    # a later run of the same benchmark on the same machine replaces the file (one JSON object, the new result)
    assert bench.write_result(tmp_path, "step", {"step_s": 9.0}, AMD, "python bench.py --only=step,trl") == path
    record = json.loads(path.read_text())
    assert record["result"] == {"step_s": 9.0} and record["command"] == "python bench.py --only=step,trl"
    # another benchmark, or another machine, is another file
    bench.write_result(tmp_path, "trl", {}, AMD, "python bench.py --only=step,trl")
    tcmalloc = AMD | {"allocator": "libtcmalloc_minimal.so.4"}
    bench.write_result(tmp_path, "step", {}, tcmalloc, "LD_PRELOAD=... python bench.py --only=step")
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["step-amd-epyc-2threads-tcmalloc.json", "step-amd-epyc-2threads.json", "trl-amd-epyc-2threads.json"]


def test_committed_results_follow_the_scheme():
    """Every committed bench result is named after its benchmark and machine and says when and how it was made."""
    paths = sorted((ROOT / "results" / "bench").glob("*.json"))
    assert paths
    for path in paths:
        record = json.loads(path.read_text())
        assert path.name == f"{record['benchmark']}-{bench.machine_slug(record['machine'])}.json"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d", record["date"]), path.name
        assert "python bench.py --only=" in record["command"], path.name
        assert record["result"], path.name
