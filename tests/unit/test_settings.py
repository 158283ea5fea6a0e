"""Settings: YAML plus environment, validated with messages that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from churnops.settings import ConfigError, FileSource, SqlSource, load_settings


def test_defaults_need_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.workspace == Path(".churnops")
    assert s.lake_uri == ".churnops/lake"
    assert [src.table for src in s.enabled_sources()] == ["customers", "products", "orders"]
    assert isinstance(s.sources[0], SqlSource)
    assert s.sources[0].url == "sqlite:///.churnops/sources/shop.db"


def test_yaml_file_and_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment wins over the file; nested keys are joined with '__'."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("workspace: /tmp/x\ningest:\n  max_bad_share: 0.02\n  max_volume_drop: 0.4\n")
    monkeypatch.setenv("CHURNOPS_INGEST__MAX_BAD_SHARE", "0.05")
    s = load_settings(cfg)
    assert s.ingest.max_bad_share == 0.05
    assert s.ingest.max_volume_drop == 0.4
    assert s.lake_uri == "/tmp/x/lake"


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("simulation:\n  customers: 123\n")
    monkeypatch.setenv("CHURNOPS_CONFIG", str(cfg))
    assert load_settings().simulation.customers == 123


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ingest:\n  max_bad_sharee: 0.1\n", r"ingest\.max_bad_sharee: unknown key"),
        ("ingest:\n  max_bad_share: lots\n", r"ingest\.max_bad_share: .*number"),
        ("simulation:\n  customers: -5\n", r"simulation\.customers: .*greater than 0"),
        ("sources:\n  - {kind: ftp, name: x, table: orders}\n", r"sources\.0"),
        (
            "sources:\n  - {kind: sql, name: a, table: orders, url: 'sqlite://'}\n",
            "exactly one of source_table or query",
        ),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("a: [unclosed\n", "not valid YAML"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(cfg)
    assert "bad.yaml" in str(info.value)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_duplicate_source_names_are_refused() -> None:
    src = {"kind": "file", "name": "a", "table": "orders", "path": "x.csv"}
    with pytest.raises(ConfigError, match="repeated: a"):
        load_settings(None, sources=[src, src])


def test_workspace_placeholder_expands_in_source_paths(tmp_path: Path) -> None:
    s = load_settings(
        None,
        workspace=str(tmp_path),
        sources=[{"kind": "file", "name": "f", "table": "orders", "path": "{workspace}/in/*.csv"}],
    )
    source = s.source("f")
    assert isinstance(source, FileSource)
    assert source.path == f"{tmp_path}/in/*.csv"
    with pytest.raises(ConfigError, match="no source named 'g'"):
        s.source("g")


def test_the_example_config_file_loads_and_holds_the_defaults(tmp_path: Path) -> None:
    """The shipped example stays valid as settings evolve, and copying it changes nothing: its
    values are the defaults (its sources are the simulated shop's, spelled out)."""
    example = Path(__file__).parents[2] / "churnops.example.yaml"
    s = load_settings(example)
    assert [src.name for src in s.sources] == ["shop_customers", "catalog", "order_files"]
    copied = load_settings(example, workspace=str(tmp_path)).model_dump(mode="json", exclude={"sources"})
    assert copied == load_settings(None, workspace=str(tmp_path)).model_dump(mode="json", exclude={"sources"})


def test_documented_variables_that_are_not_settings_are_not_read_as_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """CHURNOPS_ACTOR names who moves an alias; it is not a settings key."""
    monkeypatch.setenv("CHURNOPS_ACTOR", "alice")
    assert load_settings().mlflow.model_name == "churn_predictor"


@pytest.mark.parametrize(
    ("variable", "value", "read"),
    [
        ("CHURNOPS_MLFLOW__MODEL_NAME", "no", lambda s: s.mlflow.model_name == "no"),
        ("CHURNOPS_MLFLOW__EXPERIMENT", "2024", lambda s: s.mlflow.experiment == "2024"),
        ("CHURNOPS_TRAINING__MAX_ROWS", "", lambda s: s.training.max_rows is None),
        ("CHURNOPS_TRAINING__MAX_ROWS", "5000", lambda s: s.training.max_rows == 5000),
        ("CHURNOPS_FEAST__TTL_DAYS", "14", lambda s: s.feast.ttl_days == 14),
        ("CHURNOPS_FEATURES__WINDOWS", "[7, 14]", lambda s: s.features.windows == [7, 14, 30]),
        ("CHURNOPS_SIMULATION__START", "2024-02-01", lambda s: str(s.simulation.start) == "2024-02-01"),
    ],
)
def test_environment_values_take_the_setting_s_type(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, read: object
) -> None:
    monkeypatch.setenv(variable, value)
    assert read(load_settings())  # type: ignore[operator]


def test_an_empty_value_where_null_is_not_allowed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURNOPS_MLFLOW__EXPERIMENT", "")
    with pytest.raises(ConfigError, match=r"mlflow\.experiment"):
        load_settings()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"num_leavs": 31}, "params.num_leavs: not a lightgbm parameter; did you mean 'num_leaves'?"),
        ({"n_jobs": 4}, "params.n_jobs: set by churnops"),
        ({"random_state": 1}, "params.random_state: set by churnops"),
    ],
)
def test_a_typo_in_candidate_params_fails_when_settings_load(params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, training={"candidates": {"fast": {"algorithm": "lightgbm", "params": params}}})
    assert "training.candidates.fast" in str(info.value)
    assert message in str(info.value)


def test_the_known_parameters_are_the_installed_estimators_own() -> None:
    """The list checked at load time stays equal to what the libraries accept."""
    import lightgbm
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression

    from churnops.settings import ALGORITHM_PARAMS, MANAGED_PARAMS

    estimators = {
        "lightgbm": lightgbm.LGBMClassifier(),
        "logistic_regression": LogisticRegression(),
        "hist_gradient_boosting": HistGradientBoostingClassifier(),
        "random_forest": RandomForestClassifier(),
        "gradient_boosting": GradientBoostingClassifier(),
    }
    for algorithm, estimator in estimators.items():
        assert ALGORITHM_PARAMS[algorithm] == set(estimator.get_params()) - MANAGED_PARAMS, algorithm


def test_a_workspace_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ws"
    path.write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        load_settings(None, workspace=str(path))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"csv_delimiter": ";;"}, "give one character, or `whitespace`"),
        ({"derive_order_id": True, "table": "customers"}, "derive_order_id applies to order sources only"),
        ({"derive_order_id": True, "columns": {"order_id": "ref"}}, "exclude each other"),
    ],
)
def test_file_source_options_are_checked(source: dict[str, object], message: str) -> None:
    body = {"kind": "file", "name": "f", "table": "orders", "path": "x/*.txt", **source}
    with pytest.raises(ConfigError, match=message):
        load_settings(None, sources=[body])
