"""The one typed settings object, loaded from YAML plus environment variables.

`load_settings()` builds it; nothing here runs at import time. Keys are documented in
README.md ("Configuration"); a wrong key or type is reported with its dotted path and the file.
"""

from __future__ import annotations

import difflib
import os
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from churnops.workspace import Workspace

TableName = Literal["orders", "customers", "products"]
FileFormat = Literal["csv", "parquet", "jsonl"]

DEFAULT_CONFIG_FILE = "churnops.yaml"
WORKSPACE_PLACEHOLDER = "{workspace}"

# Documented CHURNOPS_* variables that are not settings (README, "Environment variables").
NON_SETTING_VARIABLES = frozenset({"CHURNOPS_CONFIG", "CHURNOPS_ACTOR"})


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DriftScenario(_Strict):
    """A named change injected into the simulated business from `start` on."""

    kind: Literal["price_shift", "new_segment", "concept_drift"]
    start: date
    magnitude: float = Field(
        0.3,
        description="price_shift: relative price change; new_segment: share of new signups in "
        "the segment; concept_drift: strength of the new churn driver.",
    )


class SimulationSettings(_Strict):
    """The simulated business written by `churnops simulate`."""

    seed: int = 7
    customers: int = Field(20_000, gt=0)
    start: date = date(2024, 1, 1)
    end: date = date(2025, 12, 31)
    categories: int = Field(50, gt=0)
    products: int = Field(2_000, gt=0)
    orders_per_customer: float = Field(10.0, gt=0, description="Target mean orders per customer.")
    orders_file_format: FileFormat = "csv"
    scenarios: list[DriftScenario] = Field(default_factory=list)

    @model_validator(mode="after")
    def _dates_in_order(self) -> SimulationSettings:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        return self


class _SourceBase(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    table: TableName
    columns: dict[str, str] = Field(
        default_factory=dict, description="Contract column -> the source's own column name."
    )
    date_formats: dict[str, str] = Field(
        default_factory=dict,
        description="Contract column -> strptime format, or 'epoch_s' / 'epoch_ms'. Default: ISO 8601.",
    )
    enabled: bool = True


class SqlSource(_SourceBase):
    """A table or query in any SQLAlchemy database."""

    kind: Literal["sql"]
    url: str
    source_table: str | None = None
    query: str | None = None
    watermark: str | None = Field(None, description="Source column for incremental reads.")
    chunk_size: int = Field(200_000, gt=0)

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSource:
        if (self.source_table is None) == (self.query is None):
            raise ValueError("give exactly one of source_table or query")
        return self


class FileSource(_SourceBase):
    """CSV, Parquet or JSONL files: a path or glob, local or s3://."""

    kind: Literal["file"]
    path: str
    format: FileFormat | None = Field(None, description="Default: from the file suffix.")
    mode: Literal["incremental", "snapshot"] = Field(
        "incremental",
        description="incremental: each file is ingested once; snapshot: every run reads all.",
    )
    csv_delimiter: str | None = Field(
        None,
        description="One character, or `whitespace`: runs of spaces or tabs (leading spaces ignored). "
        "Default: a tab for `.tsv` files, else a comma.",
    )
    csv_decimal: Literal[".", ","] = Field(
        ".",
        description="The decimal mark of numbers in CSV files. With `,` (as in 12,50) a number holding a "
        "`.` (a thousands separator) is unparseable, never read as another number.",
    )
    derive_order_id: bool = Field(
        False,
        description="Orders without an id: derive one from the file's path (relative to the source) and "
        "the row's position in it; stable across reruns and moves.",
    )
    storage_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("csv_delimiter")
    @classmethod
    def _one_character(cls, delimiter: str | None) -> str | None:
        if delimiter is not None and delimiter != "whitespace" and len(delimiter) != 1:
            raise ValueError("give one character, or `whitespace`")
        return delimiter

    @model_validator(mode="after")
    def _derived_ids_are_for_orders(self) -> FileSource:
        if self.derive_order_id and self.table != "orders":
            raise ValueError("derive_order_id applies to order sources only")
        if self.derive_order_id and "order_id" in self.columns:
            raise ValueError("derive_order_id and a mapped order_id column exclude each other")
        return self


class HttpSource(_SourceBase):
    """A paginated JSON API."""

    kind: Literal["http"]
    url: str
    items_field: str = "data"
    pagination: Literal["cursor", "page", "none"] = "cursor"
    next_cursor_field: str = "next_cursor"
    cursor_param: str = "cursor"
    page_param: str = "page"
    page_size_param: str = "limit"
    page_size: int = Field(1000, gt=0)
    watermark: str | None = Field(None, description="Item field used for incremental reads.")
    watermark_param: str = "since"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(10.0, gt=0)
    retries: int = Field(5, ge=0)
    backoff_s: float = Field(0.5, ge=0)


class StreamSource(_SourceBase):
    """A Redis stream read through a consumer group."""

    kind: Literal["stream"]
    url: str = "redis://127.0.0.1:6379/0"
    stream: str = "churnops:orders"
    group: str = "churnops-ingest"
    consumer: str = "ingest"
    batch_size: int = Field(10_000, gt=0)
    max_messages: int = Field(10_000_000, gt=0, description="Upper bound read in one run.")
    block_ms: int = Field(200, ge=0)


Source = Annotated[SqlSource | FileSource | HttpSource | StreamSource, Field(discriminator="kind")]


# How the simulated shop names order columns (contract name -> its name).
SIMULATOR_ORDER_COLUMNS = {
    "order_id": "order_ref",
    "customer_id": "customer",
    "order_date": "ordered_at",
    "total_amount": "amount",
    "product_id": "sku",
    "category": "category",
}


def default_sources() -> list[Source]:
    """The sources `churnops simulate` writes, in the simulator's own column names."""
    return [
        SqlSource(
            kind="sql",
            name="shop_customers",
            table="customers",
            url="sqlite:///{workspace}/sources/shop.db",
            source_table="customers",
            watermark="updated_at",
            columns={"customer_id": "id", "created_at": "signup_ts", "status": "account_status"},
        ),
        FileSource(
            kind="file",
            name="catalog",
            table="products",
            path="{workspace}/sources/products.csv",
            mode="snapshot",
            columns={"product_id": "sku", "category": "category_name"},
        ),
        FileSource(
            kind="file",
            name="order_files",
            table="orders",
            path="{workspace}/sources/orders/orders-*.csv",
            columns=dict(SIMULATOR_ORDER_COLUMNS),
        ),
    ]


class IngestSettings(_Strict):
    """Quality limits applied to every ingested batch."""

    max_bad_share: float = Field(0.01, ge=0, le=1)
    max_volume_drop: float | None = Field(0.5, ge=0, le=1)
    chunk_rows: int = Field(
        250_000, ge=1_000, description="Rows parsed and validated at a time; memory grows with it, not with the batch."
    )


class FeatureSettings(_Strict):
    """How customer features are computed."""

    engine: Literal["duckdb", "spark"] = "duckdb"
    windows: list[int] = Field(default_factory=lambda: [7, 30, 90], description="Trailing windows in days.")
    cadence_days: int = Field(7, gt=0, description="Days between history snapshots.")
    history_snapshots: int | None = Field(
        None, gt=0, description="At most this many history snapshots; default: back to the first order."
    )
    duckdb_threads: int | None = Field(None, gt=0)
    duckdb_memory_limit: str | None = None
    spark_master: str = "local[2]"

    @field_validator("windows")
    @classmethod
    def _positive_windows(cls, windows: list[int]) -> list[int]:
        if any(w <= 0 for w in windows):
            raise ValueError("windows must be positive numbers of days")
        return sorted(set(windows) | {30})


class FeastSettings(_Strict):
    """The Feast feature store the features are published to."""

    project: str = Field("churnops", pattern=r"^[A-Za-z0-9_]+$")
    ttl_days: int = Field(30, gt=0, description="A feature row older than this is not served.")
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection_string: str = "127.0.0.1:6379"
    registry: str | None = Field(
        None,
        description="Feast's registry: none keeps it in the workspace (feature_repo/registry.db); a SQLAlchemy URL "
        "(postgresql+psycopg://user@host/db) keeps it in that database, where servers with workspaces of their own "
        "(Kubernetes pods) find each version's features.",
    )

    @field_validator("registry")
    @classmethod
    def _registry_is_a_url(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError(
                f"{value!r} is not a database URL: leave feast.registry out to keep the registry in the workspace, "
                "or give a SQLAlchemy URL such as postgresql+psycopg://user@host:5432/feast"
            )
        return value or None


Algorithm = Literal["lightgbm", "logistic_regression", "hist_gradient_boosting", "random_forest", "gradient_boosting"]

# The hyperparameters each algorithm's estimator takes (its get_params() names; a test keeps
# these equal to the installed libraries), checked when settings load so that a typo fails at
# once instead of after minutes of training (LightGBM would ignore it with a warning).
ALGORITHM_PARAMS: dict[str, frozenset[str]] = {
    "lightgbm": frozenset(
        [
            "boosting_type",
            "class_weight",
            "colsample_bytree",
            "importance_type",
            "learning_rate",
            "max_depth",
            "min_child_samples",
            "min_child_weight",
            "min_split_gain",
            "n_estimators",
            "num_leaves",
            "objective",
            "reg_alpha",
            "reg_lambda",
            "subsample",
            "subsample_for_bin",
            "subsample_freq",
        ]
    ),
    "logistic_regression": frozenset(
        [
            "C",
            "class_weight",
            "dual",
            "fit_intercept",
            "intercept_scaling",
            "l1_ratio",
            "max_iter",
            "penalty",
            "solver",
            "tol",
            "warm_start",
        ]
    ),
    "hist_gradient_boosting": frozenset(
        [
            "categorical_features",
            "class_weight",
            "early_stopping",
            "interaction_cst",
            "l2_regularization",
            "learning_rate",
            "loss",
            "max_bins",
            "max_depth",
            "max_features",
            "max_iter",
            "max_leaf_nodes",
            "min_samples_leaf",
            "monotonic_cst",
            "n_iter_no_change",
            "scoring",
            "tol",
            "validation_fraction",
            "warm_start",
        ]
    ),
    "random_forest": frozenset(
        [
            "bootstrap",
            "ccp_alpha",
            "class_weight",
            "criterion",
            "max_depth",
            "max_features",
            "max_leaf_nodes",
            "max_samples",
            "min_impurity_decrease",
            "min_samples_leaf",
            "min_samples_split",
            "min_weight_fraction_leaf",
            "monotonic_cst",
            "n_estimators",
            "oob_score",
            "warm_start",
        ]
    ),
    "gradient_boosting": frozenset(
        [
            "ccp_alpha",
            "criterion",
            "init",
            "learning_rate",
            "loss",
            "max_depth",
            "max_features",
            "max_leaf_nodes",
            "min_impurity_decrease",
            "min_samples_leaf",
            "min_samples_split",
            "min_weight_fraction_leaf",
            "n_estimators",
            "n_iter_no_change",
            "subsample",
            "tol",
            "validation_fraction",
            "warm_start",
        ]
    ),
}
# Set by churnops itself: the seed, the threading and quiet output.
MANAGED_PARAMS = frozenset({"random_state", "n_jobs", "verbose"})


class CandidateSettings(_Strict):
    """One model to train: a known algorithm and its hyperparameters."""

    algorithm: Algorithm
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_params(self) -> CandidateSettings:
        known = ALGORITHM_PARAMS[self.algorithm]
        problems = []
        for key in sorted(self.params):
            if key in MANAGED_PARAMS:
                problems.append(f"params.{key}: set by churnops (training.seed and its threading), not here")
            elif key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"params.{key}: not a {self.algorithm} parameter{hint}")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def default_candidates() -> dict[str, CandidateSettings]:
    """LightGBM and a logistic regression: two kinds of model, at the ROC AUC of the design
    document's pair in a small part of its time (`bench/bench_training.py`)."""
    return {
        "lightgbm": CandidateSettings(
            algorithm="lightgbm",
            params={
                "n_estimators": 150,
                "learning_rate": 0.1,
                "num_leaves": 31,
                "min_child_samples": 50,
                "subsample": 0.8,
                "subsample_freq": 1,
                "colsample_bytree": 0.8,
            },
        ),
        "logistic_regression": CandidateSettings(
            algorithm="logistic_regression",
            params={"C": 1.0, "max_iter": 1000},
        ),
    }


DESIGN_CANDIDATES: dict[str, dict[str, Any]] = {
    "random_forest": {
        "algorithm": "random_forest",
        "params": {"n_estimators": 200, "max_depth": 10, "min_samples_split": 5},
    },
    "gradient_boosting": {
        "algorithm": "gradient_boosting",
        "params": {"n_estimators": 200, "max_depth": 5, "learning_rate": 0.1},
    },
}


class TrainingSettings(_Strict):
    """Labels, the training set, candidates and how the challenger is picked."""

    horizon_days: int = Field(90, gt=0, description="Churned = no order in [snapshot, snapshot + horizon).")
    split: Literal["time", "random"] = "time"
    holdout_snapshots: int = Field(4, gt=0, description="Time split: the latest complete snapshots held out.")
    validation_snapshots: int = Field(
        4, gt=0, description="Time split: snapshots before the holdout used to pick the threshold."
    )
    test_size: float = Field(0.2, gt=0, lt=1, description="Random split: holdout share (stratified).")
    cv_folds: int = Field(5, ge=2)
    seed: int = 42
    selection_metric: Literal["f1", "roc_auc", "pr_auc", "precision", "recall", "accuracy"] = "f1"
    max_rows: int | None = Field(
        200_000, gt=0, description="Fit on at most this many labelled rows (sampled); null: all of them."
    )
    max_eval_rows: int | None = Field(
        250_000,
        gt=0,
        description="Sample validation and holdout to at most this many rows each (F1 within about "
        "+-0.003 at 95%); null: keep all.",
    )
    candidates: dict[str, CandidateSettings] = Field(default_factory=default_candidates)
    exclude_features: list[str] = Field(
        default_factory=list, description="Features of the table the models do not use (e.g. to measure one's worth)."
    )


class GateSettings(_Strict):
    """The quality gate between training and the registry."""

    min_f1: float = Field(0.7, ge=0, le=1, description="Floor for the lower confidence bound of the F1.")
    min_lift_f1: float = Field(
        0.02, ge=-1, le=1, description="The F1 must beat the 'everyone churns' F1 by this (lower bound)."
    )
    min_lift_auc: float = Field(
        0.0,
        ge=-1,
        le=1,
        description="The ROC AUC must beat the recency score's by this (lower bound; 0: better with confidence).",
    )
    relative_metric: Literal["f1", "roc_auc"] = "f1"
    non_inferiority_margin: float = Field(0.01, ge=0, description="The challenger may be this much worse.")
    confidence: float = Field(0.95, gt=0.5, lt=1)
    bootstrap_rounds: int = Field(1000, ge=100)


class MlflowSettings(_Strict):
    """Experiment tracking and the model registry."""

    tracking_uri: str = "sqlite:///{workspace}/mlflow.db"
    artifact_location: str = "{workspace}/mlartifacts"
    experiment: str = "churn"
    backtest_experiment: str = "churn-backtest"
    model_name: str = "churn_predictor"


class ServingSettings(_Strict):
    """The prediction server (`churnops serve`) and its prediction log."""

    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    alias: Literal["champion", "challenger", "staging"] = "champion"
    onnx: bool = Field(True, description="Serve with ONNX Runtime where the model converts and agrees.")
    onnx_tolerance: float = Field(1e-6, gt=0, description="Largest |ONNX - native| probability on the holdout.")
    max_batch: int = Field(1000, gt=0, description="Items in one request at most.")
    max_body_bytes: int = Field(1 << 20, gt=0, description="Request body size limit, enforced before parsing.")
    poll_seconds: float = Field(30.0, ge=0, description="How often the server checks its alias (0: never).")
    admin_token: str | None = Field(None, description="Bearer token of the admin endpoints (none: they refuse all).")
    as_of: datetime | None = Field(
        None,
        description="The server's clock (default: the wall clock): TTLs are judged against it and predictions "
        "logged at it plus the time since the server started; set it to replay a past day.",
    )
    prediction_log_url: str = Field(
        "sqlite:///{workspace}/predictions.db", description="SQLAlchemy URL of the prediction log."
    )
    log_queue_size: int = Field(100_000, gt=0, description="Predictions waiting to be written, at most.")
    log_batch_size: int = Field(1000, gt=0)
    drain_seconds: float = Field(
        0.0,
        ge=0,
        description="After SIGTERM, keep answering this long with readiness false, so load balancers stop "
        "sending, then stop (on Kubernetes the preStop hook does this).",
    )
    log_predictions: bool = Field(
        True, description="Log every prediction (off only to measure what logging costs; monitoring needs it)."
    )
    ab_weight: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Share of customers a champion server sends to the challenger once it passed staging (0: no A/B).",
    )
    ab_mode: Literal["split", "shadow"] = Field(
        "split", description="split: the challenger answers its share; shadow: it scores them unseen, logged apart."
    )


class DeploySettings(_Strict):
    """The road to production: staging, its integration tests, the production server."""

    servers: bool = Field(
        True,
        description="Run staging and production as local `churnops serve` processes (off: only aliases move, "
        "and servers elsewhere follow them).",
    )
    staging_port: int = Field(8001, gt=0, lt=65536, description="The local staging server's port.")
    staging_url: str | None = Field(
        None, description="Run the integration tests against this staging server instead of a local one."
    )
    start_timeout_seconds: float = Field(180.0, gt=0, description="How long a server may take to become ready.")
    skew_customers: int = Field(50, gt=0, description="Customers whose served and offline predictions are compared.")
    skew_tolerance: float = Field(1e-6, gt=0, description="Largest |served - offline| probability allowed.")
    latency_requests: int = Field(200, gt=0, description="One-customer requests timed by the latency check.")
    latency_budget_ms: float = Field(50.0, gt=0, description="p99 of those requests must not exceed this.")


class MonitoringSettings(_Strict):
    """Drift of the served features and predictions (`churnops monitor`, the `monitor` step)."""

    min_sample: int = Field(
        500,
        gt=0,
        description="Answers of the day's champion a day needs before drift is judged (a challenger's do not count).",
    )
    sample_size: int = Field(
        5000, gt=0, description="Rows of the day and of the reference compared, at most (cost stays flat)."
    )
    drift_threshold: float = Field(
        0.1, gt=0, description="A feature drifts when its normed Wasserstein distance exceeds this (an effect size)."
    )
    drift_share: float = Field(0.5, gt=0, le=1, description="The data set drifts when this share of features does.")
    newcomer_days: int = Field(
        30,
        ge=0,
        description="Customers this many days old or younger are newcomers, checked for drift on their own "
        "(a new segment arrives among them); 0 turns the check off.",
    )
    newcomer_window_days: int = Field(
        7, gt=0, description="Days of production predictions pooled for the newcomers' check (the day and before)."
    )
    newcomer_min_sample: int = Field(
        1000, gt=0, description="Distinct newcomers the pooled window needs before their drift is judged."
    )
    target_drift_threshold: float = Field(
        0.2, gt=0, description="The labelled churn rate drifts from the champion's when |Cohen's h| exceeds this."
    )
    performance_window_days: int = Field(
        7, gt=0, description="Labelled prediction days (the newest whose horizon has passed, and before) judged."
    )
    min_f1: float = Field(0.6, ge=0, le=1, description="A version's realized or estimated F1 below this is a trigger.")
    consecutive_checks: int = Field(
        3, gt=0, description="Judged days in a row a condition must hold before it is an alarm (hysteresis)."
    )
    retrain_cooldown_days: int = Field(
        7,
        ge=0,
        description="Days after a retrain trigger before the next one (one declined for an A/B test does not count).",
    )
    max_champion_age_days: int = Field(90, gt=0, description="A champion trained longer ago than this is a trigger.")
    seed: int = 0


class ABTestSettings(_Strict):
    """When the production A/B test is decided (the `production` step, from realized labels)."""

    policy: Literal["superiority", "non_inferiority"] = Field(
        "non_inferiority",
        description="superiority: the challenger must be better; non_inferiority: not worse than ab_test.margin.",
    )
    margin: float = Field(
        0.02,
        ge=0,
        description="F1 the challenger may give up (non_inferiority), and how much worse it must surely be to lose.",
    )
    min_labelled: int = Field(300, gt=0, description="Labelled customers each variant needs before a decision.")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Of the bootstrap interval of the F1 difference.")
    bootstrap_rounds: int = Field(2000, ge=100)
    max_days: int = Field(
        120, gt=0, description="A test still undecided this many days after it began ends; the champion stays."
    )


class AlertSettings(_Strict):
    """Where alerts go: always the log and an alert file; optionally a Slack-compatible webhook."""

    file: str = "{workspace}/alerts.jsonl"
    webhook_url: str | None = None
    webhook_timeout_s: float = Field(5.0, gt=0)


class Settings(BaseSettings):
    """Everything churnops reads from configuration."""

    model_config = SettingsConfigDict(env_prefix="CHURNOPS_", env_nested_delimiter="__", extra="forbid", yaml_file=None)

    workspace: Path = Path(".churnops")
    lake_uri: str = "{workspace}/lake"
    lake_storage_options: dict[str, Any] = Field(default_factory=dict)
    simulation: SimulationSettings = Field(default_factory=SimulationSettings)
    sources: list[Source] = Field(default_factory=default_sources)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    features: FeatureSettings = Field(default_factory=FeatureSettings)
    feast: FeastSettings = Field(default_factory=FeastSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    deploy: DeploySettings = Field(default_factory=DeploySettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    ab_test: ABTestSettings = Field(default_factory=ABTestSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges the YAML file and CHURNOPS_* variables itself, so that the
        # environment wins over the file and unknown keys from either are reported.
        return (init_settings,)

    @field_validator("workspace")
    @classmethod
    def _workspace_is_a_directory(cls, workspace: Path) -> Path:
        if workspace.exists() and not workspace.is_dir():
            raise ValueError(f"{workspace} is a file, not a directory")
        return workspace

    @field_validator("sources")
    @classmethod
    def _unique_source_names(cls, sources: list[Source]) -> list[Source]:
        names = [s.name for s in sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        return sources

    @model_validator(mode="after")
    def _expand_workspace(self) -> Settings:
        ws = str(self.workspace)
        self.lake_uri = self.lake_uri.replace(WORKSPACE_PLACEHOLDER, ws)
        self.mlflow.tracking_uri = self.mlflow.tracking_uri.replace(WORKSPACE_PLACEHOLDER, ws)
        self.mlflow.artifact_location = self.mlflow.artifact_location.replace(WORKSPACE_PLACEHOLDER, ws)
        self.alerts.file = self.alerts.file.replace(WORKSPACE_PLACEHOLDER, ws)
        self.serving.prediction_log_url = self.serving.prediction_log_url.replace(WORKSPACE_PLACEHOLDER, ws)
        for src in self.sources:
            for attr in ("url", "path"):
                value = getattr(src, attr, None)
                if isinstance(value, str):
                    setattr(src, attr, value.replace(WORKSPACE_PLACEHOLDER, ws))
        return self

    @property
    def paths(self) -> Workspace:
        """Where everything lives under the workspace directory."""
        return Workspace(self.workspace)

    def enabled_sources(self, table: str | None = None) -> list[Source]:
        """Enabled sources, customers first so orders can be checked against them."""
        order = {"customers": 0, "products": 1, "orders": 2}
        chosen = [s for s in self.sources if s.enabled and (table is None or s.table == table)]
        return sorted(chosen, key=lambda s: order[s.table])

    def source(self, name: str) -> Source:
        """The source named `name`."""
        for src in self.sources:
            if src.name == name:
                return src
        known = ", ".join(s.name for s in self.sources)
        raise ConfigError(f"no source named {name!r}; configured: {known}")


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration in {origin}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif e["type"] == "value_error":
            lines.append(f"  {key}: {str(e['msg']).removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def resolve_config_path(config: Path | None) -> Path | None:
    """The YAML file to read: `config`, else $CHURNOPS_CONFIG, else ./churnops.yaml if present."""
    if config is not None:
        if not config.exists():
            raise ConfigError(f"config file not found: {config}")
        return config
    env = os.environ.get("CHURNOPS_CONFIG")
    if env:
        path = Path(env)
        if not path.exists():
            raise ConfigError(f"config file not found: {path} (from CHURNOPS_CONFIG)")
        return path
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.exists() else None


def load_settings(config: Path | None = None, defaults: dict[str, Any] | None = None, **overrides: Any) -> Settings:
    """Build the settings from a YAML file, environment variables and explicit overrides.

    Precedence, highest first: `overrides`, `CHURNOPS_*` environment variables (nested keys
    joined by `__`, e.g. `CHURNOPS_INGEST__MAX_BAD_SHARE=0.05`), the YAML file, `defaults`, the
    settings' own defaults.

    Args:
        config: Path of the YAML file; default $CHURNOPS_CONFIG, then ./churnops.yaml.
        defaults: Nested keys that replace the built-in defaults (the demo's shop, say).
        **overrides: Top-level keys that win over every other source.

    Returns:
        The validated settings.

    Raises:
        ConfigError: The file is unreadable or a key or value is wrong.
    """
    path = resolve_config_path(config)
    data: dict[str, Any] = {}
    origin = "defaults and environment"
    if path is not None:
        origin = str(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        data = loaded
        origin = f"{path} (or CHURNOPS_* environment variables)"
    merged = _deep_merge(_deep_merge(_deep_merge(defaults or {}, data), _env_values()), overrides)
    try:
        return Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, origin)) from exc


def _env_values() -> dict[str, Any]:
    """CHURNOPS_* variables as a nested dict.

    A value stays the string it is, and the setting's type converts it (so a string setting
    takes "no" or "2024" as written); an empty value is null; a value starting with `[` or `{`
    is parsed as YAML, for list and mapping settings.
    """
    out: dict[str, Any] = {}
    for key, raw in os.environ.items():
        if not key.startswith("CHURNOPS_") or key in NON_SETTING_VARIABLES:
            continue
        path = key[len("CHURNOPS_") :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = _env_value(key, raw)
    return out


def _env_value(key: str, raw: str) -> Any:
    text = raw.strip()
    if not text:
        return None
    if text[0] in "[{":
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{key}: not a valid YAML list or mapping: {exc}") from exc
    return raw


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
