"""Serving a version that a real `warmstart refresh` saved on the MovieLens slice: the Python API
(`serving.Recommender`) and `warmstart recommend`, for warm, cold, newly arrived and text-only users. The refresh
runs once for the module (real BPR-MF, mapper, LightGBM and MiniLM; a real Prefect API)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from catalog import Columns, DataError, Tables, Workspace, new_run_id
from encoders import EmbeddingCache, MapperConfig, encode_texts, item_text
from flows import stages
from flows.cli import app
from serving import CONTENT_STANDIN, ID_EMBEDDING, SERVING_MANIFEST, STATED_TEXT, SYNTHETIC_WARMED, Recommender
from training import StandInBuilder, StandInConfig, fitted_on_inputs

runner = CliRunner()


@pytest.fixture(scope="module")
def served(served_slice: Path) -> Path:
    return served_slice


@pytest.fixture(scope="module")
def recommender(served: Path, cache_dir: Path) -> Recommender:
    return Recommender.load(served, cache_dir=cache_dir)


def _logged(workspace: Path) -> pl.DataFrame:
    return Workspace(workspace).read(Tables.interactions).select(Columns.user, Columns.item).unique()


def _activity(recommender: Recommender) -> np.ndarray:
    return np.diff(recommender.inputs.history.indptr)


def test_the_promoted_version_saved_what_it_serves_from(served: Path, recommender: Recommender) -> None:
    registry = Workspace(served).models
    assert recommender.version == registry.current("lightgbm")
    assert (registry.path("lightgbm", recommender.version) / SERVING_MANIFEST).is_file()
    logged = _logged(served)
    # The temporal split's index: every logged user, every catalog item.
    assert recommender.n_version_users == logged[Columns.user].n_unique() == recommender.inputs.n_users
    assert recommender.inputs.n_items == Workspace(served).read(Tables.items).height


def test_warm_users_get_k_ranked_unseen_items(served: Path, recommender: Recommender) -> None:
    activity = _activity(recommender)
    warm = recommender.user_ids.gather(np.argsort(-activity)[:5]).to_list()
    frame = recommender.recommend(warm, k=10)
    assert frame.group_by(Columns.user).len()["len"].to_list() == [10] * 5
    assert set(frame["user_segment"]) == {"warm"}
    for _, group in frame.group_by(Columns.user):
        assert group[Columns.rank].to_list() == list(range(1, 11))
    assert set(frame["source"]) <= {ID_EMBEDDING, SYNTHETIC_WARMED, CONTENT_STANDIN}
    assert frame.join(_logged(served), on=[Columns.user, Columns.item], how="semi").is_empty()


def test_recommend_shows_the_models_scores_in_the_order_served(recommender: Recommender) -> None:
    """The version keeps places for new items (cold_slots): the list is in that placed order, and the score beside
    each item is the model's own, not the placement's rank offsets."""
    assert recommender.ranker.config.cold_slots > 0  # type: ignore[attr-defined]
    users = recommender.user_ids.head(40)
    frame = recommender.recommend(users, k=20)
    model = recommender.ranker.scorer(recommender.inputs, recommender.seen, placed=False)
    scores = model(np.arange(40), np.arange(recommender.inputs.n_items))
    row = {user: i for i, user in enumerate(users.to_list())}
    column = {item: i for i, item in enumerate(recommender.item_ids.to_list())}
    expected = [scores[row[u], column[i]] for u, i in frame.select(Columns.user, Columns.item).iter_rows()]
    np.testing.assert_allclose(frame[Columns.score].to_numpy(), expected, rtol=1e-6)
    placed = recommender.ranker.place(scores, recommender.inputs, np.arange(recommender.inputs.n_items))
    offsets = [placed[row[u], column[i]] for u, i in frame.select(Columns.user, Columns.item).iter_rows()]
    assert not np.allclose(offsets, expected)  # the placement's values are rank offsets, not what is shown
    for _, group in frame.group_by(Columns.user):
        known = group.filter(pl.col(Columns.segment) != "cold")[Columns.score].to_numpy()
        assert (np.diff(known) <= 0).all()  # placed new items aside, the model's order


def test_seen_exclusion_covers_what_was_logged_after_training(served: Path, recommender: Recommender) -> None:
    users = recommender.user_ids.to_list()
    logged = _logged(served)
    kept = recommender.recommend(users, k=50, exclude_seen=False)
    # Without the exclusion the model recommends items the users went on to log (after the training window)...
    assert kept.join(logged, on=[Columns.user, Columns.item], how="semi").height > 0
    # ...with it (the default) none of them.
    assert recommender.recommend(users, k=50).join(logged, on=[Columns.user, Columns.item], how="semi").is_empty()


def test_cold_users_get_the_ranker_with_an_empty_history(served: Path, recommender: Recommender) -> None:
    cold = recommender.user_ids.gather(np.flatnonzero(_activity(recommender) == 0)).to_list()
    assert cold, "the slice's temporal split has users who arrive after the cut"
    frame = recommender.recommend(cold[:3], k=5)
    assert frame.height == 5 * len(cold[:3]) and set(frame["user_segment"]) == {"cold"}
    assert frame.join(_logged(served), on=[Columns.user, Columns.item], how="semi").is_empty()
    # A user added after training is served as the version's own users without history are: the same features
    # (the item-bias constant of the collaborative score included), so the same list.
    # (The version's user has logged items since, which are never recommended to them: compared without that
    # exclusion, which would also move where the new-item place lands in their list.)
    # Given the same attributes, the stand-in that scores them is the same one.
    theirs_attributes = recommender.users.filter(pl.col(Columns.user) == cold[0])
    added = recommender.add_users(
        ["arrived-later"], users=theirs_attributes.with_columns(pl.lit("arrived-later").alias(Columns.user))
    )
    views = added.inputs.user_view(np.array([added.user_ids.index_of(u) for u in ("arrived-later", cold[0])]))
    assert np.allclose(views[0], views[1], atol=1e-6)  # float32 sums in another order
    theirs = added.recommend([cold[0]], k=5, exclude_seen=False)[Columns.item].to_list()
    assert added.recommend(["arrived-later"], k=5)[Columns.item].to_list() == theirs


def test_a_user_logged_after_the_version_is_folded_in_and_explained(
    served: Path, cache_dir: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(served, workspace)
    space = Workspace(workspace)
    log = space.read(Tables.interactions)
    alien_films = {"176", "183", "343"}  # Aliens, Alien, Alien: Resurrection
    newcomer = pl.DataFrame({Columns.user: ["newcomer"] * 3, Columns.item: sorted(alien_films)})
    space.write(
        Tables.interactions,
        pl.concat([log, newcomer.join(log.drop(Columns.user, Columns.item).head(1), how="cross")]),
        run_id=new_run_id(),
        source="test",
    )
    recommender = Recommender.load(workspace, cache_dir=cache_dir)
    frame = recommender.recommend(["newcomer"], k=10, explain=True)
    assert frame.height == 10 and set(frame["user_segment"]) == {"new"}
    assert not set(frame[Columns.item]) & alien_films
    assert all(set(because) <= alien_films and because for because in frame["because"].to_list())
    # Their history changes what they get: not the recommendations of a user with no history.
    cold = recommender.user_ids.gather(np.flatnonzero(_activity(recommender) == 0)[:1]).to_list()
    assert frame[Columns.item].to_list() != recommender.recommend(cold, k=10)[Columns.item].to_list()


def test_stated_text_alone_and_blended(served: Path, recommender: Recommender) -> None:
    alone = recommender.recommend_text("space adventure with aliens", k=5)
    assert alone.height == 5 and set(alone["source"]) == {STATED_TEXT}
    assert any("Alien" in title for title in alone[Columns.title])
    assert (np.diff(alone[Columns.score].to_numpy()) <= 0).all()
    user = recommender.user_ids.gather(np.argsort(-_activity(recommender))[:1])[0]
    blended = recommender.recommend_text("space adventure with aliens", k=20, user_id=user, weight=0.5)
    assert blended.height == 20 and set(blended[Columns.user]) == {user}
    assert blended.join(_logged(served), on=[Columns.user, Columns.item], how="semi").is_empty()
    # The user's side moves the list away from the text-only one.
    assert (
        blended[Columns.item].to_list()
        != recommender.recommend_text("space adventure with aliens", k=20)[Columns.item].to_list()
    )


def test_items_for_items_and_users_for_a_cold_item(served: Path, recommender: Recommender) -> None:
    cold_item = recommender.item_ids.filter(pl.Series(recommender.inputs.is_cold))[0]
    similar = recommender.similar_items([cold_item, "1"], k=5)
    assert similar.height == 10 and cold_item not in similar.filter(pl.col("seed_item_id") == cold_item)["item_id"]
    audience = recommender.users_for_item(cold_item, k=7)
    # A log with times: only judged pairs warm stand-ins (ModelSettings.timed), and this refresh judged nothing.
    assert audience.height == 7 and set(audience["source"]) == {CONTENT_STANDIN}
    assert audience[Columns.user].n_unique() == 7
    logged_it = _logged(served).filter(pl.col(Columns.item) == cold_item)[Columns.user]
    assert not set(audience[Columns.user]) & set(logged_it)


def test_unknown_ids_are_named(recommender: Recommender) -> None:
    with pytest.raises(DataError, match=r"unknown user id\(s\).*'nobody'"):
        recommender.recommend(["1", "nobody"])
    with pytest.raises(DataError, match=r"unknown item id\(s\).*'no-such-film'"):
        recommender.similar_items(["no-such-film"])
    with pytest.raises(DataError, match="no-such-film"):
        recommender.users_for_item("no-such-film")
    with pytest.raises(DataError, match="empty"):
        recommender.recommend_text("   ")


def test_cli_recommend_writes_a_batch_and_prints_explanations(
    served: Path, recommender: Recommender, cache_dir: Path, tmp_path: Path
) -> None:
    env = {"WARMSTART_CACHE_DIR": str(cache_dir)}
    users = tmp_path / "users.csv"
    ids = _logged(served)[Columns.user].unique().sort().head(30).to_list()
    pl.DataFrame({Columns.user: ids}).write_csv(users)
    out = tmp_path / "recs.parquet"
    done = runner.invoke(
        app,
        ["recommend", "--users", str(users), "--k", "4", "--batch", "8", "--out", str(out), "-w", str(served)],
        env=env,
    )
    assert done.exit_code == 0, done.output
    frame = pl.read_parquet(out)
    assert frame.height == 30 * 4 and sorted(frame[Columns.user].unique()) == sorted(ids)
    assert frame["model_version"].n_unique() == 1
    # Batches of 8: the users' lists, in the users' order, as one call gives them.
    wanted = [Columns.user, Columns.item, Columns.rank]
    assert frame.select(wanted).equals(recommender.recommend(ids, 4).select(wanted))

    shown = runner.invoke(app, ["recommend", "--user", ids[0], "--k", "2", "--explain", "-w", str(served)], env=env)
    assert shown.exit_code == 0 and "because" in shown.output
    text = runner.invoke(
        app, ["recommend", "--text", "a romantic comedy in Paris", "--k", "3", "-w", str(served)], env=env
    )
    assert text.exit_code == 0 and STATED_TEXT.split()[0] in text.output

    unknown = runner.invoke(app, ["recommend", "--user", "nobody", "-w", str(served)], env=env)
    assert unknown.exit_code == 1 and "nobody" in unknown.output
    bad = tmp_path / "bad.csv"
    bad.write_text("name\nx\n")
    wrong = runner.invoke(app, ["recommend", "--users", str(bad), "-w", str(served)], env=env)
    assert wrong.exit_code == 1 and "user_id" in wrong.output
    nothing = runner.invoke(app, ["recommend", "-w", str(served)], env=env)
    assert nothing.exit_code == 1 and "--user" in nothing.output


def test_the_refresh_published_the_promoted_versions_recommendations(served: Path, recommender: Recommender) -> None:
    space = Workspace(served)
    table = space.read(Tables.recommendations)
    assert set(table["model_version"]) == set(table["run_id"]) == {recommender.version}
    assert space.provenance(Tables.recommendations)["parameters"]["model_version"] == recommender.version
    assert sorted(table[Columns.user].unique()) == sorted(recommender.user_ids)
    assert set(table.group_by(Columns.user).len()["len"]) == {10}  # the refresh's k
    sample = recommender.user_ids.head(5).to_list()
    # Published before the later events were appended: what the version served then excluded its own history only.
    expected = recommender.recommend(sample, k=10, exclude_seen=False).select(Columns.user, Columns.item, Columns.rank)
    published = table.filter(pl.col(Columns.user).is_in(sample)).select(Columns.user, Columns.item, Columns.rank)
    assert published.sort(Columns.user, Columns.rank).equals(expected.sort(Columns.user, Columns.rank))


def test_an_added_item_is_served_at_once_without_retraining(served: Path, cache_dir: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    shutil.copytree(served, workspace)
    new = tmp_path / "new.csv"
    pl.DataFrame(
        {
            Columns.item: ["new-1"],
            Columns.title: ["Starship Nightmare (2026)"],
            Columns.text: ["An alien creature hunts the crew of a deep space mining ship."],
        }
    ).write_csv(new)
    env = {"WARMSTART_CACHE_DIR": str(cache_dir)}
    done = runner.invoke(app, ["add-items", str(new), "-w", str(workspace)], env=env)
    assert done.exit_code == 0, done.output
    again = runner.invoke(app, ["add-items", str(new), "-w", str(workspace)], env=env)
    assert again.exit_code == 1 and "new-1" in again.output
    stages.workspace_dataset(Workspace(workspace))  # still one ingest: the next refresh trains on the new item

    recommender = Recommender.load(workspace, cache_dir=cache_dir)
    assert recommender.version == Workspace(served).models.current("lightgbm")  # the same version, not retrained
    audience = recommender.users_for_item("new-1", k=5)
    assert (
        # No judged pairs for it, and on a log with times the embedding simulator warms nothing: its stand-in.
        audience.height == 5 and set(audience["source"]) == {CONTENT_STANDIN} and set(audience["segment"]) == {"cold"}
    )
    assert recommender.recommend_text("an alien monster in outer space", k=3)[Columns.item][0] == "new-1"
    similar = recommender.similar_items(["new-1"], k=3)
    assert similar.height == 3 and "new-1" not in similar[Columns.item]
    # The ranker scores only its candidates (each source's top items per user): the new item is among some users'.
    everything = recommender.recommend(recommender.user_ids, k=recommender.inputs.n_items)
    assert everything.filter(pl.col(Columns.item) == "new-1").height > 0


def test_an_added_item_gets_its_stand_in_from_the_builder_saved_with_the_version(
    served: Path, cache_dir: Path, tmp_path: Path
) -> None:

    workspace = tmp_path / "ws"
    shutil.copytree(served, workspace)
    version = Workspace(workspace).models.path("lightgbm", Workspace(workspace).models.current("lightgbm"))
    assert StandInBuilder.saved_in(version)  # training saved the builder it used beside the version
    saved = StandInBuilder.load(version)
    new = pl.DataFrame({Columns.item: ["new-2"], Columns.title: ["A quiet romance in Paris (2026)"]})
    text = encode_texts(item_text(new).to_list(), cache=EmbeddingCache.in_cache_dir(cache_dir), show_progress=False)

    def added_standin() -> np.ndarray:
        recommender = Recommender.load(workspace, cache_dir=cache_dir).add_items(new)
        assert recommender.item_ids[-1] == "new-2"
        return recommender.inputs.item_standin[-1]

    # On a log with times the simulator warms nothing by default: the stand-in is the builder's, as training made it.
    np.testing.assert_allclose(added_standin(), saved.transform(text)[0], rtol=1e-6)
    # The saved builder is training's fit on the version's warm items (what versions saved without one get), up to
    # the last bits of a multithreaded matrix product.
    base = Recommender.load(workspace, cache_dir=cache_dir)
    refit = fitted_on_inputs(base.inputs).transform(text)
    np.testing.assert_allclose(refit, saved.transform(text), rtol=1e-5, atol=1e-7)
    # Serving reads the saved builder: another builder beside the version gives the item another stand-in.
    warm = np.flatnonzero(base.inputs.popularity > 0)
    other = StandInBuilder(StandInConfig(mapper=MapperConfig(kind="ridge", alpha=1000.0)))
    other.fit(base.inputs.text[warm], base.inputs.item_cf[warm]).save(version)
    changed = added_standin()
    np.testing.assert_allclose(changed, other.transform(text)[0], rtol=1e-6)
    assert not np.allclose(changed, saved.transform(text)[0])
