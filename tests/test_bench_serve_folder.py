"""`vlm bench serve --folder`: an operator's view of serving a folder they built (issue 25's serving figures)."""

from __future__ import annotations

import json

from test_serve_api import PQ_FACTORY, make_collection

from vlm.cli import main


def test_bench_serve_folder_times_the_probes_and_splits_the_servers_memory(tmp_path, capsys):
    collection = make_collection(tmp_path, "--index-factory", PQ_FACTORY)
    out = tmp_path / "report.json"
    assert main(["bench", "serve", "--folder", str(collection["index"]), "--checkpoint", str(collection["checkpoint"]),
                 "--queries", "20", "--concurrency", "1,2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["index"]["items"] == 12 and report["index"]["mapped"]["image"] is True  # served read-only
    assert report["readyz"]["p50_ms"] > 0 and report["stats"]["p50_ms"] > 0
    assert [h["errors"] for h in report["http_search"]] == [0, 0]
    memory, model = report["memory_after_queries"], report["model_alone"]
    assert memory["RssAnon"] + memory["RssFile"] <= memory["VmRSS"] + 2**20 and model["VmHWM"] > 0
    assert "/v1/stats p50|p99" in capsys.readouterr().out


def test_bench_serve_folder_needs_the_checkpoint(tmp_path, capsys):
    assert main(["bench", "serve", "--folder", str(tmp_path)]) == 2
    assert "--folder needs --checkpoint" in capsys.readouterr().err
