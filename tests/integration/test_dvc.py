"""The project's dvc.yaml under real DVC, in a temporary git repository."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.test_workspace import CONFIG
from tests.servers import missing, s3_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(repo: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHURNOPS_")}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    done = subprocess.run(list(args), cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{output[-3000:]}"
    return output


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repository holding the project's dvc.yaml and params.yaml, a small shop's
    churnops.yaml, and that shop's sources; `dvc repro` run once."""
    if shutil.which("git") is None:
        missing("git")
    folder = tmp_path_factory.mktemp("dvc")
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (folder / "params.yaml").write_text(yaml.safe_dump({**params, "date": "2025-01-01"}))  # the small shop's next day
    config = {**CONFIG, "workspace": ".churnops", "features": {"cadence_days": 7}}  # dvc.yaml reads `features`
    (folder / "churnops.yaml").write_text(yaml.safe_dump(config))
    (folder / ".gitignore").write_text(".churnops/\n")  # as in the project: DVC tracks the workspace's data
    _run(folder, "git", "init", "-q")
    _run(folder, "dvc", "init", "-q")
    _run(folder, "churnops", "simulate", "--until", "2024-12-31")
    assert _ran(_run(folder, "dvc", "repro")) == ["ingest", "features", "train"]
    return folder


def test_a_second_repro_with_nothing_changed_runs_no_stage(repo: Path) -> None:
    """Nothing changed: no stage runs; files that change nothing (a stray file in the sources) rerun
    ingest, which leaves the lake byte for byte as it was, so nothing after it runs."""
    assert _ran(_run(repo, "dvc", "repro")) == []
    lake = _tree(repo / ".churnops" / "lake")
    (repo / ".churnops" / "sources" / "orders" / "README.txt").write_text("not an order file\n")
    assert _ran(_run(repo, "dvc", "repro")) == ["ingest"]
    assert _tree(repo / ".churnops" / "lake") == lake
    (repo / ".churnops" / "sources" / "orders" / "README.txt").unlink()
    _run(repo, "dvc", "repro")


def test_changing_one_source_partition_reruns_exactly_the_stages_downstream(repo: Path) -> None:
    """A corrected order in one day's file reruns ingest, features and train; a changed training
    setting reruns train alone."""
    day_file = repo / ".churnops" / "sources" / "orders" / "orders-2024-06-03.csv"
    header, first, *rest = day_file.read_text().splitlines()
    fields = first.split(",")
    fields[3] = f"{float(fields[3]) + 100:.2f}"  # the amount of the day's first order
    day_file.write_text("\n".join([header, ",".join(fields), *rest]) + "\n")
    lake_before = _tree(repo / ".churnops" / "lake")
    assert _ran(_run(repo, "dvc", "repro")) == ["ingest", "features", "train"]
    assert _tree(repo / ".churnops" / "lake") != lake_before

    config = yaml.safe_load((repo / "churnops.yaml").read_text())
    config["training"]["candidates"]["lightgbm"]["params"]["n_estimators"] = 31
    (repo / "churnops.yaml").write_text(yaml.safe_dump(config))
    assert _ran(_run(repo, "dvc", "repro")) == ["train"]
    assert _ran(_run(repo, "dvc", "repro")) == []


def test_push_and_pull_move_the_lake_and_the_feature_table_through_a_remote(repo: Path, tmp_path: Path) -> None:
    """`dvc push` to a local remote, the data deleted, `dvc pull` restores it byte for byte."""
    workspace = repo / ".churnops"
    before = {name: _tree(workspace / name) for name in ("lake", "features")}
    _run(repo, "dvc", "remote", "add", "-f", "-d", "store", str(tmp_path / "remote"))
    _run(repo, "dvc", "push")
    for name in before:
        shutil.rmtree(workspace / name)
    _run(repo, "dvc", "pull")
    assert {name: _tree(workspace / name) for name in before} == before
    assert "up to date" in _run(repo, "dvc", "status")


def test_push_and_pull_through_an_s3_compatible_remote(repo: Path) -> None:
    """The same round trip through an S3 remote (DVC's S3 plugin against a real S3-compatible
    server on loopback): the objects land in the bucket, and `dvc pull` restores the data."""
    import boto3

    workspace = repo / ".churnops"
    before = {name: _tree(workspace / name) for name in ("lake", "features")}
    with s3_server() as options:
        endpoint = options["client_kwargs"]["endpoint_url"]
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="dvc-store")
        _run(repo, "dvc", "remote", "add", "-f", "-d", "s3store", "s3://dvc-store/churnops")
        _run(repo, "dvc", "remote", "modify", "s3store", "endpointurl", endpoint)
        try:
            _run(repo, "dvc", "push", "-r", "s3store")
            listed = s3.list_objects_v2(Bucket="dvc-store", Prefix="churnops/")
            assert listed.get("KeyCount", 0) > 0, "dvc push left nothing in the bucket"
            for name in before:
                shutil.rmtree(workspace / name)
            shutil.rmtree(repo / ".dvc" / "cache")  # nothing to restore from but the bucket
            _run(repo, "dvc", "pull", "-r", "s3store")
            assert {name: _tree(workspace / name) for name in before} == before
        finally:
            _run(repo, "dvc", "remote", "remove", "s3store")
