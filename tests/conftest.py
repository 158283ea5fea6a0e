"""Shared fixtures: a small simulated shop in a temp workspace, and real servers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from churnops.settings import Settings, load_settings
from tests import servers

# The longest modules, longest first (minutes on two workers in a clean-clone run). `make test`
# hands modules to its two workers in collection order (`--no-loadscope-reorder`; xdist's own
# order puts the modules with the most tests first, which left the longest single-test modules
# for the end, one worker busy with them while the other waited); the short rest fills in last.
LONGEST_FIRST = (
    "tests/orchestration/test_airflow_dag.py",
    "tests/integration/test_dvc.py",
    "tests/integration/test_scaleout.py",
    "tests/serving/test_robustness.py",
    "tests/serving/test_server.py",
    "tests/integration/test_cli.py",
    "tests/features/test_feature_store.py",
    "tests/integration/test_demo.py",
    "tests/serving/test_deploy.py",
    "tests/features/test_spark_engine.py",
    "tests/training/test_training_pipeline.py",
    "tests/integration/test_workspace.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the longest modules first (see LONGEST_FIRST); a module's tests stay together and in order."""
    root = config.rootpath
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}

    def place(item: pytest.Item) -> int:
        try:
            return rank.get(item.path.relative_to(root).as_posix(), len(rank))
        except ValueError:
            return len(rank)

    items.sort(key=place)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CHURNOPS_* variable from the caller's shell leaks into a test, nor the tracking URI an
    earlier test pointed MLflow at: MLflow exports it to the environment, where every process a
    test starts would inherit it, while a user's command starts without it."""
    import os

    for key in list(os.environ):
        if key.startswith("CHURNOPS_") or key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a small shop (300 customers, four months) in a temp workspace."""
    return load_settings(
        None,
        workspace=str(tmp_path / "ws"),
        simulation={"customers": 300, "start": "2024-01-01", "end": "2024-04-30", "products": 200, "seed": 3},
    )


@pytest.fixture
def simulated(settings: Settings) -> Settings:
    """The small shop published into its sources up to its last day."""
    from churnops.pipelines.simulate import simulate

    simulate(settings, date(2024, 4, 30))
    return settings


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with servers.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with servers.postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_options() -> Iterator[dict[str, object]]:
    with servers.s3_server() as options:
        yield options
