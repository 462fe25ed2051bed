"""/docs serves Swagger UI from the gateway's own files: no script from a CDN runs on the origin
of the console's session cookie."""

from __future__ import annotations

import re
from pathlib import Path

from codingjob_gateway.app import add_api_docs
from fastapi import FastAPI
from fastapi.testclient import TestClient


def test_docs_load_only_the_gateways_own_files(tmp_path: Path) -> None:
    (tmp_path / "swagger-ui-bundle.js").write_text("window.SwaggerUIBundle = () => {};")
    (tmp_path / "swagger-ui.css").write_text("body {}")
    app = FastAPI(docs_url=None, redoc_url=None)
    add_api_docs(app, tmp_path)
    with TestClient(app) as http:
        page = http.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page.text)
        urls += re.findall(r"""url:\s*'([^']+)'""", page.text)
        assert "/docs/assets/swagger-ui-bundle.js" in urls and "/openapi.json" in urls
        assert [u for u in urls if not u.startswith("/")] == []
        script = http.get("/docs/assets/swagger-ui-bundle.js")
        assert script.status_code == 200 and "SwaggerUIBundle" in script.text


def test_without_the_files_there_is_no_docs_page(tmp_path: Path) -> None:
    app = FastAPI(docs_url=None, redoc_url=None)
    add_api_docs(app, tmp_path)
    with TestClient(app) as http:
        assert http.get("/docs").status_code == 404
        assert http.get("/openapi.json").status_code == 200
