"""The prediction server: a FastAPI app built by `create_app(settings)`.

Endpoints:
- `POST /predict`: customer_ids (features from the Feast online store, through the served
  version's feature service) or explicit feature vectors; per item a status, probability,
  label at the version's threshold, model, version, variant and request_id.
- The Open Inference Protocol v2 (KServe, Seldon, Triton clients): `GET /v2/health/live`,
  `GET /v2/health/ready`, `GET /v2`, `GET /v2/models/{name}`, `GET /v2/models/{name}/ready`,
  `POST /v2/models/{name}/infer`.
- MLflow's scoring protocol: `POST /invocations` with `dataframe_split`, `dataframe_records` or
  `inputs`.
- `GET /metrics` (Prometheus), `POST /admin/reload` (bearer token).

Every prediction is logged off the hot path (`prediction_log`). The server follows its alias: it
polls the registry and reloads on `/admin/reload`, loading the new version fully before the old
one is released; a version that fails to load leaves the old one serving and raises an alert.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from churnops.alerts import Alert, raise_alert
from churnops.features.definitions import ORDER_COUNT
from churnops.serving.ab import CHALLENGER, SHADOW, challenger_mask
from churnops.serving.metrics import ServerMetrics, endpoint_label
from churnops.serving.model import ModelLoadError, ServedModel, load_served_model
from churnops.serving.prediction_log import LogRecord, PredictionLog, Refusal
from churnops.settings import Settings

log = logging.getLogger(__name__)

# Strict: a JSON true is not the number 1, nor "7" or 7.0 a customer id (the answer would be a
# different customer's, or a feature of 1 the client never sent); a 422 says so instead.


def _plain_number(value: Any) -> Any:
    """A feature value is a JSON number or null: said once, not once per member of the union."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"a feature value is a number or null, not {json.dumps(value)[:40]}")
    return value


Number = Annotated[float | int | None, BeforeValidator(_plain_number)]
CustomerId = Annotated[int, Strict(), Field(ge=-(2**63), le=2**63 - 1)]  # the entity key is an int64


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ReloadRequest(_Body):
    """An admin reload may also set the server's clock (a replay serves one past day after another)."""

    as_of: datetime | None = Field(
        None, description="The server's time from now on (null: the wall clock); TTLs are judged against it."
    )


class PredictRequest(_Body):
    """Either customer_ids (features from the online store) or explicit feature vectors."""

    customer_ids: list[CustomerId] | None = Field(None, description="Customers to score with their online features.")
    instances: list[dict[str, Number]] | None = Field(
        None, description="Feature vectors: feature name -> value (null for a missing value)."
    )

    @model_validator(mode="after")
    def _one_of(self) -> PredictRequest:
        if (self.customer_ids is None) == (self.instances is None):
            raise ValueError("give exactly one of customer_ids or instances")
        if not (self.customer_ids or self.instances):
            raise ValueError("the batch is empty")
        return self


class ErrorResponse(BaseModel):
    """Every 4xx and 5xx answer: what is wrong, in words."""

    error: str = Field(description="What is wrong with the request, or why it cannot be answered now.")


# What a scoring endpoint may answer besides 200 (documented in the OpenAPI document; FastAPI's
# own 422 body, `{"detail": [...]}`, is never sent: `_errors` answers every refusal this way).
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorResponse, "description": "The request is not valid; the error says what is wrong."}
}
SCORING_ERRORS: dict[int | str, dict[str, Any]] = {
    422: {
        "model": ErrorResponse,
        "description": "The body is not valid: not JSON, a wrong type, a missing or unknown field.",
    },
    413: {
        "model": ErrorResponse,
        "description": "The body or the batch is over the limit (serving.max_body_bytes, serving.max_batch).",
    },
    415: {"model": ErrorResponse, "description": "The content type is not application/json."},
    503: {
        "model": ErrorResponse,
        "description": "No model is loaded yet, the server is draining, or the online store cannot serve.",
    },
}


class Prediction(BaseModel):
    """One scored item."""

    status: Literal["ok", "unknown_customer", "stale_features", "no_orders"]
    customer_id: int | None = None
    probability: float | None = None
    label: int | None = None
    model: str
    version: str
    variant: str
    request_id: str
    detail: str | None = None


class PredictResponse(BaseModel):
    """The items in request order."""

    predictions: list[Prediction]


class InferTensor(_Body):
    """An Open Inference Protocol input tensor."""

    name: str
    shape: list[int]
    datatype: Literal["FP64", "FP32", "INT64", "INT32", "FP16"]
    data: list[Number] | list[list[Number]]
    parameters: dict[str, Any] | None = None


class InferRequest(_Body):
    """An Open Inference Protocol request: one [n, features] tensor, or one [n] tensor per feature."""

    id: str | None = None
    inputs: list[InferTensor] = Field(min_length=1)
    outputs: list[dict[str, Any]] | None = None
    parameters: dict[str, Any] | None = None


class DataframeSplit(BaseModel):
    """pandas' `split` orientation, as MLflow writes a serving input example."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=True)

    columns: list[str]
    data: list[list[Number]]
    index: list[Any] | None = None


class ScoringRequest(BaseModel):
    """MLflow's scoring protocol (give one of the four forms). As in MLflow, NaN marks a missing
    value; infinity is refused."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=True)

    dataframe_split: DataframeSplit | None = None
    dataframe_records: list[dict[str, Number]] | None = None
    inputs: list[list[Number]] | dict[str, list[Number]] | None = None
    instances: list[dict[str, Number]] | list[list[Number]] | None = None  # TF Serving's rows, as MLflow takes them
    params: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _finite(self) -> ScoringRequest:
        def walk(value: Any) -> None:
            if isinstance(value, float) and math.isinf(value):
                raise ValueError("infinity is not a feature value")
            if isinstance(value, dict):
                for v in value.values():
                    walk(v)
            elif isinstance(value, list):
                for v in value:
                    walk(v)

        split = self.dataframe_split.data if self.dataframe_split else None
        walk([split, self.dataframe_records, self.inputs, self.instances])
        return self


@dataclass
class ServerState:
    """What the server holds: the model, its lookups and log, and whether it may take traffic."""

    settings: Settings
    metrics: ServerMetrics
    model: ServedModel | None = None
    challenger: ServedModel | None = None  # the A/B test's other variant, if one runs
    shutting_down: bool = False
    load_error: str = ""
    log: PredictionLog | None = None
    online: Any = None  # the Feast store
    provider: Any = None  # its provider, whose online_read reads the online store
    lookups: dict[str, Any] = field(default_factory=dict)  # feature service -> _Lookup
    _swap: asyncio.Lock = field(default_factory=asyncio.Lock)
    as_of: datetime | None = None  # the server clock's origin (naive UTC); None: the wall clock
    started: float = field(default_factory=time.time)  # when the clock was at `as_of`
    failed_target: tuple[str | None, str | None] | None = None  # (champion, challenger) that failed to load
    alerting: list[threading.Thread] = field(default_factory=list)  # alerts being sent

    @property
    def ready(self) -> bool:
        """A model is loaded (its smoke prediction passed) and the server is not draining."""
        return self.model is not None and not self.shutting_down

    def refused(self, path: str, status: int) -> None:
        """Count a 4xx or 5xx in the metrics and record it beside the predictions (the day's
        error rate in monitoring comes from there)."""
        self.metrics.refused(path, status)
        if self.log is not None:
            self.log.put([Refusal(_clock(self), self.settings.serving.alias, endpoint_label(path), status)])


def create_app(
    settings: Settings, loader: Callable[[Settings, str], ServedModel] | None = None, start_polling: bool = True
) -> FastAPI:
    """The prediction server for these settings.

    Args:
        settings: The loaded settings (`serving` section).
        loader: Loads the model behind an alias (default: `load_served_model`, from the registry).
        start_polling: Follow the alias (and the A/B test's challenger) in the background.

    Returns:
        The FastAPI app; its `state.server` is the `ServerState`.
    """
    load = loader or load_served_model
    state = ServerState(settings, ServerMetrics(), as_of=_naive_utc(settings.serving.as_of))

    async def reload(reason: str) -> str:
        """Load the alias's version and swap it in; the old one keeps serving on failure."""
        async with state._swap:
            try:
                new = await asyncio.to_thread(load, settings, settings.serving.alias)
            except (ModelLoadError, Exception) as exc:  # a broken version must never take serving down
                state.load_error = str(exc)
                state.metrics.reload_failures.inc()
                log.error("could not load the model (%s): %s", reason, exc)
                if state.model is not None:
                    _alert(
                        state,
                        Alert(
                            key=f"serving-reload-failed-{_fingerprint(settings.serving.alias, str(exc))}",
                            title=f"The server kept {state.model.name} version {state.model.version}: "
                            "the new version failed to load",
                            details={"reason": str(exc), "alias": settings.serving.alias},
                        ),
                    )
                return f"kept version {state.model.version if state.model else '(none)'}: {exc}"
            challenger, note = await asyncio.to_thread(_challenger_for, state, load)
            await asyncio.to_thread(_open_online, state, new, challenger)  # before either takes traffic
            old = state.model
            state.model, state.challenger = new, challenger
            state.load_error = ""
            state.metrics.model_loaded(new, challenger)
            result = f"serving version {new.version} ({new.backend}), was {old.version if old else 'none'}{note}"
            log.info("%s (%s)", result, reason)  # the server's log is the history of what it served
            return result

    async def follow_alias() -> None:
        from churnops.pipelines.promotion import existing_registry

        while True:
            await asyncio.sleep(settings.serving.poll_seconds)
            try:
                registry = await asyncio.to_thread(existing_registry, settings)
                holder = await asyncio.to_thread(registry.holder, settings.serving.alias) if registry else None
                wanted = await asyncio.to_thread(_wanted_challenger, state, registry) if registry else None
            except Exception as exc:  # the registry being away is no reason to stop serving
                log.warning("alias poll failed: %s", exc)
                continue
            serving = state.challenger.version if state.challenger else None
            target = (holder, wanted)
            if holder is None or target == state.failed_target:
                continue  # nothing to serve, or this very pair already failed: retry when an alias moves
            if state.model is None or holder != state.model.version or wanted != serving:
                log.info("alias %s is on version %s (A/B challenger %s)", settings.serving.alias, holder, wanted)
                await reload("the alias moved")
                got = (
                    state.model.version if state.model else None,
                    state.challenger.version if state.challenger else None,
                )
                state.failed_target = None if got == target else target

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()

        def log_full(lost: int) -> None:
            loop.call_soon_threadsafe(state.metrics.log_full.inc)
            _alert(
                state,
                Alert(
                    key=f"prediction-log-full-{uuid.uuid4().hex[:8]}",
                    title="The prediction log's queue is full: predictions are being dropped, not logged",
                    details={"queue_size": settings.serving.log_queue_size, "first_lost": lost},
                ),
            )

        if settings.serving.log_predictions:
            state.log = PredictionLog(
                settings.serving.prediction_log_url,
                settings.serving.log_queue_size,
                settings.serving.log_batch_size,
                on_full=log_full,
            )
        else:
            log.warning("serving.log_predictions is off: predictions are not logged, monitoring sees none")
        await reload("start")
        poller = asyncio.create_task(follow_alias()) if start_polling and settings.serving.poll_seconds > 0 else None
        try:
            yield
        finally:
            state.shutting_down = True
            if poller is not None:
                poller.cancel()
            if state.log is not None:
                await asyncio.to_thread(state.log.close)
            for sending in list(state.alerting):
                await asyncio.to_thread(sending.join, 30)

    app = FastAPI(
        title="churnops prediction server",
        description="Churn probabilities by customer or feature vector; Open Inference Protocol v2; MLflow scoring.",
        version="1",
        lifespan=lifespan,
    )
    app.state.server = state
    app.state.reload = reload
    app.add_middleware(BodyGuard, state=state)
    _errors(app, state)
    app.include_router(_predict_router(state))
    app.include_router(_v2_router(state))
    app.include_router(_mlflow_router(state))
    app.include_router(_ops_router(state, reload))
    return app


def _wanted_challenger(state: ServerState, registry: Any) -> str | None:
    """The version the A/B test should run against the champion, if any."""
    from churnops.serving.deploy import ab_challenger

    if state.settings.serving.alias != "champion":
        return None
    return ab_challenger(registry, state.settings)


def _challenger_for(state: ServerState, load: Callable[[Settings, str], ServedModel]) -> tuple[ServedModel | None, str]:
    """The A/B challenger to serve beside the champion (kept when unchanged), and a note saying so.

    A challenger that fails to load ends the test (the champion answers everyone) and alerts.
    """
    from churnops.pipelines.promotion import existing_registry

    settings = state.settings
    try:
        registry = existing_registry(settings)
        wanted = _wanted_challenger(state, registry) if registry else None
    except Exception as exc:  # the registry being away must not stop the champion from serving
        log.warning("could not look up the A/B challenger: %s", exc)
        return state.challenger, ""
    if wanted is None:
        return None, ""
    if state.challenger is not None and state.challenger.version == wanted:
        return state.challenger, f"; A/B challenger version {wanted}"
    try:
        challenger = load(settings, "challenger")
        if challenger.version != wanted:  # the alias moved since its tests were checked
            raise ModelLoadError(f"the challenger alias moved to {challenger.version} while {wanted} was loading")
    except Exception as exc:  # a broken challenger ends the test, never the serving
        state.metrics.reload_failures.inc()
        _alert(
            state,
            Alert(
                key=f"serving-challenger-failed-v{wanted}-{_fingerprint(str(exc))}",
                title=f"The A/B test did not start: challenger version {wanted} failed to load",
                details={"reason": str(exc)},
            ),
        )
        return None, f"; A/B challenger version {wanted} failed to load: {exc}"
    mode = settings.serving.ab_mode
    return challenger, f"; A/B ({mode}) challenger version {challenger.version} for {settings.serving.ab_weight:.0%}"


# --- request guards ----------------------------------------------------------------------


class BodyGuard:
    """ASGI middleware: a POST body over the limit is refused (413) while it is read, before any
    parsing, and one that is not JSON is refused (415); the rest pass through unchanged."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.limit = state.settings.serving.max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.state.shutting_down:
            send = _closing(send)  # while draining, clients move off this server's connections
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        path = scope.get("path", "")
        declared = headers.get(b"content-length")
        too_big = f"the body is over the limit of {self.limit:,} bytes"
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(scope, receive, send, path, 413, too_big)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._refuse(scope, receive, send, path, 413, too_big)
                return
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
        binary_header = headers.get(b"inference-header-content-length")
        if binary_header is not None:  # the v2 binary tensor extension, as Triton's clients send by default
            try:
                body = _binary_to_json(body, int(binary_header))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                await self._refuse(scope, receive, send, path, 422, f"bad binary tensor data: {exc}")
                return
            kind = "application/json"
        if body and kind not in ("application/json", ""):
            await self._refuse(
                scope, receive, send, path, 415, f"send application/json, not {kind or 'no content type'}"
            )
            return
        if body:  # what reaches the app is JSON, said so and sized right (the binary extension rewrites it)
            kept = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
            scope = {
                **scope,
                "headers": [
                    *kept,
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Any, receive: Any, send: Any, path: str, status: int, message: str) -> None:
        self.state.refused(path, status)
        await JSONResponse({"error": message}, status_code=status)(scope, receive, send)


def _closing(send: Any) -> Any:
    """`send` that adds `Connection: close` to the response, so the client does not reuse the
    connection (a request sent on it as the server stops would be lost in the socket)."""

    async def closing(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    return closing


_BINARY_TYPES = {"FP64": "<f8", "FP32": "<f4", "FP16": "<f2", "INT64": "<i8", "INT32": "<i4"}


def _binary_to_json(body: bytes, header_length: int) -> bytes:
    """A request in the v2 binary tensor extension as the same request in plain JSON."""
    header = json.loads(body[:header_length])
    offset = header_length
    for tensor in header.get("inputs", []):
        parameters = tensor.get("parameters") or {}
        size = parameters.pop("binary_data_size", None)
        if size is None:
            continue
        values = np.frombuffer(body[offset : offset + int(size)], dtype=_BINARY_TYPES[tensor["datatype"]])
        offset += int(size)
        tensor["data"] = [None if not np.isfinite(v) else float(v) for v in values.astype(np.float64)]
        if not parameters:
            tensor.pop("parameters", None)
    if offset != len(body):
        raise ValueError(f"{len(body) - offset} bytes after the tensors")
    for output in header.get("outputs") or []:  # answers come back as JSON
        (output.get("parameters") or {}).pop("binary_data", None)
    header.pop("parameters", None)
    return json.dumps(header).encode()


def _refuse(state: ServerState, request: Request, status: int, message: str) -> JSONResponse:
    state.refused(request.url.path, status)
    return JSONResponse({"error": message}, status_code=status)


def _errors(app: FastAPI, state: ServerState) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors():
            if error.get("type") == "json_invalid":  # its loc is the character where parsing stopped
                at = error.get("loc", ("body", "?"))[-1]
                reason = (error.get("ctx") or {}).get("error", "")
                problems.append(f"the body is not valid JSON: {reason or 'cannot parse'} at character {at}")
                continue
            where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where}: {error.get('msg')}")
        state.refused(request.url.path, 422)
        return JSONResponse({"error": "; ".join(problems) or "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's and the router's own (404, 405)
    async def http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code >= 400:
            state.refused(request.url.path, exc.status_code)
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(OverflowError)
    async def overflow(request: Request, exc: OverflowError) -> JSONResponse:
        state.refused(request.url.path, 422)
        return JSONResponse({"error": "a feature value is too large for a 64-bit float"}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        state.refused(request.url.path, 500)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


def _alert(state: ServerState, alert: Alert) -> None:
    """Send an alert from a thread of its own: a slow webhook must not hold up the event loop."""
    state.alerting = [t for t in state.alerting if t.is_alive()]
    sending = threading.Thread(target=raise_alert, args=(state.settings.alerts, alert), name="alert")
    state.alerting.append(sending)
    sending.start()


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _naive_utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _clock(state: ServerState) -> datetime:
    """The server's time (naive UTC): the wall clock, or with `serving.as_of` (or the `as_of` of
    the last admin reload) that moment plus the time since, so a replayed day's predictions are
    stamped inside that day."""
    if state.as_of is None:
        return datetime.now(UTC).replace(tzinfo=None)
    return state.as_of + timedelta(seconds=time.time() - state.started)


def _model_or_503(state: ServerState) -> ServedModel:
    """The served model; while draining for shutdown it still answers (only readiness says no)."""
    model = state.model
    if model is None:
        raise HTTPException(503, f"no model is loaded ({state.load_error})")
    return model


def _check_size(state: ServerState, items: int) -> None:
    if items > state.settings.serving.max_batch:
        raise HTTPException(413, f"{items:,} items is over the batch limit of {state.settings.serving.max_batch:,}")
    if items == 0:
        raise HTTPException(422, "the batch is empty")


def _matrix(model: ServedModel, vectors: list[dict[str, Number]]) -> np.ndarray:
    """Feature vectors as the model's matrix; unknown or missing features are a 422."""
    wanted = set(model.features)
    rows = np.empty((len(vectors), len(model.features)), dtype=np.float64)
    for i, vector in enumerate(vectors):
        unknown = sorted(set(vector) - wanted)
        missing = [f for f in model.features if f not in vector]
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing feature(s) {', '.join(missing)}")
            if unknown:
                parts.append(f"unknown feature(s) {', '.join(unknown)}")
            raise HTTPException(
                422, f"item {i}: {'; '.join(parts)} (version {model.version} takes: {', '.join(model.features)})"
            )
        rows[i] = [math.nan if vector[f] is None else float(vector[f]) for f in model.features]  # type: ignore[arg-type]
    return rows


# --- /predict ----------------------------------------------------------------------------


def _predict_router(state: ServerState) -> APIRouter:
    router = APIRouter(tags=["predict"])

    @router.post("/predict", response_model=PredictResponse, responses=SCORING_ERRORS)
    async def predict(body: PredictRequest) -> JSONResponse:
        started = time.perf_counter()
        champion = _model_or_503(state)
        items = len(body.customer_ids if body.customer_ids is not None else body.instances or [])
        _check_size(state, items)
        if items > OFF_LOOP_ITEMS:  # a big batch must not hold up the event loop (and the health probes)
            ids, parts = await asyncio.to_thread(_scored_parts, state, champion, body)
        else:
            ids, parts = _scored_parts(state, champion, body)
        latency = time.perf_counter() - started
        out: list[dict[str, Any] | None] = [None] * len(ids)
        request = uuid.uuid4().hex  # each item's id names the HTTP request it came in and its place there
        request_ids = [f"{request}-{i}" for i in range(len(ids))]
        records: list[LogRecord] = []
        now = _clock(state)
        for part in parts:
            model = part.model
            for k, i in enumerate(part.where):
                status, request_id = part.statuses[k], request_ids[i]
                p = float(part.proba[k])
                label = int(p >= model.threshold) if status == "ok" else None
                if status == "ok":
                    records.append(
                        _record(
                            request_id,
                            now,
                            ids[i],
                            model,
                            part.variant,
                            part.rows[k],
                            p,
                            int(p >= model.threshold),
                            latency,
                        )
                    )
                if part.answers:  # the fields of `Prediction`, built as plain data (validated once, by the test)
                    out[i] = {
                        "status": status,
                        "customer_id": ids[i],
                        "probability": p if status == "ok" else None,
                        "label": label,
                        "model": model.name,
                        "version": model.version,
                        "variant": part.variant,
                        "request_id": request_id,
                        "detail": _STATUS_DETAIL.get(status),
                    }
            # items scored: not the unknown or stale customers, which were answered with a status
            scored = sum(status == "ok" for status in part.statuses)
            state.metrics.served("/predict", model, part.variant, latency, scored)
        _log(state, records)
        return JSONResponse({"predictions": [p for p in out if p is not None]})

    return router


# Requests with more items than this are scored in a worker thread, so that the event loop
# keeps answering health probes and small requests meanwhile; smaller ones are scored inline,
# where a thread hop would cost more than the work.
OFF_LOOP_ITEMS = 64

_STATUS_DETAIL = {
    "unknown_customer": "the online store has no features for this customer",
    "no_orders": (
        "the customer has no order yet: the model learned churn from customers who had ordered, so it has no "
        "answer for one who has not"
    ),
    "stale_features": (
        "the customer's features are older than the feature view's TTL (feast.ttl_days) at the server's clock; "
        "serving data of the past? set serving.as_of to its day"
    ),
}


@dataclass
class _Part:
    """The items of one request one model scores: their positions, rows and statuses."""

    model: ServedModel
    variant: str
    where: np.ndarray
    rows: np.ndarray
    statuses: list[str]
    answers: bool  # False in shadow mode: scored and logged, not returned
    proba: np.ndarray = field(default_factory=lambda: np.empty(0))


def _scored_parts(
    state: ServerState, champion: ServedModel, body: PredictRequest
) -> tuple[list[int | None], list[_Part]]:
    """Each item's customer (if any), and the parts of the request each model scored."""
    if body.customer_ids is None:
        assert body.instances is not None
        rows = _matrix(champion, body.instances)
        parts = [_Part(champion, champion.alias, np.arange(len(rows)), rows, ["ok"] * len(rows), True)]
        ids: list[int | None] = [None] * len(rows)
    else:
        ids = list(body.customer_ids)
        parts = [
            _Part(model, variant, where, *_looked_up(state, model, [body.customer_ids[i] for i in where]), answers)
            for model, variant, where, answers in _route(state, champion, body.customer_ids)
            if len(where)
        ]
    for part in parts:
        usable = np.array([s == "ok" for s in part.statuses], dtype=bool)
        part.proba = np.full(len(part.rows), np.nan)
        if usable.any():
            part.proba[usable] = part.model.predict_proba(part.rows[usable])
    return ids, parts


def _route(
    state: ServerState, champion: ServedModel, customer_ids: list[int]
) -> list[tuple[ServedModel, str, np.ndarray, bool]]:
    """Which model scores which items: (model, variant, positions, answers)."""
    everyone = np.arange(len(customer_ids))
    challenger = state.challenger
    if challenger is None:
        return [(champion, champion.alias, everyone, True)]
    chosen = challenger_mask(challenger.version, customer_ids, state.settings.serving.ab_weight)
    if state.settings.serving.ab_mode == "shadow":
        return [(champion, champion.alias, everyone, True), (challenger, SHADOW, everyone[chosen], False)]
    return [(champion, champion.alias, everyone[~chosen], True), (challenger, CHALLENGER, everyone[chosen], True)]


def _looked_up(state: ServerState, model: ServedModel, customer_ids: list[int]) -> tuple[np.ndarray, list[str]]:
    looked = time.perf_counter()
    found = _online_rows(state, model, customer_ids)
    state.metrics.lookup.observe(time.perf_counter() - looked)
    return found


@dataclass
class _Lookup:
    """How a version's features are read: per feature view of its feature service, the view, its
    join key, the features taken from it, and each one's column in the model's matrix."""

    views: list[tuple[Any, str, list[tuple[str, int]]]]
    oldest_age: list[float]  # per view: the TTL in seconds (0: none)


def _lookup_plan(state: ServerState, model: ServedModel) -> _Lookup:
    """Resolve the version's feature service against the registry (fresh, not cached).

    Raises:
        ModelLoadError: The service is missing or does not provide every feature the model takes.
    """
    store = state.online
    try:
        service = store.get_feature_service(model.feature_service, allow_cache=False)
    except Exception as exc:
        raise ModelLoadError(f"feature service {model.feature_service!r} is not in the feature store: {exc}") from exc
    column = {f: j for j, f in enumerate(model.features)}
    views, ttls, found = [], [], set()
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        taken = [(f.name, column[f.name]) for f in projection.features if f.name in column]
        found |= {name for name, _ in taken}
        views.append((view, view.entity_columns[0].name, taken))
        ttls.append(view.ttl.total_seconds() if view.ttl else 0.0)  # a view without a TTL never goes stale
    missing = [f for f in model.features if f not in found]
    if missing:
        raise ModelLoadError(f"feature service {model.feature_service!r} lacks {', '.join(missing)}")
    from churnops.features.feast_repo import TIME_VIEW, view_of

    if not any(ttls):  # a model of order features only: the time view still says how fresh they are
        view = store.get_feature_view(TIME_VIEW)
        views.append((view, view.entity_columns[0].name, []))
        ttls.append(view.ttl.total_seconds() if view.ttl else 0.0)
    counted = view_of(ORDER_COUNT)
    if not any(view.name == counted for view, _, _ in views):  # a model without the order count still needs it
        try:
            view = store.get_feature_view(counted)
        except Exception:  # Feast raises its own not-found type per registry kind
            log.warning("the feature store has no %s view: customers without an order cannot be told apart", counted)
        else:
            if any(f.name == ORDER_COUNT for f in view.features):
                views.append((view, view.entity_columns[0].name, []))
                ttls.append(view.ttl.total_seconds() if view.ttl else 0.0)
    return _Lookup(views, ttls)


def _number(value: Any) -> float:
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return math.nan
    return float(getattr(value, kind))


def _online_rows(state: ServerState, model: ServedModel, customer_ids: list[int]) -> tuple[np.ndarray, list[str]]:
    """The served version's features for each customer from the online store, and each one's status.

    Read through the online store's own interface (`online_read`, what `get_online_features`
    calls underneath, without its per-request resolution and response building), one read per
    feature view of the version's feature service.
    """
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    if state.online is None:
        raise HTTPException(503, "the online store could not be opened; predict by feature vector meanwhile")
    plan = state.lookups.get(model.feature_service)
    if plan is None:
        try:
            plan = state.lookups[model.feature_service] = _lookup_plan(state, model)
        except ModelLoadError as exc:
            raise HTTPException(
                503, f"the online store cannot serve version {model.version}'s features: {exc}"
            ) from exc
    store = state.online
    rows = np.full((len(customer_ids), len(model.features)), math.nan)
    counts = np.full(len(customer_ids), math.nan)  # orders before the snapshot, whether the model takes them or not
    statuses = ["ok"] * len(customer_ids)
    now = _clock(state).replace(tzinfo=UTC).timestamp()
    keys_by_join_key: dict[str, list[Any]] = {}  # the views share the customer entity: its keys are made once
    for (view, join_key, taken), ttl in zip(plan.views, plan.oldest_age, strict=True):
        keys = keys_by_join_key.get(join_key)
        if keys is None:
            keys = keys_by_join_key[join_key] = [
                EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=c)]) for c in customer_ids
            ]
        found = state.provider.online_read(config=store.config, table=view, entity_keys=keys)
        for i, (stamp, values) in enumerate(found):
            if values is None:
                statuses[i] = "unknown_customer"
                continue
            if statuses[i] == "ok" and ttl and stamp is not None and stamp.timestamp() < now - ttl:
                statuses[i] = "stale_features"
            for name, j in taken:
                value = values.get(name)
                rows[i, j] = math.nan if value is None else _number(value)
            if ORDER_COUNT in values:
                counts[i] = _number(values[ORDER_COUNT])
    # training labels only customers with an order: no answer for the rest
    statuses = ["no_orders" if s == "ok" and c == 0 else s for s, c in zip(statuses, counts, strict=True)]
    return rows, statuses


def _open_online(state: ServerState, *models: ServedModel | None) -> None:
    """Open the online store (its first use takes seconds) and resolve each version's lookup."""
    from churnops.features.feast_repo import FeastFeatureStore

    if state.online is None:
        try:
            store = FeastFeatureStore(state.settings).store
            provider = store._get_provider()
            state.online, state.provider = store, provider  # together, once both work
        except Exception as exc:  # serving feature vectors works without it; lookups say why they fail
            log.warning("the online store cannot be opened: %s", exc)
            return
    for model in models:
        if model is None:
            continue
        try:
            state.lookups[model.feature_service] = _lookup_plan(state, model)
            _online_rows(state, model, [-1])
        except Exception as exc:  # serving feature vectors works without it; lookups will say why they fail
            log.warning("the online store is not usable for version %s yet: %s", model.version, exc)


def _record(
    request_id: str,
    now: datetime,
    customer_id: int | None,
    model: ServedModel,
    variant: str,
    row: np.ndarray,
    probability: float,
    label: int,
    latency: float,
) -> LogRecord:
    return LogRecord(
        request_id,
        now,
        customer_id,
        model.name,
        model.version,
        variant,
        model.features,
        row,
        probability,
        label,
        latency * 1000,
    )


def _log(state: ServerState, records: list[LogRecord]) -> None:
    if state.log is not None and records:
        lost = state.log.put(records)
        if lost:
            state.metrics.log_dropped.inc(lost)
        state.metrics.log_depth.set(state.log.depth)


def _score_rows(state: ServerState, endpoint: str, rows: np.ndarray) -> tuple[ServedModel, np.ndarray]:
    started = time.perf_counter()
    model = _model_or_503(state)
    _check_size(state, len(rows))
    proba = model.predict_proba(rows)
    latency = time.perf_counter() - started
    now = _clock(state)
    request = uuid.uuid4().hex
    _log(
        state,
        [
            _record(f"{request}-{i}", now, None, model, model.alias, row, float(p), int(p >= model.threshold), latency)
            for i, (row, p) in enumerate(zip(rows, proba, strict=True))
        ],
    )
    state.metrics.served(endpoint, model, model.alias, latency, len(rows))
    return model, proba


# --- Open Inference Protocol v2 ----------------------------------------------------------


def _v2_router(state: ServerState) -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

    @router.get("/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/health/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": state.ready}, status_code=200 if state.ready else 503)

    @router.get("")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "churnops", "version": "1", "extensions": []}

    def named(name: str) -> ServedModel:
        model = _model_or_503(state)
        if name != model.name:
            raise HTTPException(404, f"no model named {name!r}; this server serves {model.name!r}")
        return model

    @router.get("/models/{name}", responses=INVALID)
    async def model_metadata(name: str) -> dict[str, Any]:
        model = named(name)
        return {
            "name": model.name,
            "versions": [model.version],
            "platform": f"churnops-{model.backend}",
            "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, len(model.features)]}],
            "outputs": [
                {"name": "probability", "datatype": "FP64", "shape": [-1]},
                {"name": "label", "datatype": "INT64", "shape": [-1]},
            ],
            "parameters": {
                **model.describe(),
                "variants": _variants(state),
                "ab_weight": state.settings.serving.ab_weight if state.challenger else 0.0,
                "ab_mode": state.settings.serving.ab_mode if state.challenger else "",
            },
        }

    @router.get("/models/{name}/ready", responses=INVALID)
    async def model_ready(name: str) -> JSONResponse:
        if name != state.settings.mlflow.model_name:
            raise HTTPException(
                404, f"no model named {name!r}; this server serves {state.settings.mlflow.model_name!r}"
            )
        return JSONResponse({"name": name, "ready": state.ready}, status_code=200 if state.ready else 503)

    @router.post("/models/{name}/infer", responses=SCORING_ERRORS)
    async def infer(name: str, body: InferRequest) -> dict[str, Any]:
        model = named(name)
        rows = _tensor_rows(model, body.inputs)
        model, proba = _score_rows(state, endpoint_label(f"/v2/models/{name}/infer"), rows)
        labels = (proba >= model.threshold).astype(np.int64)
        response: dict[str, Any] = {
            "model_name": model.name,
            "model_version": model.version,
            "outputs": [
                {"name": "probability", "datatype": "FP64", "shape": [len(proba)], "data": proba.tolist()},
                {"name": "label", "datatype": "INT64", "shape": [len(labels)], "data": labels.tolist()},
            ],
        }
        if body.id is not None:
            response["id"] = body.id
        if body.outputs:
            wanted = {o.get("name") for o in body.outputs}
            response["outputs"] = [o for o in response["outputs"] if o["name"] in wanted]
        return response

    return router


def _variants(state: ServerState) -> dict[str, str]:
    """variant -> version of what answers /predict."""
    found = {state.model.alias: state.model.version} if state.model else {}
    if state.challenger is not None:
        variant = SHADOW if state.settings.serving.ab_mode == "shadow" else CHALLENGER
        found[variant] = state.challenger.version
    return found


def _flat(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if isinstance(v, list):
            out.extend(_flat(v))
        else:
            out.append(v)
    return out


def _tensor_rows(model: ServedModel, inputs: list[InferTensor]) -> np.ndarray:
    """One [n, features] tensor, or one [n] (or [n, 1]) tensor per feature, as the model's matrix."""

    def numbers(tensor: InferTensor) -> np.ndarray:
        data = _flat(list(tensor.data))
        expected = int(np.prod(tensor.shape)) if tensor.shape else 0
        if any(d < 0 for d in tensor.shape) or len(data) != expected:
            raise HTTPException(422, f"input {tensor.name!r}: shape {tensor.shape} does not hold {len(data)} values")
        return np.array([math.nan if v is None else float(v) for v in data], dtype=np.float64)

    if len(inputs) == 1 and len(inputs[0].shape) == 2:
        tensor = inputs[0]
        if tensor.shape[1] != len(model.features):
            raise HTTPException(
                422,
                f"input {tensor.name!r}: {tensor.shape[1]} columns; version {model.version} takes "
                f"{len(model.features)}",
            )
        return numbers(tensor).reshape(tensor.shape)
    by_name = {t.name: t for t in inputs}
    unknown = sorted(set(by_name) - set(model.features))
    missing = [f for f in model.features if f not in by_name]
    if unknown or missing:
        raise HTTPException(
            422,
            "give one [n, features] tensor or one tensor per feature; "
            + "; ".join(
                p
                for p in (
                    f"missing {', '.join(missing)}" if missing else "",
                    f"unknown {', '.join(unknown)}" if unknown else "",
                )
                if p
            ),
        )
    columns = [numbers(by_name[f]) for f in model.features]
    if len({len(c) for c in columns}) != 1:
        raise HTTPException(422, "the feature tensors have different lengths")
    return np.column_stack(columns)


# --- MLflow scoring protocol -------------------------------------------------------------


def _mlflow_router(state: ServerState) -> APIRouter:
    router = APIRouter(tags=["mlflow scoring protocol"])

    @router.get("/ping")
    @router.get("/health")
    async def ping() -> Response:
        """MLflow's health check: 200 once a model serves (like /v2/health/ready), else 503."""
        return Response(status_code=200 if state.ready else 503)

    @router.post("/invocations", responses=SCORING_ERRORS)
    async def invocations(body: ScoringRequest) -> dict[str, Any]:
        model = _model_or_503(state)
        forms = ("dataframe_split", "dataframe_records", "inputs", "instances")
        given = [k for k in forms if getattr(body, k) is not None]
        if len(given) != 1:
            raise HTTPException(422, "give exactly one of dataframe_split, dataframe_records, inputs or instances")
        records, inputs = body.dataframe_records, body.inputs
        if body.instances is not None:  # rows as records, or as values in the model's feature order
            if body.instances and isinstance(body.instances[0], dict):
                records = body.instances
            else:
                inputs = body.instances  # type: ignore[assignment]
        if records is not None:
            rows = _matrix(model, records) if records else np.empty((0, 0))
        elif body.dataframe_split is not None:
            columns, data = body.dataframe_split.columns, body.dataframe_split.data
            if any(len(r) != len(columns) for r in data):
                raise HTTPException(422, "every row of dataframe_split.data needs one value per column")
            rows = _matrix(model, [dict(zip(columns, r, strict=True)) for r in data]) if data else np.empty((0, 0))
        elif isinstance(inputs, dict):
            lengths = {len(v) for v in inputs.values()}
            if len(lengths) > 1:
                raise HTTPException(422, "the input columns have different lengths")
            n = lengths.pop() if lengths else 0
            rows = _matrix(model, [{k: v[i] for k, v in inputs.items()} for i in range(n)]) if n else np.empty((0, 0))
        else:
            assert inputs is not None
            if any(len(r) != len(model.features) for r in inputs):
                raise HTTPException(
                    422, f"every row of {given[0]} needs {len(model.features)} values, in the model's feature order"
                )
            rows = np.array([[math.nan if v is None else float(v) for v in r] for r in inputs], dtype=np.float64)
        _, proba = _score_rows(state, "/invocations", rows)
        return {"predictions": proba.tolist()}

    return router


# --- metrics and admin -------------------------------------------------------------------


def _ops_router(state: ServerState, reload: Callable[[str], Any]) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/metrics")
    async def metrics() -> Response:
        if state.log is not None:
            state.metrics.log_depth.set(state.log.depth)
        body, kind = state.metrics.render()
        return Response(body, media_type=kind)

    @router.post("/admin/reload", responses=INVALID)
    async def admin_reload(
        body: ReloadRequest | None = None, authorization: str | None = Header(None)
    ) -> dict[str, str]:
        token = state.settings.serving.admin_token
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not token or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "admin endpoints need the configured bearer token", {"WWW-Authenticate": "Bearer"})
        if body is not None and "as_of" in body.model_fields_set:
            state.as_of, state.started = _naive_utc(body.as_of), time.time()
        return {"result": await reload("admin reload")}

    return router
