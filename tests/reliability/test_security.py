"""Security: API key, CORS, limits reported, no file-system access from requests, no unpickling, safe
request ids and log lines, no redirects built from the Host header, no third-party scripts."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings

from . import inputs
from .conftest import TINY_SETTINGS
from .helpers import assert_clean_error, post_image, wait_until
from .rawhttp import connect, read_response
from .serverproc import REPO_ROOT, ServerProcess, running_server

KEY = "s3cret-key-for-tests"
ORIGIN = "http://app.example.test"
GOOD = inputs.png(40, 30)


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, Path]
) -> Iterator[ServerProcess]:
    """The tiny server with an API key, the key also required on /metrics, and one CORS origin."""
    settings = {
        "model": tiny_models["good"],
        "max_side": 64,
        "bucket": 64,
        "api_key": KEY,
        "metrics_need_key": True,
        "cors_origins": f"{ORIGIN}, http://other.example.test",
        "log_format": "text",
        "log_level": "info",
    }
    with running_server(settings, tmp_path_factory.mktemp("secured") / "server.log") as server:
        yield server


def test_api_key_is_required_where_configured(secured: ServerProcess) -> None:
    with httpx.Client(base_url=secured.url, timeout=10) as client:
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY + "x"}, {"X-API-Key": ""}):
            response = client.post("/segment", content=GOOD, headers={"Content-Type": "image/png", **headers})
            assert "API key" in assert_clean_error(response, {401})
            assert_clean_error(client.get("/v1/model", headers=headers), {401})
            assert_clean_error(client.get("/metrics", headers=headers), {401})
        auth = {"X-API-Key": KEY}
        ok = client.post("/segment", content=GOOD, headers={"Content-Type": "image/png", **auth})
        assert ok.status_code == 200
        assert client.get("/v1/model", headers=auth).status_code == 200
        assert client.get("/metrics", headers=auth).status_code == 200
        assert client.get("/health/live").status_code == 200  # probes need no key
        assert client.get("/health/ready").status_code == 200


def test_key_comparison_is_constant_time() -> None:
    """The key is compared with hmac.compare_digest, never with ``==`` (which leaks the matching prefix)."""
    source = (REPO_ROOT / "server" / "routes" / "deps.py").read_text()
    assert "hmac.compare_digest(" in source
    assert not re.search(
        r"(==|!=)\s*(settings\.)?api_key|api_key[^\n]*get_secret_value\(\)\s*(==|!=)", source
    )


def test_key_is_not_leaked_in_logs_or_model_info(secured: ServerProcess) -> None:
    info = httpx.get(secured.url + "/v1/model", headers={"X-API-Key": KEY}).json()
    assert KEY not in str(info)
    assert KEY not in secured.log()


def test_cors_allows_only_configured_origins(secured: ServerProcess) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    allowed = httpx.options(secured.url + "/segment", headers={"Origin": ORIGIN, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    denied = httpx.options(
        secured.url + "/segment", headers={"Origin": "http://evil.example.test", **preflight}
    )
    assert denied.headers.get("access-control-allow-origin") != "http://evil.example.test"
    simple = httpx.get(secured.url + "/health/live", headers={"Origin": "http://evil.example.test"})
    assert "access-control-allow-origin" not in simple.headers


def test_cors_is_off_and_metrics_open_by_default(tiny_server: ServerProcess) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    response = httpx.options(tiny_server.url + "/segment", headers=preflight)
    assert "access-control-allow-origin" not in response.headers
    simple = httpx.get(tiny_server.url + "/health/live", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in simple.headers
    assert httpx.get(tiny_server.url + "/metrics").status_code == 200


def test_limits_are_reported(tiny_server: ServerProcess) -> None:
    limits = httpx.get(tiny_server.url + "/v1/model").json()["limits"]
    assert limits["max_body_bytes"] == TINY_SETTINGS["max_body_bytes"]
    assert limits["max_pixels"] == TINY_SETTINGS["max_pixels"]
    assert limits["max_side"] == TINY_SETTINGS["max_side"]


@pytest.mark.parametrize(
    "path",
    [
        "/static/../server/settings.py",
        "/static/%2e%2e/settings.py",
        "/static/..%2fsettings.py",
        "/static/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/static//etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/static/" + "%2e%2e/" * 8 + "etc/passwd",
    ],
)
def test_no_request_path_reaches_the_file_system(tiny_server: ServerProcess, path: str) -> None:
    response = httpx.get(tiny_server.url + path)
    assert response.status_code in (400, 404), (path, response.status_code)
    assert (
        "root:" not in response.text
        and "BaseSettings" not in response.text
        and "[project]" not in response.text
    )


def test_request_id_is_echoed_only_when_safe(secured: ServerProcess) -> None:
    """Ids of 1 to 128 of A-Z a-z 0-9 . _ : / + = - are echoed; others are replaced, and that is logged."""
    auth = {"X-API-Key": KEY}
    with httpx.Client(timeout=10) as client:
        for given in ("abc-123", "0af7651916cd43dd8448eb211c80319c", "trace:span/1+2=3.4_5"):
            response = post_image(client, secured.url, GOOD, headers={**auth, "X-Request-ID": given})
            assert response.status_code == 200 and response.headers["x-request-id"] == given
        for given in ("a] b", "id with spaces", "a" * 129, b"caf\xe9", "x[ERROR]"):
            response = post_image(client, secured.url, GOOD, headers={**auth, "X-Request-ID": given})
            assert response.status_code == 200
            assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"]), (given, response.headers)
    assert wait_until(lambda: "X-Request-ID replaced" in secured.log(), 2.0)
    assert "[a] b]" not in secured.log()


def test_log_lines_cannot_be_forged_through_the_path(secured: ServerProcess) -> None:
    """The text log escapes control characters: a percent-encoded newline or ESC in the path stays inside
    its own line."""
    forged = "2030-01-01 00:00:00,000 ERROR server [admin] forged"
    path = "/nothing%0a" + forged.replace(" ", "%20") + "%1b[31m%0d"
    with connect(secured.url) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        assert read_response(sock).status_code == 404
    assert wait_until(lambda: "forged" in secured.log(), 2.0)
    log = secured.log()
    assert not any(line.startswith(forged) for line in log.splitlines()), log[-2000:]
    assert "\x1b" not in log and "\r" not in log
    assert "/nothing\\x0a2030-01-01" in log


def test_trailing_slash_is_not_redirected(secured: ServerProcess) -> None:
    """``POST /segment/`` is a 404, not a redirect built from the client's Host header."""
    with connect(secured.url) as sock:
        sock.sendall(b"POST /segment/ HTTP/1.1\r\nHost: evil.example.test\r\nContent-Length: 0\r\n\r\n")
        response = read_response(sock)
    assert response.status_code == 404 and "location" not in response.headers
    assert "evil" not in response.body.decode()


def test_no_page_loads_third_party_scripts(tiny_server: ServerProcess) -> None:
    """The API docs pages (Swagger UI and ReDoc load their scripts from a public CDN) are off by default;
    the web page, on the origin that keeps the API key, loads only its own files."""
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        assert httpx.get(tiny_server.url + path).status_code == 404, path
    assert httpx.get(tiny_server.url + "/openapi.json").status_code == 200
    page = httpx.get(tiny_server.url + "/").text
    sources = re.findall(r"""(?:src|href)=["']([^"']+)""", page)
    assert sources and all(s.startswith(("/static/", "data:")) for s in sources), sources


def test_docs_pages_are_served_when_turned_on() -> None:
    client = TestClient(create_app(Settings(model="unused.onnx", docs_pages=True)))  # no lifespan, no model
    assert client.get("/docs").status_code == 200
    assert client.get("/redoc").status_code == 200


def _python_files(*folders: str) -> Iterator[Path]:
    for folder in folders:
        yield from (REPO_ROOT / folder).rglob("*.py")


def test_checkpoints_never_unpickle() -> None:
    """Every torch.load passes weights_only=True; nothing calls pickle.load(s) in the product code."""
    for path in _python_files("common", "training", "export", "server", "bench"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
            if (owner, node.func.attr) == ("torch", "load"):
                flags = {k.arg: k.value for k in node.keywords}
                assert isinstance(flags.get("weights_only"), ast.Constant), where
                assert flags["weights_only"].value is True, where  # type: ignore[attr-defined]
            assert (owner, node.func.attr) not in {("pickle", "load"), ("pickle", "loads")}, where


def test_server_never_imports_torch() -> None:
    for path in _python_files("server"):
        assert not re.search(r"^\s*(import torch|from torch)", path.read_text(), re.M), path


def test_containers_run_as_non_root() -> None:
    dockerfiles = sorted((REPO_ROOT / "docker").glob("Dockerfile*"))
    assert dockerfiles, "docker/ has no Dockerfile"
    for dockerfile in dockerfiles:
        users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), re.M)
        assert users, f"{dockerfile.name} has no USER line"
        assert users[-1].split(":")[0] not in ("root", "0"), f"{dockerfile.name} runs as {users[-1]}"
