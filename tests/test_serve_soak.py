"""`vlm bench serve --soak`: a few seconds of concurrent searches, adds and deletes end with zero errors and a
passed consistency check."""

from __future__ import annotations

from test_serve_api import make_collection

from vlm.bench.soak import format_soak, run_soak


def test_a_short_soak_has_no_errors_and_loses_nothing(tmp_path):
    collection = make_collection(tmp_path)
    report = run_soak(str(collection["checkpoint"]), collection["index"], minutes=0.1, clients=4,
                      log_path=tmp_path / "server.log")
    print(format_soak(report))
    assert report["errors"] == 0, report["first_errors"]
    assert all(report["requests"][kind]["requests"] > 0 for kind in ("search", "add", "delete", "stats", "healthz"))
    consistency = report["consistency"]
    assert consistency["passed"], consistency["problems"]
    assert consistency["adds_checked"] > 0 and consistency["deletes_checked"] > 0
    assert report["rss_start_mb"] and report["rss_end_mb"]  # measured (the 10% bound is the benchmark's)
