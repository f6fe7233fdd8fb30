"""`vlm bench eval` runs at tiny sizes, and its peak RSS figures are each process's own."""

from __future__ import annotations

import json
import sys

import pytest

from vlm.bench.eval import peak_rss_mb
from vlm.cli import main


def test_peak_rss_is_measured_per_process_not_the_largest_child_so_far():
    big = peak_rss_mb([sys.executable, "-c", "x = bytearray(300 << 20); x[::4096] = b'1' * len(x[::4096])"])
    small = peak_rss_mb([sys.executable, "-c", "pass"])
    assert big > 300 and small < 100


@pytest.mark.slow  # each run is a fresh `vlm` process: about 10 s of imports apiece on 2 busy cores
def test_bench_eval_runs_zero_shot_at_two_tiny_sizes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "eval", "--tasks", "zeroshot", "--zeroshot-images", "6", "12", "--classes", "3",
                 "--model", "clip-tiny", "--image-size", "32", "--patch-size", "8", "--workers", "0",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["size"] for r in rows] == ["6 images", "12 images"]
    assert all(r["peak_rss_mb"] > 0 and r["images_per_s"] > 0 for r in rows)
    assert "| zeroshot late | 12 images | 0 |" in capsys.readouterr().out
