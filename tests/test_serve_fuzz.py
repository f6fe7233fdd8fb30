"""The retrieval API under schemathesis: no 5xx on any input, and every answer matches /openapi.json.

A real `vlm serve` (uvicorn on 127.0.0.1) over a real index, faiss and milvus-lite, fuzzed by the schemathesis
CLI with a fixed seed: its examples, coverage, fuzzing and stateful phases (the stateful phase follows the
OpenAPI links from POST /v1/items to the item it created). The oversized-id requests that once answered 500
are tested by name.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from test_serve_api import make_collection

from vlm.cli import main
from vlm.serve.process import ServerProcess

HAS_MILVUS_LITE = importlib.util.find_spec("milvus_lite") is not None and importlib.util.find_spec("pymilvus")
BACKENDS = ["faiss", pytest.param("milvus", marks=pytest.mark.skipif(not HAS_MILVUS_LITE,
                                                                     reason="milvus-lite is not installed"))]
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance"
TOO_BIG = "1361429624618430678683353088"  # larger than any 64-bit integer


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, collection):
    index = collection["index"]
    if request.param == "milvus":
        index = collection["root"] / "index-milvus"
        assert main(["index", "build", "--checkpoint", str(collection["checkpoint"]), "--data",
                     str(collection["root"] / "pairs.csv"), "--out", str(index), "--backend", "milvus"]) == 0
    log = collection["root"] / f"server-{request.param}.log"
    with ServerProcess(collection["checkpoint"], index, "--rerank-checkpoint", str(collection["fusion"]),
                       "--max-k", "50", "--max-batch", "8", "--max-body-bytes", "262144", log_path=log) as process:
        yield process


@pytest.mark.parametrize("path", [f"/v1/items/{TOO_BIG}", f"/v1/items/{TOO_BIG}/image", "/v1/items/0",
                                  f"/v1/items/-{TOO_BIG}", "/v1/items/9223372036854775808"])
def test_an_id_outside_sqlites_range_is_a_4xx_naming_the_field(server, path):
    for method in ("GET", "DELETE") if not path.endswith("/image") else ("GET",):
        response = httpx.request(method, server.url + path, timeout=30)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and error["message"].startswith("item_id:")


def test_the_largest_sqlite_id_is_a_plain_404(server):
    response = httpx.get(f"{server.url}/v1/items/9223372036854775807", timeout=30)
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server, tmp_path):
    report = tmp_path / "report.xml"
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
               "--checks", CHECKS, "--seed", "20261204", "--max-examples", "8", "--workers", "1",
               "--phases", "examples,coverage,fuzzing,stateful", "--no-shrink", "--request-timeout", "30",
               "--report", "junit", "--report-junit-path", str(report)]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS), "NO_COLOR": "1"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "passed" in output and "failed" not in output.split("SUMMARY")[-1], output[-3000:]
    assert "API Links:" in output and " 0 covered" not in output, output[-3000:]
