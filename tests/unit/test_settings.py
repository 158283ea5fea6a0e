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


def test_the_example_config_file_loads() -> None:
    """The shipped example stays valid as settings evolve."""
    example = Path(__file__).parents[2] / "churnops.example.yaml"
    s = load_settings(example)
    assert [src.name for src in s.sources] == ["shop_customers", "catalog", "order_files"]
    assert s.simulation.scenarios[0].kind == "price_shift"
