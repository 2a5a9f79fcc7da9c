"""The metrics history: runs, their metrics, augmentation volume, segment sizes and model promotions.

SQLAlchemy over SQLite by default (`WORKSPACE/metrics.sqlite`) or PostgreSQL by URL. A run is recorded twice:
`start_run` when it begins (status `running`) and `finish_run` when it ends, which writes the run's status and
every row it measured in one transaction, so a run killed half-way leaves no metric rows behind, and a rerun of
the same window finds no completed run and records it afresh. The composite primary keys make a duplicate row
an error rather than a silent double count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import polars as pl
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    delete,
    event,
    make_url,
    select,
    text,
)
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from catalog import ConfigError, WorkspaceError, redact

SCHEMA_VERSION = 4
# What each schema version adds to the one before, applied in order to an older store opened for writing.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: ("ALTER TABLE augmentation ADD COLUMN backend VARCHAR(160)",),  # which model, precision and device ran
    3: (  # cold items synthetic interactions warmed; the embedding simulator's pairs' precision
        "ALTER TABLE augmentation ADD COLUMN cold_items_warmed INTEGER",
        "ALTER TABLE augmentation ADD COLUMN simulator_precision FLOAT",
    ),
    4: (),  # the augmentation_audit table (a new table: created when the store is opened for writing)
}
RUNNING, COMPLETED, FAILED = "running", "completed", "failed"


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite (which keeps no zone) as on PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value} given to the metrics store; pass UTC-aware times")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    flow: Mapped[str] = mapped_column(String(64), index=True)
    dataset: Mapped[str] = mapped_column(String(128))
    # Runs with the same flow, data set, window and parameters are the same unit of work (see run_key).
    key: Mapped[str] = mapped_column(String(64), index=True)
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Metric(Base):
    __tablename__ = "metrics"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    protocol: Mapped[str] = mapped_column(String(32), primary_key=True)
    segment: Mapped[str] = mapped_column(String(32), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    k: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class Augmentation(Base):
    __tablename__ = "augmentation"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    items_augmented: Mapped[int] = mapped_column(Integer, default=0)
    users_augmented: Mapped[int] = mapped_column(Integer, default=0)
    synthetic_rows: Mapped[int] = mapped_column(Integer, default=0)
    cache_hits: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    backend: Mapped[str | None] = mapped_column(String(160), nullable=True)  # e.g. local/bf16/cpu:smollm2-...
    # Precision of synthetic pairs against the real interactions that arrived later, when measured.
    synthetic_precision: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Cold items the run's model serves through an ID embedding its synthetic interactions trained.
    cold_items_warmed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Precision of the embedding simulator's synthetic pairs against the run's real held-out interactions.
    simulator_precision: Mapped[float | None] = mapped_column(Float, nullable=True)


class AugmentationAudit(Base):
    """What one language-model output changed in one run, against its no-LLM control on the run's held-out data
    (training.AuditRow): the metric's mean difference with its 95% paired bootstrap interval, whether the run's
    model used the output and why, and what the run spent on it."""

    __tablename__ = "augmentation_audit"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    output: Mapped[str] = mapped_column(String(32), primary_key=True)  # judged_pairs | descriptions | profiles
    metric: Mapped[str] = mapped_column(String(64))  # e.g. cold/recall@20
    delta: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: no user to measure it on
    low: Mapped[float | None] = mapped_column(Float, nullable=True)
    high: Mapped[float | None] = mapped_column(Float, nullable=True)
    users: Mapped[int] = mapped_column(Integer)  # users the metric averages over
    entities: Mapped[int] = mapped_column(Integer)  # items (or users) the output touched
    used: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    tokens: Mapped[int] = mapped_column(Integer, default=0)  # spent by this run on the output
    seconds: Mapped[float] = mapped_column(Float, default=0.0)


class SegmentCount(Base):
    __tablename__ = "segment_counts"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    as_of: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # item | user
    segment: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


class Transition(Base):
    """How many entities moved between segments since the previous run (e.g. cold -> tail)."""

    __tablename__ = "transitions"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    from_segment: Mapped[str] = mapped_column(String(32), primary_key=True)
    to_segment: Mapped[str] = mapped_column(String(32), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)


class Promotion(Base):
    __tablename__ = "promotions"
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    candidate_version: Mapped[str] = mapped_column(String(64))
    incumbent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    promoted: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str] = mapped_column(Text)
    gate: Mapped[dict[str, Any]] = mapped_column(JSON)
    candidate_metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    incumbent_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)


def run_key(flow: str, dataset: str, window_end: datetime | None, parameters: Mapping[str, Any]) -> str:
    """The identity of a unit of work: a rerun with the same key is the same run, to be skipped once done."""
    payload = json.dumps(
        {"flow": flow, "dataset": dataset, "window_end": str(window_end), "parameters": parameters},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


# The dashboard gets the store URL through this variable: a command line is visible to every user in `ps`.
DASHBOARD_STORE_ENV = "WARMSTART_DASHBOARD_STORE"


def sqlite_url(path: Path, *, read_only: bool = False) -> str:
    """The SQLAlchemy URL of a SQLite file; read-only opens it so that no write can happen by mistake.

    A URI filename, percent-encoded twice (SQLAlchemy decodes once, SQLite once), so that a path holding `#`,
    `?` or `%` names that very file instead of silently opening another one."""
    mode = "mode=ro&" if read_only else ""
    return f"sqlite:///file:{quote(quote(str(path.resolve())))}?{mode}uri=true"


@dataclass
class RunRecord:
    """What a finished run measured; `finish_run` writes it in one transaction."""

    status: str = COMPLETED
    model_version: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    metrics: pl.DataFrame | None = None  # protocol, segment, metric, k, value
    as_of: datetime | None = None
    augmentation: dict[str, Any] | None = None
    segment_counts: pl.DataFrame | None = None  # kind, segment, count
    transitions: pl.DataFrame | None = None  # kind, from_segment, to_segment, count
    promotion: dict[str, Any] | None = None
    audit: list[dict[str, Any]] | None = None  # augmentation_audit rows (training.AuditRow.as_dict)
    error: str | None = None

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the seconds the block takes to `timings[stage]`."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started


@dataclass
class ActiveRun:
    """A run in progress (see `MetricsStore.run`): its id and the record its stages fill in."""

    run_id: str
    record: RunRecord


def _rows(frame: pl.DataFrame | None, columns: Iterable[str]) -> list[dict[str, Any]]:
    if frame is None:
        return []
    missing = set(columns) - set(frame.columns)
    if missing:
        raise ValueError(f"frame lacks columns {sorted(missing)}")
    return frame.select(list(columns)).to_dicts()


def shown_url(url: str) -> str:
    """`url` as messages may show it: SQLAlchemy's own rendering with the password hidden, or, where SQLAlchemy
    cannot parse it, `redact`'s."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError, TypeError):
        return redact(url)


class MetricsStore:
    """The metrics history behind one SQLAlchemy URL."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        options: dict[str, Any] = {}
        if read_only and url.startswith("postgresql"):
            # The server refuses every write in these sessions: a dashboard cannot change the history.
            options["connect_args"] = {"options": "-c default_transaction_read_only=on"}
        try:
            self.engine: Engine = create_engine(url, future=True, **options)
        except (SQLAlchemyError, ImportError) as error:
            raise ConfigError(redact(f"cannot use metrics store URL {shown_url(url)!r}: {error}")) from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._check_schema()

    @classmethod
    def for_workspace(cls, root: Path, url: str | None = None, *, read_only: bool = False) -> MetricsStore:
        """`url` if given, else the SQLite file WORKSPACE/metrics.sqlite."""
        if url:
            return cls(url, read_only=read_only)
        path = Path(root) / "metrics.sqlite"
        if read_only and not path.is_file():
            raise WorkspaceError(f"no metrics store at {path}: run `warmstart backfill` or a refresh first.")
        path.parent.mkdir(parents=True, exist_ok=True)
        return cls(sqlite_url(path, read_only=read_only), read_only=read_only)

    def _check_schema(self) -> None:
        try:
            if not self.read_only:
                self._create_tables()
            with Session(self.engine) as session:
                versions = session.scalars(select(SchemaVersion.version)).all()
                if not versions and not self.read_only:
                    session.add(SchemaVersion(version=SCHEMA_VERSION, applied_at=datetime.now(UTC)))
                    try:
                        session.commit()
                    except IntegrityError:  # another process created the store at the same moment
                        session.rollback()
                    versions = session.scalars(select(SchemaVersion.version)).all()
        except SQLAlchemyError as error:
            raise WorkspaceError(redact(f"cannot open the metrics store {self._shown_url}: {error}")) from None
        if versions and max(versions) < SCHEMA_VERSION and not self.read_only:
            versions = [self._migrate(max(versions))]
        if versions and max(versions) != SCHEMA_VERSION:
            raise WorkspaceError(
                f"metrics store {self._shown_url} has schema version {max(versions)}; this warmstart writes "
                f"version {SCHEMA_VERSION}. Use a matching warmstart or a new store (an older store is upgraded "
                "when opened for writing)."
            )

    def _migrate(self, version: int) -> int:
        """Bring a store of an older schema `version` up to SCHEMA_VERSION in one transaction; returns the version
        the store then has (a concurrent process may have migrated it first)."""
        try:
            with Session(self.engine) as session, session.begin():
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[target]:
                        session.execute(text(statement))
                    session.add(SchemaVersion(version=target, applied_at=datetime.now(UTC)))
        except SQLAlchemyError:  # another process migrated it at the same moment: read what it left
            pass
        with Session(self.engine) as session:
            return max(session.scalars(select(SchemaVersion.version)).all())

    def _create_tables(self, attempts: int = 3) -> None:
        """Create missing tables. Two processes opening a new store at once (a flow and a reader, say) can both
        see a table missing and both create it; the loser retries, and then finds it there."""
        for attempt in range(attempts):
            try:
                Base.metadata.create_all(self.engine)
                return
            except (OperationalError, ProgrammingError, IntegrityError):
                if attempt == attempts - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))

    @property
    def _shown_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------------------------------ writes

    def start_run(
        self,
        run_id: str,
        *,
        flow: str,
        dataset: str,
        parameters: Mapping[str, Any],
        window_start: datetime | None = None,
        window_end: datetime | None = None,
    ) -> None:
        """Record a run as `running`; a previous unfinished run of the same unit of work is marked failed."""
        key = run_key(flow, dataset, window_end, parameters)
        with Session(self.engine) as session, session.begin():
            for stale in session.scalars(select(Run).where(Run.key == key, Run.status == RUNNING)):
                stale.status = FAILED
                stale.error = f"interrupted: superseded by run {run_id}"
            session.add(
                Run(
                    id=run_id,
                    flow=flow,
                    dataset=dataset,
                    key=key,
                    window_start=window_start,
                    window_end=window_end,
                    status=RUNNING,
                    parameters=dict(parameters),
                    started_at=datetime.now(UTC),
                    timings={},
                )
            )

    def finish_run(self, run_id: str, record: RunRecord) -> None:
        """Write the run's outcome and every row it measured, all or nothing."""
        as_of = record.as_of
        if record.metrics is not None and as_of is None:
            raise ValueError("metrics need an as_of time")
        with Session(self.engine) as session, session.begin():
            run = session.get(Run, run_id)
            if run is None:
                raise WorkspaceError(f"run {run_id} was never started in {self._shown_url}")
            for table in (Metric, Augmentation, AugmentationAudit, SegmentCount, Transition, Promotion):
                session.execute(delete(table).where(table.run_id == run_id))
            run.status = record.status
            run.model_version = record.model_version
            run.timings = {name: round(seconds, 3) for name, seconds in record.timings.items()}
            run.finished_at = datetime.now(UTC)
            run.error = record.error
            metric_rows = _rows(record.metrics, ("protocol", "segment", "metric", "k", "value"))
            session.add_all(Metric(run_id=run_id, as_of=as_of, **row) for row in metric_rows)
            if record.augmentation is not None:
                session.add(Augmentation(run_id=run_id, **record.augmentation))
            count_rows = _rows(record.segment_counts, ("kind", "segment", "count"))
            session.add_all(SegmentCount(run_id=run_id, as_of=as_of or run.finished_at, **row) for row in count_rows)
            moves = _rows(record.transitions, ("kind", "from_segment", "to_segment", "count"))
            session.add_all(Transition(run_id=run_id, **row) for row in moves)
            if record.promotion is not None:
                session.add(Promotion(run_id=run_id, decided_at=datetime.now(UTC), **record.promotion))
            session.add_all(AugmentationAudit(run_id=run_id, **row) for row in record.audit or [])

    @contextlib.contextmanager
    def run(
        self,
        run_id: str,
        *,
        flow: str,
        dataset: str,
        parameters: Mapping[str, Any],
        window_start: datetime | None = None,
        window_end: datetime | None = None,
    ) -> Iterator[ActiveRun]:
        """Own one run from start to finish: recorded as running on entry; on a clean exit its record (filled in
        by the block) is written with the total time in one transaction; on any exception, even an interrupt, the
        run is recorded as failed with no rows and the exception goes on."""
        self.start_run(
            run_id, flow=flow, dataset=dataset, parameters=parameters, window_start=window_start, window_end=window_end
        )
        active = ActiveRun(run_id, RunRecord())
        started = time.perf_counter()
        try:
            yield active
        except BaseException as error:
            self.fail_run(run_id, error)
            raise
        active.record.timings["total"] = time.perf_counter() - started
        self.finish_run(run_id, active.record)

    def record_promotion(
        self, run_id: str, *, dataset: str, candidate: str, incumbent: str | None, reason: str
    ) -> None:
        """Record a promotion made by hand (or a rollback) as a completed run of flow `promote`."""
        with self.run(run_id, flow="promote", dataset=dataset, parameters={"version": candidate}) as run:
            run.record.model_version = candidate
            run.record.promotion = {
                "candidate_version": candidate,
                "incumbent_version": incumbent,
                "promoted": True,
                "reason": reason,
                "gate": {},
                "candidate_metrics": {},
                "incumbent_metrics": None,
            }

    def fail_run(self, run_id: str, error: BaseException) -> None:
        """Record that a run stopped on `error`: status failed, the error's type and message, no rows."""
        self.finish_run(run_id, RunRecord(status=FAILED, error=f"{type(error).__name__}: {error}"))

    def mark_interrupted(self, run_id: str, reason: str) -> bool:
        """Record a run left `running` by a killed process as failed, with `reason`; whether it was running."""
        with Session(self.engine) as session, session.begin():
            run = session.get(Run, run_id)
            if run is None or run.status != RUNNING:
                return False
            run.status, run.error, run.finished_at = FAILED, reason, datetime.now(UTC)
            return True

    # ------------------------------------------------------------------------------------------ reads

    def run_status(self, run_id: str) -> str | None:
        """`running`, `completed` or `failed`; None for a run never started here."""
        with Session(self.engine) as session:
            run = session.get(Run, run_id)
            return run.status if run is not None else None

    def completed_run(
        self, *, flow: str, dataset: str, window_end: datetime | None, parameters: Mapping[str, Any]
    ) -> str | None:
        """The id of a completed run of this unit of work, if there is one."""
        key = run_key(flow, dataset, window_end, parameters)
        with Session(self.engine) as session:
            return session.scalars(
                select(Run.id).where(Run.key == key, Run.status == COMPLETED).order_by(Run.started_at)
            ).first()

    def last_completed_run(self, *, flow: str, dataset: str, parameters: Mapping[str, Any] | None = None) -> str | None:
        """The id of the latest completed run of `flow` on `dataset` whose parameters include `parameters`, if any."""
        wanted = dict(parameters or {})
        statement = (
            select(Run.id, Run.parameters)
            .where(Run.flow == flow, Run.dataset == dataset, Run.status == COMPLETED)
            .order_by(Run.started_at.desc(), Run.id.desc())
        )
        with Session(self.engine) as session:
            for run_id, given in session.execute(statement):
                if all((given or {}).get(name) == value for name, value in wanted.items()):
                    return run_id
        return None

    def run_metrics(self, run_id: str) -> pl.DataFrame:
        """(protocol, segment, metric, k, value) of one run."""
        statement = select(Metric.protocol, Metric.segment, Metric.metric, Metric.k, Metric.value).where(
            Metric.run_id == run_id
        )
        return self._frame(statement)

    def promoted_version(self, *, flow: str, dataset: str) -> str | None:
        """The model version the latest completed run of `flow` on `dataset` promoted (the current model)."""
        with Session(self.engine) as session:
            return session.scalars(
                select(Promotion.candidate_version)
                .join(Run, Run.id == Promotion.run_id)
                .where(Run.flow == flow, Run.dataset == dataset, Run.status == COMPLETED, Promotion.promoted)
                .order_by(Run.window_end.desc(), Run.started_at.desc())
            ).first()

    def _frame(self, statement: Any) -> pl.DataFrame:
        """Rows of `statement` as a frame typed from its columns; JSON columns become JSON text (readable in a
        table, comparable, writable anywhere)."""
        schema, json_columns = {}, []
        for column in statement.selected_columns:
            kind = column.type
            if isinstance(kind, JSON):
                json_columns.append(column.name)
            schema[column.name] = next((dtype for sql, dtype in _POLARS_TYPES if isinstance(kind, sql)), pl.String)
        with self.engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(statement)]
        for row in rows:
            for name in json_columns:
                row[name] = json.dumps(row[name], sort_keys=True) if row[name] is not None else None
        return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)

    def runs(self, flow: str | None = None) -> pl.DataFrame:
        """Every run, oldest first."""
        statement = select(
            Run.id.label("run_id"),
            Run.flow,
            Run.dataset,
            Run.window_start,
            Run.window_end,
            Run.status,
            Run.model_version,
            Run.started_at,
            Run.finished_at,
            Run.timings,
            Run.parameters,
            Run.error,
        ).order_by(Run.started_at, Run.id)
        if flow is not None:
            statement = statement.where(Run.flow == flow)
        return self._frame(statement)

    def metrics(self, *, protocol: str | None = None, completed_only: bool = True) -> pl.DataFrame:
        """Metric rows (with each run's flow and status), oldest first."""
        statement = (
            select(
                Metric.run_id,
                Metric.as_of,
                Metric.protocol,
                Metric.segment,
                Metric.metric,
                Metric.k,
                Metric.value,
                Run.flow,
            )
            .join(Run, Run.id == Metric.run_id)
            .order_by(Metric.as_of, Metric.run_id, Metric.protocol, Metric.segment, Metric.metric, Metric.k)
        )
        if completed_only:
            statement = statement.where(Run.status == COMPLETED)
        if protocol is not None:
            statement = statement.where(Metric.protocol == protocol)
        return self._frame(statement)

    def augmentation(self) -> pl.DataFrame:
        statement = select(
            Augmentation.run_id,
            Run.started_at,
            Augmentation.items_augmented,
            Augmentation.users_augmented,
            Augmentation.synthetic_rows,
            Augmentation.cache_hits,
            Augmentation.rejected,
            Augmentation.tokens,
            Augmentation.seconds,
            Augmentation.backend,
            Augmentation.synthetic_precision,
            Augmentation.cold_items_warmed,
            Augmentation.simulator_precision,
        ).join(Run, Run.id == Augmentation.run_id)
        return self._frame(statement.order_by(Run.started_at))

    def augmentation_audit(self, run_id: str | None = None) -> pl.DataFrame:
        """The audit rows of completed runs (of `run_id` alone where given), oldest run first."""
        statement = (
            select(
                AugmentationAudit.run_id,
                Run.started_at,
                Run.window_end,
                AugmentationAudit.output,
                AugmentationAudit.metric,
                AugmentationAudit.delta,
                AugmentationAudit.low,
                AugmentationAudit.high,
                AugmentationAudit.users,
                AugmentationAudit.entities,
                AugmentationAudit.used,
                AugmentationAudit.reason,
                AugmentationAudit.tokens,
                AugmentationAudit.seconds,
            )
            .join(Run, Run.id == AugmentationAudit.run_id)
            .where(Run.status == COMPLETED)
        )
        if run_id is not None:
            statement = statement.where(AugmentationAudit.run_id == run_id)
        return self._frame(statement.order_by(Run.started_at, AugmentationAudit.run_id, AugmentationAudit.output))

    def segment_counts(self) -> pl.DataFrame:
        statement = select(
            SegmentCount.run_id, SegmentCount.as_of, SegmentCount.kind, SegmentCount.segment, SegmentCount.count
        ).order_by(SegmentCount.as_of, SegmentCount.kind, SegmentCount.segment)
        return self._frame(statement)

    def transitions(self) -> pl.DataFrame:
        statement = (
            select(
                Transition.run_id,
                Run.window_end.label("as_of"),
                Transition.kind,
                Transition.from_segment,
                Transition.to_segment,
                Transition.count,
            )
            .join(Run, Run.id == Transition.run_id)
            .order_by(Run.window_end, Transition.kind, Transition.from_segment, Transition.to_segment)
        )
        return self._frame(statement)

    def promotions(self) -> pl.DataFrame:
        statement = select(
            Promotion.run_id,
            Promotion.decided_at,
            Promotion.candidate_version,
            Promotion.incumbent_version,
            Promotion.promoted,
            Promotion.reason,
            Promotion.candidate_metrics,
            Promotion.incumbent_metrics,
        ).order_by(Promotion.decided_at)
        return self._frame(statement)


# SQL column types -> polars dtypes (UTCDateTime before DateTime: it is the one the tables use).
_POLARS_TYPES: list[tuple[type, Any]] = [
    (Boolean, pl.Boolean),
    (Integer, pl.Int64),
    (Float, pl.Float64),
    (UTCDateTime, pl.Datetime("us", "UTC")),
    (JSON, pl.String),
    (String, pl.String),
]


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    # WAL lets the dashboard read while a flow writes; foreign keys are off by default in SQLite.
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    with contextlib.suppress(Exception):  # a read-only connection cannot change the journal mode; it reads anyway
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
