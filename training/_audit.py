"""The augmentation audit: what each language-model output changes, measured on a run's own held-out data against
its no-LLM control, with a paired bootstrap interval over users; and which outputs a cycle may use.

    judged pairs   cold items warmed by the judge's pairs        against the embedding simulator's pairs for the same
                                                                 items, as many per item (what the judge refines),
                                                                 both shown to the ranker as given pairs
    descriptions   described cold items encoded from their       against their text without the description (title,
                   text with the LLM's description               categories, existing text)
    profiles       held-out users the newcomer model serves      against the same users without it (the product as
                   who have an LLM profile, scored with it       served); only users whose profile was written from
                   (training._profiles: + weight * cos(profile,  events the model trained on (a profile that saw their
                   item text) on their warm items)               held-out events would be measured on its own source)

Both variants of an output are scored by the same fitted ranker on the same split, so the difference is the
output's alone. The rule (`use_outputs`): a cycle uses an output only where the workspace's previous audit found an
interval clear of zero in its favour, and only an output the served model has a place for (`USABLE_OUTPUTS`: not
profiles, which did not measurably help on MovieLens-100K's sparse-user protocols, docs/benchmarks.md); the
audit itself runs every cycle, used or not, so an output that starts to help is seen. A decision read from the
run before, never from the split it is reported on (as the timed choices are).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from catalog import Columns
from encoders import EmbeddingCache, WarmingConfig, encode_texts, item_text, simulate_users, warm_items
from monitor import GateMetric
from ranker.evaluate import ProtocolSplit, evaluate
from ranker.metrics import bootstrap_difference, per_user_accuracy
from training._fit import FittedRanker
from training._gate import gate_user_values
from training._profiles import profile_vectors, profiled_scorer, reached
from training._standins import pairs_matrix, synthetic_matrix
from training.defaults import (
    AUDITED_OUTPUTS,
    DESCRIPTIONS,
    JUDGED_PAIRS,
    PROFILE_WEIGHT,
    PROFILED_ITEMS,
    PROFILES,
    USABLE_OUTPUTS,
)

# Both item outputs act on items without history, but the audit reads the whole list's NDCG: the cold segment's
# recall rewards lifting cold items into every list, and random users named as takers did that (+0.079 cold
# Recall@20 over the simulator, interval clear of zero, on tests/training/test_warming.py's window) while costing the
# lists overall (-0.0073 NDCG@20). Profiles act on users with few events: NDCG (what the newcomer model was chosen
# on) over the profiled users.
AUDIT_SEGMENT, AUDIT_METRIC = "overall", "ndcg"
PROFILED_USERS, PROFILE_METRIC = "profiled_users", "ndcg"
AUDIT_LEVEL = 0.95


@dataclass(frozen=True)
class AuditRow:
    """One output's audit in one run: its effect on `metric` (output minus control, mean over the `users` the
    metric averages over) with a 95% paired bootstrap interval, how many entities it touched, whether the run's
    model used it and why, and what the run spent on it (tokens, seconds)."""

    output: str
    metric: str
    delta: float | None
    low: float | None
    high: float | None
    users: int
    entities: int
    used: bool
    reason: str
    tokens: int = 0
    seconds: float = 0.0

    @property
    def helps(self) -> bool:
        return helps(self.low)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def helps(low: float | None) -> bool:
    """An output helps when its interval's lower end is above zero."""
    return low is not None and low > 0


@dataclass(frozen=True)
class OutputUse:
    """Whether a cycle uses one output, and why."""

    used: bool
    reason: str


def use_outputs(previous: pl.DataFrame | None, usable: tuple[str, ...] = USABLE_OUTPUTS) -> dict[str, OutputUse]:
    """For each audited output: used when the workspace's previous audit (its rows: output, metric, delta, low,
    high) found it helps and the product can use it (`usable`); off otherwise, with the reason. An output the
    product cannot use is off whatever its audit found, and the reason shows the finding."""
    rows = {} if previous is None else {row["output"]: row for row in previous.to_dicts()}
    out: dict[str, OutputUse] = {}
    for output in AUDITED_OUTPUTS:
        row = rows.get(output)
        audited_only = "" if output in usable else "audited only (the served model has no place for it); "
        if row is None or row["delta"] is None:
            out[output] = OutputUse(False, f"off: {audited_only}no earlier audit measured it")
            continue
        shown = f"{row['metric']} {row['delta']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}] in the audit before"
        used = helps(row["low"]) and output in usable
        out[output] = OutputUse(used, f"{'used' if used else 'off'}: {audited_only}{shown}")
    return out


def _compare(
    output: FittedRanker, control: FittedRanker, split: ProtocolSplit, k: int
) -> tuple[str, float | None, float | None, float | None, int]:
    """(metric name, mean difference, low, high, users): output minus control on the audit metric, per user."""
    metric = GateMetric(segment=AUDIT_SEGMENT, metric=AUDIT_METRIC, k=k)
    mine = gate_user_values(output.evaluate(split, k).recs, split, metric)
    theirs = gate_user_values(control.evaluate(split, k).recs, split, metric)
    return metric.name, *_paired(mine, theirs, "value")


def _paired(
    mine: pl.DataFrame, theirs: pl.DataFrame, column: str
) -> tuple[float | None, float | None, float | None, int]:
    """(mean difference, low, high, users) of `column`, output (`mine`) minus control (`theirs`), over the users
    both frames hold, with a paired bootstrap interval; (None, None, None, 0) without any."""
    both = mine.select(Columns.user, column).join(
        theirs.select(Columns.user, column), on=Columns.user, suffix="_control"
    )
    if both.is_empty():
        return None, None, None, 0
    delta, low, high = bootstrap_difference(
        both[column].to_numpy(), both[f"{column}_control"].to_numpy(), level=AUDIT_LEVEL
    )
    return delta, low, high, both.height


def _with_standins(
    fitted: FittedRanker, standins: np.ndarray, text: np.ndarray | None = None, item_given: np.ndarray | None = None
) -> FittedRanker:
    inputs = replace(fitted.served.inputs, item_standin=standins)
    if text is not None:
        inputs = replace(inputs, text=text)
    if item_given is not None:
        inputs = replace(inputs, item_given=item_given)
    return FittedRanker(fitted.ranker, replace(fitted.served, inputs=inputs), fitted.report)


def simulator_at_same_count(content: np.ndarray, user_cf: np.ndarray, given: sp.csr_array) -> sp.csr_array:
    """(items x users) weight-1 pairs: for each item `given` has pairs for, the embedding simulator's top users by
    the item's content stand-in, as many as `given` has for it; no rows elsewhere."""
    counts = np.diff(given.indptr)
    items = np.flatnonzero(counts)
    rows, cols = [], []
    if items.size:
        proposed = simulate_users(content[items], user_cf, int(counts.max()))
        for row, item in enumerate(items):
            start, end = proposed.indptr[row], proposed.indptr[row + 1]
            best = np.argsort(-proposed.data[start:end], kind="stable")[: counts[item]]
            cols.append(proposed.indices[start:end][best])
            rows.append(np.full(best.size, item))
    return pairs_matrix(rows, cols, given.shape)


def audit_judged_pairs(
    fitted: FittedRanker, split: ProtocolSplit, judged: pl.DataFrame | None, *, k: int, use: OutputUse
) -> AuditRow | None:
    """The judge's pairs (user_id, item_id, weight) against the embedding simulator's at the same count, for the
    items without history they name (each warmed from its content stand-in, as `warmed_standins` warms it); None
    when they name none."""
    if judged is None or judged.is_empty():
        return None
    inputs = fitted.served.inputs
    warm = np.flatnonzero(inputs.popularity > 0)
    given = synthetic_matrix(judged, split.index, warm)
    if given.nnz == 0:
        return None
    warming = fitted.served.warming
    content = warming.content if warming is not None else inputs.item_standin
    config = warming.config if warming is not None else WarmingConfig(simulate=False)
    control = simulator_at_same_count(content, inputs.user_cf, given)
    items = np.flatnonzero(np.diff(given.indptr) > 0)

    # Both variants reach the ranker as given pairs (its `given_pairs` feature), as many per item: only the pairs
    # differ.
    counts = np.zeros(inputs.n_items, np.float32) if inputs.item_given is None else inputs.item_given.copy()
    counts[items] = np.diff(given.indptr)[items]

    def warmed(pairs: sp.csr_array) -> FittedRanker:
        # Only the judged items differ between the variants: the others keep the stand-ins the model serves, and
        # warming them again (every item, on a log without times) took most of a CiteULike audit's time.
        standins = inputs.item_standin.copy()
        standins[items] = warm_items(pairs[items], inputs.user_cf, content[items], inputs.item_cf, config, among=warm)
        return _with_standins(fitted, standins, item_given=counts)

    metric, delta, low, high, users = _compare(warmed(given), warmed(control), split, k)
    entities = int(items.size)
    return AuditRow(JUDGED_PAIRS, metric, delta, low, high, users, entities, use.used, use.reason)


def with_descriptions(items: pl.DataFrame, descriptions: pl.DataFrame | None) -> pl.DataFrame:
    """`items` with each described item's description appended to its `text` (what the encoder reads)."""
    if descriptions is None or descriptions.is_empty():
        return items
    described = descriptions.select(Columns.item, pl.col("description").alias("_description"))
    joined = items.join(described, on=Columns.item, how="left")
    text = pl.col(Columns.text) if Columns.text in items.columns else pl.lit(None, dtype=pl.String)
    combined = pl.concat_str([text, pl.col("_description")], separator=" ", ignore_nulls=True)
    return joined.with_columns(
        pl.when(pl.col("_description").is_not_null()).then(combined).otherwise(text).alias(Columns.text)
    ).drop("_description")


def audit_descriptions(
    fitted: FittedRanker,
    split: ProtocolSplit,
    items: pl.DataFrame,
    descriptions: pl.DataFrame | None,
    *,
    k: int,
    cache_dir: Path,
    use: OutputUse,
) -> AuditRow | None:
    """Described items without history encoded with their descriptions against without (`items`: the catalogue
    without descriptions); None when none is described. The text
    embedding changes, and the content stand-in with it where synthetic interactions did not replace it."""
    if descriptions is None or descriptions.is_empty():
        return None
    inputs = fitted.served.inputs
    described = split.index.item_ids.is_in(descriptions[Columns.item].implode()).to_numpy()
    warmed = fitted.served.warming.items if fitted.served.warming is not None else np.zeros_like(described)
    rows = np.flatnonzero(described & (inputs.popularity == 0))
    if rows.size == 0:
        return None
    cache = EmbeddingCache.in_cache_dir(cache_dir)
    in_order = pl.DataFrame({Columns.item: split.index.item_ids}).join(items, on=Columns.item, how="left")
    plain = in_order[rows.tolist()]
    variants = {}
    for name, frame in (("with", with_descriptions(plain, descriptions)), ("without", plain)):
        text = inputs.text.copy()
        text[rows] = encode_texts(item_text(frame).to_list(), cache=cache)
        standins = inputs.item_standin.copy()
        content = rows[~warmed[rows]]
        if content.size:
            standins[content] = fitted.served.standins.transform(text[content])
        variants[name] = _with_standins(fitted, standins, text)
    metric, delta, low, high, users = _compare(variants["with"], variants["without"], split, k)
    return AuditRow(DESCRIPTIONS, metric, delta, low, high, users, int(rows.size), use.used, use.reason)


def auditable_profiles(split: ProtocolSplit, profiles: pl.DataFrame | None) -> pl.DataFrame | None:
    """The rows of `profiles` (user_id, profile, items: the ids it was written from) of the split's held-out users
    that were written from the split's training events alone; None when none is (a table without `items` cannot
    say what a profile saw, so none of it is auditable)."""
    if profiles is None or profiles.is_empty() or PROFILED_ITEMS not in profiles.columns:
        return None
    held = profiles.join(split.truth.select(Columns.user).unique(), on=Columns.user, how="semi")
    seen = (
        held.select(Columns.user, pl.col(PROFILED_ITEMS).alias(Columns.item))
        .explode(Columns.item)
        .drop_nulls(Columns.item)
        .join(split.train.select(Columns.user, Columns.item), on=[Columns.user, Columns.item], how="anti")
    )
    kept = held.join(seen.select(Columns.user).unique(), on=Columns.user, how="anti")
    return kept if kept.height else None


def audit_profiles(
    fitted: FittedRanker,
    split: ProtocolSplit,
    profiles: pl.DataFrame | None,
    *,
    k: int,
    cache_dir: Path,
    use: OutputUse,
    weight: float = PROFILE_WEIGHT,
) -> AuditRow | None:
    """Held-out users with an auditable profile (`auditable_profiles`) whom it reaches (the newcomer route's users:
    `training._profiles.reached`), scored with it (`training.profiled_scorer` at `weight`) against without (the
    product as served), NDCG at k over those users; None when there are none."""
    kept = auditable_profiles(split, profiles)
    if kept is None:
        return None
    vectors = profile_vectors(kept, split.index.user_ids, cache_dir=cache_dir)
    touched = reached(fitted, vectors)
    if not touched.any():
        return None
    users = split.index.user_ids.filter(pl.Series(touched))
    mine = evaluate(split, profiled_scorer(fitted, split, vectors, weight), k=k).recs
    theirs = fitted.evaluate(split, k).recs
    values = [
        per_user_accuracy(recs, split.truth, k).filter(pl.col(Columns.user).is_in(users.implode()))
        for recs in (mine, theirs)
    ]
    delta, low, high, paired = _paired(*values, PROFILE_METRIC)
    if not paired:
        return None
    metric = f"{PROFILED_USERS}/{PROFILE_METRIC}@{k}"
    return AuditRow(PROFILES, metric, delta, low, high, paired, users.len(), use.used, use.reason)


@dataclass(frozen=True, eq=False)
class AuditInputs:
    """What a cycle audits: the workspace's judged pairs (user_id, item_id, weight), descriptions (item_id,
    description) and user profiles (user_id, profile, items), the catalogue without descriptions, whether the cycle
    used each output and why, and the embedding cache's folder."""

    judged: pl.DataFrame | None
    descriptions: pl.DataFrame | None
    items: pl.DataFrame
    uses: Mapping[str, OutputUse]
    cache_dir: Path
    profiles: pl.DataFrame | None = None


def audit_outputs(fitted: FittedRanker, split: ProtocolSplit, given: AuditInputs, *, k: int) -> list[AuditRow]:
    """The audit row of each output the workspace holds and the split can measure (see the module doc)."""
    rows = [
        audit_judged_pairs(fitted, split, given.judged, k=k, use=given.uses[JUDGED_PAIRS]),
        audit_descriptions(
            fitted, split, given.items, given.descriptions, k=k, cache_dir=given.cache_dir, use=given.uses[DESCRIPTIONS]
        ),
        audit_profiles(fitted, split, given.profiles, k=k, cache_dir=given.cache_dir, use=given.uses[PROFILES]),
    ]
    return [row for row in rows if row is not None]
