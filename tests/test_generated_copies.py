"""Copies of facts that live in code are generated, and a copy that drifts fails here."""

from __future__ import annotations

from server import settings_docs
from server.settings import GROUPS, Settings


def test_every_setting_is_documented_in_exactly_one_group() -> None:
    listed = [name for names in GROUPS.values() for name in names]
    assert sorted(listed) == sorted(Settings.model_fields) and len(listed) == len(set(listed))


def test_generated_copies_match_the_settings() -> None:
    assert settings_docs.stale() == [], "run: python -m server.settings_docs"


def test_a_changed_default_shows_up_as_a_stale_copy(tmp_path, monkeypatch) -> None:
    for path, text in settings_docs.outputs().items():
        target = tmp_path / path.relative_to(settings_docs.REPO_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    assert settings_docs.stale(tmp_path) == []
    configmap = tmp_path / "deploy" / "k8s" / "configmap.yaml"
    configmap.write_text(configmap.read_text().replace('FCN_MAX_DELAY_MS: "2"', 'FCN_MAX_DELAY_MS: "5"'))
    env_example = tmp_path / ".env.example"
    env_example.write_text(env_example.read_text().replace("# FCN_BUCKET=32", "# FCN_BUCKET=64"))
    assert sorted(settings_docs.stale(tmp_path)) == sorted([configmap, env_example])


def test_the_deployment_defaults_documented_are_compose_s_own() -> None:
    """``.env.example`` and docs/configuration.md list the compose variables' defaults (``DEPLOYMENT``); they
    must be the ones docker-compose.yml and .env really use."""
    compose = (settings_docs.REPO_ROOT / "docker-compose.yml").read_text()
    dotenv = (settings_docs.REPO_ROOT / ".env").read_text()
    for variable, default, _ in settings_docs.DEPLOYMENT:
        if variable == "COMPOSE_PROFILES":
            assert f"{variable}={default}" in dotenv.splitlines()
        elif default:
            assert f"${{{variable}:-{default}}}" in compose, (variable, default)
        else:
            assert f"{variable}:" in compose, variable
