"""Static checks of the deployment files: hadolint, `docker compose config` per profile, k8s schemas."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from server.settings import Settings

from .helpers import COMPOSE_FILE, DOCKERFILES, K8S_DIR, REPO_ROOT, TEST_OVERRIDE, clean_env, run, tool

# Settings the compose file sets itself rather than passing through from the host environment.
COMPOSE_SET = {"FCN_HOST", "FCN_PORT", "FCN_MODEL"}
SETTING_VARS = {f"FCN_{name.upper()}" for name in Settings.model_fields}


def compose_config(*args: str, **env: str) -> dict:
    """`docker compose [args] config --format json` of the repo's compose file, as a dict."""
    cmd = [tool("docker-compose"), "-f", str(COMPOSE_FILE), *args, "config", "--format", "json"]
    result = run(cmd, cwd=REPO_ROOT, env=clean_env(**env))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    result = run([tool("hadolint"), str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_shape(dockerfile):
    """Base image is a build ARG, multi-stage, non-root numeric user, health check on /health/ready."""
    text = dockerfile.read_text()
    assert re.search(r"^ARG BASE_IMAGE=\S+", text, re.M)
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(froms) >= 2 and all(f == "${BASE_IMAGE}" for f in froms)
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*docker/healthcheck.py", text, re.M)
    assert "/health/ready" in (REPO_ROOT / "docker" / "healthcheck.py").read_text()
    final = text[text.rindex("\nFROM ") :]
    assert "pip install" not in final and "apt-get" not in final, "installs belong in the deps stage"
    assert "COPY --from=deps /opt/venv /opt/venv" in final
    # dependency layers before code layers
    assert final.index("COPY --from=deps") < final.index("COPY server/")


PROJECT_PACKAGES = ("common", "engine", "export", "server", "training")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_copy_every_package_the_server_imports(dockerfile):
    """Each project package `server/` imports (at any depth of the call, lazily or not) is copied into the
    image and let through .dockerignore: the CPU image once lacked `engine/` and crashed at start-up."""
    imports = re.compile(rf"^\s*(?:from|import)\s+({'|'.join(PROJECT_PACKAGES)})\b", re.M)
    needed = {m for path in (REPO_ROOT / "server").rglob("*.py") for m in imports.findall(path.read_text())}
    assert "common" in needed and "engine" in needed  # the scan works
    copied = set(re.findall(r"^COPY (\w+)/ \1/$", dockerfile.read_text(), re.M))
    allowed = {
        line[1:].rstrip("/") for line in (REPO_ROOT / ".dockerignore").read_text().split() if line[0] == "!"
    }
    assert needed <= copied, f"{dockerfile.name} does not copy {sorted(needed - copied)}"
    assert needed <= allowed, f".dockerignore keeps {sorted(needed - allowed)} out of the build context"


def test_gpu_image_replaces_onnxruntime():
    """The GPU image drops exactly the `onnxruntime==` pin of server.txt (onnxruntime-gpu replaces it)."""
    pins = (REPO_ROOT / "requirements" / "server.txt").read_text().splitlines()
    assert sum(line.startswith("onnxruntime==") for line in pins) == 1
    gpu = (REPO_ROOT / "docker" / "requirements-gpu.txt").read_text()
    assert re.search(r"^onnxruntime-gpu\S*==", gpu, re.M)
    assert "torch" not in gpu


@pytest.mark.parametrize("profile", [None, "cpu", "gpu"], ids=["default", "cpu", "gpu"])
def test_compose_config_quiet(profile):
    args = ["--profile", profile] if profile else []
    result = run(
        [tool("docker-compose"), "-f", str(COMPOSE_FILE), *args, "config", "--quiet"],
        cwd=REPO_ROOT,
        env=clean_env(),
    )
    assert result.returncode == 0, result.stderr


def test_default_profile_is_gpu_with_engine_first():
    services = compose_config()["services"]
    assert set(services) == {"engine", "server-gpu"}
    for name in services:
        assert any(
            d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in gpu_devices(services[name])
        )
    server = services["server-gpu"]
    assert server["depends_on"]["engine"]["condition"] == "service_completed_successfully"
    assert server["environment"]["FCN_MODEL"] == services["engine"]["environment"]["FCN_MODEL"]
    assert server["environment"]["FCN_MODEL"].startswith("/engines/")
    mounts = {v["target"]: v for v in server["volumes"]}
    assert mounts["/models"]["read_only"] and mounts["/engines"]["type"] == "volume"
    builder_mounts = {v["target"]: v for v in services["engine"]["volumes"]}
    assert builder_mounts["/models"]["read_only"] and not builder_mounts["/engines"].get("read_only")
    assert mounts["/engines"]["source"] == builder_mounts["/engines"]["source"]
    assert server["ports"][0]["target"] == 8000


def test_cpu_profile_has_no_gpu_reservation():
    services = compose_config("--profile", "cpu")["services"]
    assert set(services) == {"server-cpu"}
    cpu = services["server-cpu"]
    assert gpu_devices(cpu) == []
    assert cpu["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert {v["target"]: v["read_only"] for v in cpu["volumes"]} == {"/models": True}


def test_every_setting_reaches_the_containers():
    """Each FCN_* setting is passed through (or set) by compose and documented in .env.example."""
    config = compose_config("--profile", "cpu", "--profile", "gpu")
    for name in ("server-cpu", "server-gpu"):
        missing = SETTING_VARS - set(config["services"][name]["environment"])
        assert not missing, f"{name} does not pass {sorted(missing)}: add them to docker-compose.yml"
    example = (REPO_ROOT / ".env.example").read_text()
    compose_vars = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^#?\s*(\w+)=", example, re.M))
    expected = (SETTING_VARS - COMPOSE_SET) | compose_vars
    assert expected <= documented, f"document {sorted(expected - documented)} in .env.example"


def test_passthrough_uses_the_host_value():
    """An FCN_* variable in the caller's environment reaches the service; an unset one stays unset."""
    env = compose_config("--profile", "cpu", FCN_MAX_BATCH_SIZE="3")["services"]["server-cpu"]["environment"]
    assert env["FCN_MAX_BATCH_SIZE"] == "3"
    assert env["FCN_QUEUE_SIZE"] is None
    assert set(env) == SETTING_VARS
    assert [env[k] for k in sorted(COMPOSE_SET)] == ["0.0.0.0", "/models/demo/fcn8s-demo.onnx", "8000"]


def test_test_override_uses_host_network():
    config = compose_config(
        "-f", str(TEST_OVERRIDE), "--profile", "cpu", FCN_CPU_IMAGE="x:y", FCN_TEST_PORT="18000"
    )
    cpu = config["services"]["server-cpu"]
    assert cpu["network_mode"] == "host" and not cpu.get("ports")
    assert cpu["environment"]["FCN_PORT"] == "18000" and cpu["environment"]["FCN_HOST"] == "127.0.0.1"


def k8s_docs() -> dict[str, dict]:
    docs = [d for path in sorted(K8S_DIR.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    return {d["kind"]: d for d in docs if not (d["kind"] == "ConfigMap" and "rules" in d["metadata"]["name"])}


def test_k8s_manifests_validate_against_schemas():
    files = sorted(str(p) for p in K8S_DIR.glob("*.yaml"))
    assert files
    result = run([tool("kubernetes-validate"), "--strict", "--quiet", *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_k8s_gpu_probes_and_hpa_metric():
    kinds = k8s_docs()
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert server["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert pod["securityContext"]["runAsUser"] == 10001 and pod["securityContext"]["runAsNonRoot"]
    hpa = kinds["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    from server.metrics import Metrics

    exported = {m.name for m in Metrics().registry.collect()}
    assert metric in exported
    unknown = set(kinds["ConfigMap"]["data"]) - SETTING_VARS
    assert not unknown, unknown


RAYSERVICE = K8S_DIR / "ray" / "rayservice.yaml"
SERVE_CONFIG = REPO_ROOT / "deploy" / "ray" / "serve.yaml"


def rayservice() -> dict:
    return yaml.safe_load(RAYSERVICE.read_text())


def test_rayservice_matches_the_kuberay_v1_structure():
    """A structural check (tests/deploy/rayservice-v1.schema.json, from KubeRay's v1 types; the operator's
    CRD is not vendored): known keys only, right types, rayStartParams all strings."""
    import jsonschema

    schema = json.loads((REPO_ROOT / "tests" / "deploy" / "rayservice-v1.schema.json").read_text())
    jsonschema.validate(rayservice(), schema)
    broken = rayservice()
    broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 4  # a typo must fail
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_rayservice_pod_templates_validate_against_kubernetes_schemas(tmp_path):
    """Head and worker pod templates, as core/v1 PodTemplates, pass kubernetes-validate --strict."""
    cluster = rayservice()["spec"]["rayClusterConfig"]
    groups = {"head": cluster["headGroupSpec"]} | {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    files = []
    for name, group in groups.items():
        doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}}
        doc["template"] = group["template"]
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
    result = run([tool("kubernetes-validate"), "--strict", "--quiet", *map(str, files)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_rayservice_serves_the_shipped_serve_config():
    """serveConfigV2 is deploy/ray/serve.yaml's applications, and both pass Ray Serve's own config schema
    (the one `serve deploy` checks); the Ray version is the one requirements/ray.txt pins."""
    from ray.serve.schema import ServeDeploySchema

    spec = rayservice()["spec"]
    embedded = yaml.safe_load(spec["serveConfigV2"])
    shipped = yaml.safe_load(SERVE_CONFIG.read_text())
    assert embedded["applications"] == shipped["applications"]
    ServeDeploySchema.model_validate(embedded)
    ServeDeploySchema.model_validate(shipped)
    pin = re.search(r"^ray\[serve\]==(\S+)", (REPO_ROOT / "requirements" / "ray.txt").read_text(), re.M)
    assert pin and spec["rayClusterConfig"]["rayVersion"] == pin.group(1)


def test_rayservice_pods_import_the_application_and_mount_the_models():
    cluster = rayservice()["spec"]["rayClusterConfig"]
    pvc = yaml.safe_load((K8S_DIR / "pvc.yaml").read_text())["metadata"]["name"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no model replica on the head
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["PYTHONPATH"] == "/app" and env["FCN_MODEL"].startswith("/models/")
        assert {m["mountPath"] for m in container["volumeMounts"]} == {"/models"}
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
        assert 8000 in {p["containerPort"] for p in container["ports"]}
