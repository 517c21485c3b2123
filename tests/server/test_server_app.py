"""In-process tests of the app factory: API key, CORS, readiness before warm-up, format negotiation."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from common.metadata import Normalization
from server.app import create_app
from server.negotiation import choose_format
from server.routes.web import STATIC_DIR
from server.settings import Settings
from tests.polling import wait_until
from tests.server.conftest import png_bytes, random_image
from tests.server.server_fakes import FakeBackend


def _client(**settings: object) -> Iterator[TestClient]:
    app = create_app(Settings(max_side=128, bucket=64, **settings), backend_loader=lambda _: FakeBackend())
    with TestClient(app) as client:
        assert wait_until(lambda: client.get("/health/ready").status_code == 200, 10), "never ready"
        yield client


@pytest.fixture
def keyed() -> Iterator[TestClient]:
    yield from _client(api_key="s3cret", cors_origins="https://app.example")


def test_api_key_guards_segment_and_model_but_not_health(keyed: TestClient) -> None:
    body, headers = png_bytes(random_image(16, 16)), {"content-type": "image/png"}
    missing = keyed.post("/segment", content=body, headers=headers)
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["detail"]
    assert keyed.post("/segment", content=body, headers={**headers, "X-API-Key": "wrong"}).status_code == 401
    assert keyed.post("/segment", content=body, headers={**headers, "X-API-Key": "s3cret"}).status_code == 200
    assert keyed.get("/v1/model").status_code == 401
    assert keyed.get("/health/live").status_code == 200 and keyed.get("/health/ready").status_code == 200
    assert keyed.get("/metrics").status_code == 200


def test_cors_only_for_configured_origins(keyed: TestClient) -> None:
    allowed = keyed.get("/health/live", headers={"Origin": "https://app.example"})
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-batch-size" in allowed.headers["access-control-expose-headers"].lower()
    other = keyed.get("/health/live", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    for client in _client():
        plain = client.get("/health/live", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in plain.headers


def test_metrics_key_when_configured() -> None:
    for client in _client(api_key="k", metrics_need_key=True):
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "k"}).status_code == 200


@pytest.mark.parametrize(
    ("query", "accept", "expected"),
    [
        (None, None, "png"),
        (None, "application/json", "json"),
        (None, "image/png", "png"),
        (None, "image/png;q=0.5, application/json", "json"),
        (None, "application/json;q=0.2, image/png", "png"),
        (None, "text/html, */*", "png"),
        ("png", "application/json", "png"),
        ("json", "image/png", "json"),
    ],
)
def test_choose_format(query: str | None, accept: str | None, expected: str) -> None:
    assert choose_format(query, accept) == expected  # type: ignore[arg-type]


def test_pad_colour_is_the_normalisation_mean() -> None:
    assert Normalization().neutral_rgb() == (124, 116, 104)
    assert Normalization.caffe().neutral_rgb() == (123, 117, 104)


def test_web_page_is_served_from_server_static() -> None:
    for client in _client():
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.text == (STATIC_DIR / "index.html").read_text()
        scripts = sorted(p.name for p in STATIC_DIR.glob("*.js"))
        assert scripts and all(client.get(f"/static/{name}").status_code == 200 for name in scripts)


def test_flags_mirror_settings_and_override_environment(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from server.__main__ import build_parser, main, parse_settings

    flags = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert flags == set(Settings.model_fields)
    monkeypatch.setenv("FCN_MAX_BATCH_SIZE", "5")
    monkeypatch.setenv("FCN_PORT", "9001")
    monkeypatch.setenv("FCN_QUEUE_FULL_STATUS", "503")
    monkeypatch.setenv("FCN_CORS_ORIGINS", "https://a.example, https://b.example")
    settings = parse_settings(["--max-batch-size", "3", "--warmup", "false"])
    assert (settings.max_batch_size, settings.port, settings.warmup) == (3, 9001, False)
    assert settings.queue_full_status == 503
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert main(["--max-batch-size", "0"]) == 2
    assert "max_batch_size" in capsys.readouterr().err


def test_queue_full_status_503_by_configuration() -> None:
    import concurrent.futures

    from tests.server.server_fakes import SLOW

    slow = random_image(32, 32)
    slow[0, 0] = SLOW
    headers = {"content-type": "image/png"}
    for client in _client(queue_size=1, max_batch_size=1, queue_full_status=503, retry_after_s=3):
        batcher = client.app.state.service.registry.get().batcher  # type: ignore[attr-defined]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(client.post, "/segment", content=png_bytes(slow), headers=headers)
            assert wait_until(lambda b=batcher: b.busy_since is not None, 10), "the slow batch never ran"
            queued = pool.submit(
                client.post, "/segment", content=png_bytes(random_image(32, 32)), headers=headers
            )
            assert wait_until(lambda b=batcher: b.depth == 1, 10), "the second image never queued"
            rejected = client.post("/segment", content=png_bytes(random_image(32, 32)), headers=headers)
            assert rejected.status_code == 503 and rejected.headers["retry-after"] == "3"
            assert "queue full" in rejected.json()["detail"]
            assert running.result().status_code == 200 and queued.result().status_code == 200
