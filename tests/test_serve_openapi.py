"""The routers are split per resource; the API they document is the same: the OpenAPI document equals the one
recorded before the split (tests/data/openapi.json), apart from the order of keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_serve_api import make_collection

from vlm.serve.app import create_app
from vlm.serve.service import ServeConfig

RECORDED = Path(__file__).with_name("data") / "openapi.json"


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return make_collection(tmp_path_factory.mktemp("openapi"))


def test_openapi_document_is_unchanged(collection):
    app = create_app(ServeConfig(checkpoint=str(collection["checkpoint"]), index=str(collection["index"])))
    document = json.loads(json.dumps(app.openapi()))  # tuples as lists, as the recorded file has them
    recorded = json.loads(RECORDED.read_text())
    assert sorted(document["paths"]) == sorted(recorded["paths"])
    for path, operations in recorded["paths"].items():
        assert document["paths"][path] == operations, path
    assert document == recorded


def test_every_serve_function_is_short():
    """Small routers: no function in vlm/serve/ over 60 lines (issue 28)."""
    import ast

    long = []
    for path in sorted((Path(__file__).parents[1] / "vlm" / "serve").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, long
