"""The refresh and augment-new flows on a real MovieLens-100K workspace, and encoding on a Dask LocalCluster."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from prefect import flow

import training
from catalog import Columns, Tables, Workspace
from encoders import MODEL_NAME
from flows import stages, tasks
from flows.refresh import augment_new, encode_items, refresh
from flows.runners import with_runner
from flows.settings import WarmstartSettings, apply_text_backend
from monitor import MetricsStore


@pytest.fixture
def workspace(ml100k_workspace: Path) -> Path:
    return ml100k_workspace


PRODUCT_AND_REFERENCE = ("temporal", "temporal:recent_popularity")


def _judged_by_an_oracle(root: Path) -> pl.DataFrame:
    """Write the pairs an oracle judge would give as the workspace's judged pairs: for each item without history
    in the refresh's split, its held-out users who have history (the users a judge is shown). Returns them."""
    space = Workspace(root)
    split = training.dataset_plan(stages.workspace_dataset(space), "temporal").split
    seen, known = (split.train.select(column).unique() for column in (Columns.item, Columns.user))
    pairs = split.truth.join(seen, on=Columns.item, how="anti").join(known, on=Columns.user, how="semi")
    frame = pairs.select(Columns.user, Columns.item).with_columns(
        pl.lit(0.9).alias("weight"), pl.lit("oracle").alias("run_id")
    )
    space.write(Tables.synthetic_interactions, frame, run_id="oracle", source="tests: an oracle judge")
    return frame


def test_refresh_records_metrics_gates_and_promotes(prefect_api: str, workspace: Path) -> None:
    # The language model describes (simulate=False: the judged pairs are an oracle's, written here; the judge's own
    # step runs in tests/flows/test_augment_cli.py).
    oracle = _judged_by_an_oracle(workspace)
    # (the defaults, not the rolling choice: tests/flows/test_refresh_cli.py; the runs differ only in what the
    # first run's audit lets the second train on)
    first = refresh(max_epochs=3, augment_limit=1, simulate=False, choose_timed=False)
    second = refresh(max_epochs=3, augment_limit=1, simulate=False, choose_timed=False)
    store = MetricsStore.for_workspace(workspace, read_only=True)
    runs = store.runs()
    assert runs["flow"].to_list() == ["refresh", "refresh"]
    assert runs["status"].to_list() == ["completed", "completed"]
    assert set(runs["model_version"]) == {first.run_id, second.run_id}
    promotions = store.promotions()
    # Each candidate is held to recent popularity on the same held-out data; the reason says how it fared.
    assert all("recent popularity" in reason for reason in promotions["reason"])
    metrics = store.metrics().filter(pl.col("run_id") == first.run_id)
    ndcg = metrics.filter((pl.col("segment") == "overall") & (pl.col("metric") == "ndcg") & (pl.col("k") == 20))
    product, reference = (ndcg.filter(pl.col("protocol") == p)["value"].item() for p in PRODUCT_AND_REFERENCE)
    # The first run has no incumbent: only the reference line can refuse it. Below the line, the gate refuses only
    # a drop its bootstrap interval shows; a drop within noise is promoted and named so (monitor.decide).
    noise = "drops within noise: overall/ndcg@20 " in promotions["reason"][0]
    assert promotions["promoted"][0] is (product >= reference or noise)
    assert promotions["incumbent_version"].to_list() == [None, first.run_id if promotions["promoted"][0] else None]
    if promotions["promoted"][0]:
        # The second candidate trained on the judged pairs as well: it is not the incumbent again.
        assert second.decision.incumbent is not None and second.decision.candidate != second.decision.incumbent
    current = Workspace(workspace).models.current("lightgbm")
    promoted = [run for run, ok in zip((first.run_id, second.run_id), promotions["promoted"], strict=True) if ok]
    assert current == (promoted[-1] if promoted else None)
    assert set(metrics["segment"]) >= {"overall", "head", "tail", "cold"}
    # The product's rows and, measured on the same split, the lines it must beat and its tail-calibrated variant.
    lines = {"temporal", "temporal:popularity", "temporal:recent_popularity", "temporal:tail_calibrated"}
    assert set(metrics["protocol"]) == lines | {"temporal:without_augmentation"}
    assert (workspace / "models" / "lightgbm" / second.run_id / "model.txt").is_file()
    # The audit: each run measured the oracle's pairs against the embedding simulator's at the same count; the first
    # run used no output (no audit before it), the second what the first's interval supported.
    audit = store.augmentation_audit().filter(pl.col("output") == "judged_pairs")
    assert audit["run_id"].to_list() == [first.run_id, second.run_id]
    assert set(audit["entities"]) == {oracle[Columns.item].n_unique()} and (audit["users"] > 0).all()
    assert audit["used"][0] is False and audit["reason"][0] == "off: no earlier audit measured it"
    # The oracle's pairs beat the simulator's on the first run's held-out data, so the second run trains on them.
    assert audit["low"][0] > 0, audit.to_dicts()
    assert audit["used"][1] is True and audit["reason"][1].startswith("used: overall/ndcg@20 +")
    # What the runs trained on follows: on a log with times only judged pairs warm stand-ins.
    augmentation = store.augmentation()
    assert augmentation["cold_items_warmed"].to_list()[0] == 0 and augmentation["cold_items_warmed"][1] > 0
    assert augmentation["items_augmented"].to_list() == [1, 1]
    # (No cache hit is asserted for the second run: its description prompt lists the item's nearest warm neighbours,
    # which the first run's encode made (item_embeddings), so on a fresh cache it is a new prompt; a rerun with the
    # same prompts reads the cache: tests/flows/test_augment_cli.py.)
    report = json.loads((workspace / "models" / "lightgbm" / second.run_id / "report.json").read_text())
    assert report["augmentation"]["synthetic_rows"] == oracle.height


def test_augment_new_describes_items_and_records_volume(prefect_api: str, workspace: Path) -> None:
    report = augment_new(limit=2)
    assert report["items_augmented"] == 2
    descriptions = Workspace(workspace).read("item_descriptions")
    assert descriptions.height == 2
    store = MetricsStore.for_workspace(workspace, read_only=True)
    assert store.runs()["flow"].to_list() == ["augment-new"]
    assert store.segment_counts().filter(pl.col("kind") == "item")["count"].sum() > 0
    # the cost ledger: tokens, seconds and what ran them
    (ledger,) = store.augmentation().to_dicts()
    assert ledger["backend"] == "llamacpp/f16:smollm2-135m-instruct-f16-llamacpp"  # the default backend
    assert ledger["seconds"] > 0 and (ledger["tokens"] > 0 or ledger["cache_hits"] == 2)  # (a cache kept by a rerun)


def test_the_encoding_tasks_of_a_process_share_one_embedding_cache(tmp_path: Path) -> None:
    # (Each task opening its own read every shard: a 100k-item catalogue's tasks held 23 GB at once.)
    first = tasks.encode_batch(["Heart of Darkness"], tmp_path, MODEL_NAME)
    cache = tasks._CACHES[(tmp_path, MODEL_NAME)]
    both = tasks.encode_batch(["Heart of Darkness", "Lord Jim"], tmp_path, MODEL_NAME)
    assert tasks._CACHES[(tmp_path, MODEL_NAME)] is cache and (cache.hits, cache.misses) == (1, 2)
    np.testing.assert_array_equal(both[0], first[0])
    tasks.release_embedding_caches()
    assert not tasks._CACHES


def test_encoding_a_batch_again_is_a_prefect_cache_hit(prefect_api: str, tmp_path: Path) -> None:
    @flow
    def twice(texts: list[str]) -> tuple[str, str, bool]:
        first = tasks.encode_batch_task(texts, tmp_path / "cache", MODEL_NAME, return_state=True)
        second = tasks.encode_batch_task(texts, tmp_path / "cache", MODEL_NAME, return_state=True)
        same = bool(np.array_equal(first.result(), second.result()))
        return first.name, second.name, same

    texts = [f"a cache probe written at {tmp_path}", "cold items need text"]
    assert twice(texts) == ("Completed", "Cached", True)


def test_encode_items_leaves_no_batch_in_memory(prefect_api: str, workspace: Path) -> None:
    """The encoding tasks' results are persisted, and Prefect's in-memory copies of them outlived the flow: every
    item's embedding (0.7 GB at 500k items) sat in the retrain that follows. Fails when they are kept in memory."""
    import gc

    from prefect.results import ResultRecord

    def records() -> list[object]:
        gc.collect()
        return [found for found in gc.get_objects() if isinstance(found, ResultRecord)]

    before = {id(record) for record in records()}  # other tests' results (kept by their own states)
    stats = encode_items(workspace, batch_size=400)
    assert stats.stats["batches"] == 5 and stats.items == 1682
    held = [
        record
        for record in records()
        if id(record) not in before and isinstance(record.result, np.ndarray)  # type: ignore[attr-defined]
    ]
    assert not held, f"{len(held)} batches' embeddings held by Prefect after the flow"
    np.testing.assert_equal(
        np.stack(Workspace(workspace).read("item_embeddings")["embedding"].to_numpy()).shape, (1682, 384)
    )


def test_encode_items_on_a_dask_local_cluster_matches_threads(
    prefect_api: str, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On torch: an int8 embedding depends slightly on the other texts of its batch (activation scales), and a title
    # that two Dask tasks encode at once is embedded in two batches (docs/benchmarks.md, text encoder backends).
    monkeypatch.setenv("WARMSTART_TEXT_BACKEND", "torch")
    try:
        settings = WarmstartSettings(task_runner="dask", dask_workers=2)
        stats = with_runner(encode_items, settings)(workspace, batch_size=400)
        assert stats.stats["batches"] == 5 and stats.items == 1682
        on_dask = np.stack(Workspace(workspace).read("item_embeddings")["embedding"].to_numpy())
        encode_items(workspace, batch_size=1682)
        in_threads = np.stack(Workspace(workspace).read("item_embeddings")["embedding"].to_numpy())
        np.testing.assert_allclose(on_dask, in_threads, atol=1e-5)
    finally:  # the flows set this process's backend from the settings: give the next tests the default again
        monkeypatch.undo()
        apply_text_backend(WarmstartSettings())


def test_augment_new_describes_in_batches_on_a_dask_local_cluster(
    prefect_api: str, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WARMSTART_TASK_RUNNER", "dask")
    report = with_runner(augment_new, WarmstartSettings())(limit=4, batch=2)
    assert report["items_augmented"] == 4
    descriptions = Workspace(workspace).read("item_descriptions")
    assert descriptions.height == 4 and descriptions["run_id"].unique().to_list() == [report["run_id"]]
    provenance = Workspace(workspace).provenance("item_descriptions")["parameters"]
    assert provenance["batches"] == 2 and provenance["requested"] == 4


def test_the_refit_starts_once_the_evaluated_candidates_inputs_are_gone(
    prefect_api: str, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the gate has judged the candidate, the refit encodes the whole log: the candidate's inputs must be gone
    by then, or a large catalogue holds both (at 500k items the refit began beside them: 18 GB). The candidate
    names itself among its timed alternatives, a cycle only the collector frees. Within the fit and the refit, what
    the ranker learnt from must be gone in turn before the served inputs are encoded, and the encoding's batches
    (Prefect's results, in cycles) before the fit."""
    import gc
    import weakref

    import training._fit as fitting

    fit, refit = tasks.fit_ranker_task, tasks.refit_ranker_task
    encode_plan, encoded_for_serving = fitting.encode_plan, fitting._encoded_for_serving
    candidates: list[weakref.ref[object]] = []
    alive_at_refit: list[bool] = []
    encoded: list[tuple[weakref.ref[object], weakref.ref[object]]] = []  # (the split, its inputs)
    alive_at_serving_encode: list[tuple[bool, bool]] = []

    def encode_and_watch(*args: object, **kwargs: object) -> training.EncodedSplit:
        split = encode_plan(*args, **kwargs)  # type: ignore[arg-type]
        encoded.append((weakref.ref(split), weakref.ref(split.inputs)))
        return split

    def check_then_encode_for_serving(*args: object, **kwargs: object) -> training.EncodedSplit:
        split, inputs = encoded[-1]
        alive_at_serving_encode.append((split() is not None, inputs() is not None))
        return encoded_for_serving(*args, **kwargs)  # type: ignore[arg-type]

    from prefect.results import ResultRecord

    embeddings_at_fit: list[int] = []

    def fit_and_watch(*args: object, **kwargs: object) -> training.FittedRanker:
        # Not collected here: garbage the refresh left in cycles counts (the encoding tasks' results did).
        embeddings_at_fit.append(
            sum(
                isinstance(found, ResultRecord) and isinstance(found.result, np.ndarray) and id(found) not in earlier
                for found in gc.get_objects()
            )
        )
        fitted = fit(*args, **kwargs)  # type: ignore[arg-type]
        assert any(other is fitted for other in fitted.alternatives.values())  # the cycle is there
        candidates.append(weakref.ref(fitted.served.inputs))
        return fitted

    def check_then_refit(*args: object, **kwargs: object) -> training.FittedRanker:
        alive_at_refit.append(candidates[-1]() is not None)
        return refit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tasks, "fit_ranker_task", fit_and_watch)
    monkeypatch.setattr(tasks, "refit_ranker_task", check_then_refit)
    monkeypatch.setattr(fitting, "encode_plan", encode_and_watch)
    monkeypatch.setattr(fitting, "_encoded_for_serving", check_then_encode_for_serving)
    gc.collect()
    earlier = {id(found) for found in gc.get_objects() if isinstance(found, ResultRecord)}  # other tests' live ones
    result = refresh(max_epochs=3, augment_limit=0, reference_gate=False)
    assert result.decision.promoted and alive_at_refit == [False]
    assert embeddings_at_fit == [0]  # the encoding's batches were let go before the fit
    # Neither keeps what it learnt from (the newcomer route is chosen before the fit encodes its served inputs).
    assert alive_at_serving_encode == [(False, False), (False, False)]
