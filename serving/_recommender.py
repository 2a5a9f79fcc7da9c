"""Recommendations from a saved model version: `Recommender.load(workspace)` serves the promoted version (or a named
one) from what the version saved (ranker + serving inputs), reading the workspace only for what happened since.

Where a user or item comes from decides how it is served:
- a user with few events or none (a newcomer: as many as the version's `newcomers` route says, chosen on
  validation) is ranked by the newcomer model (`ranker.newcomers`): what users with like attributes took, plus the
  items taken with their own few; their items without history keep the ranker's order below those. Every other
  user is ranked by the ranker, as follows;
- a user in the version's index is ranked from the version's training history; a user with no history there (cold)
  is ranked by the same ranker with an empty history (its candidates then come from popularity and the items'
  own features);
- a user who appeared in the workspace after the version was trained (`user_segment` "new") is folded in: their
  logged interactions become their history (text and TF-IDF profiles) and their collaborative vector is solved
  from them against the version's fixed item vectors (`encoders.fold_in_users`), blended with their stand-in by
  how many they are (`training.blend_with_fold_in`). Only rankers not tied to their encoders can do that
  (DeepFM's user table is fixed: such users are a DataError there);
- a user without history (the version's own, or added by `warmstart add-users`) is scored through a stand-in made
  from their attributes (the users table) by the builder saved with the version (`training.UserStandInBuilder`);
- an item with training interactions is scored through its collaborative ID embedding (`source` "id embedding"),
  an item without any through the stand-in the content mapper made from its text, trained further on synthetic
  interactions where the version was warmed ("synthetic-warmed embedding"; else "content stand-in");
- an item added to the workspace after the version was trained (`warmstart add-items`) is folded in at load: its
  text is embedded (MiniLM, the embedding cache), the stand-in builder saved with the version (training's own,
  fitted on the version's warm items) gives it a stand-in, warmed by the embedding simulator's users as the
  version's own cold items were, so it is recommendable at once with no retraining (rankers not tied to their
  encoders only);
- stated interests in words are matched by MiniLM to the items' text embeddings (`source` "stated text").
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from catalog import (
    SPARSE_MAX,
    Columns,
    ConfigError,
    DataError,
    Segments,
    Tables,
    UnknownIdError,
    Workspace,
    WorkspaceError,
    has_times,
    head_items,
)
from encoders import (
    MODEL_NAME,
    EmbeddingCache,
    WarmingConfig,
    encode_texts,
    fold_in_users,
    item_text,
    load_text_model,
    text_backend_of,
    text_hash,
)
from ranker.ann import ANN_MIN_ITEMS, build_candidate_index
from ranker.base import RankerBase, top_k
from ranker.features import RankerInputs
from ranker.lightgbm_ranker import LightGBMRanker
from ranker.registry import load_ranker
from ranker.temporal import RequestTimes
from serving._artifacts import ServingInputs, load_serving_inputs
from training import (
    StandInBuilder,
    UserStandInBuilder,
    blend_with_fold_in,
    fitted_on_inputs,
    text_profiles,
    title_words,
    user_attributes,
    warm_added,
)

ID_EMBEDDING = "id embedding"
SYNTHETIC_WARMED = "synthetic-warmed embedding"
CONTENT_STANDIN = "content stand-in"
STATED_TEXT = "stated text"
USER_SEGMENT = "user_segment"
BECAUSE = "because"
# The columns of every recommendation frame, in this order.
RECOMMENDATION_COLUMNS = (
    Columns.user,
    Columns.item,
    Columns.rank,
    Columns.score,
    "source",
    Columns.segment,
    Columns.title,
    USER_SEGMENT,
)
_EXAMPLES = 5
# How deep each served user's list is precomputed (`Recommender.precompute`): requests for k up to this are answered
# from the table; a deeper k is scored live.
PRECOMPUTED_K = 100
# At most this many (user, position) entries are precomputed (12 bytes each: 240 MB); a larger population gets a
# shallower table, or none when fewer than PRECOMPUTED_MIN_K places would fit.
PRECOMPUTED_ENTRIES = 20_000_000
PRECOMPUTED_MIN_K = 20


def _unknown(ids: list[str], known: Container[str], kind: str, version: str) -> None:
    missing = sorted({i for i in ids if i not in known})
    if missing:
        raise UnknownIdError(
            f"{len(missing)} unknown {kind} id(s) for model version {version}: {missing[:_EXAMPLES]}. "
            f"Use ids of the workspace's {kind}s (add new ones with `warmstart add-{kind}s FILE`)."
        )


def _minmax(values: np.ndarray) -> np.ndarray:
    finite = np.isfinite(values)
    out = np.zeros(values.shape, dtype=np.float64)
    if finite.any():
        low, high = values[finite].min(), values[finite].max()
        out[finite] = (values[finite] - low) / (high - low) if high > low else 1.0
    return out


@dataclass(frozen=True, eq=False)
class TopLists:
    """Every served user's top `k` as `Recommender.recommend` ranks it with seen items excluded, filled a block of
    users at a time (`ready` says whose rows are done). Row u, position j: the item row (-1 past the candidates'
    end), its score, and whether the position counts (`kept`: a non-finite placed value takes its place in the
    order and is then dropped, exactly as a live top k drops it)."""

    k: int
    items: np.ndarray
    scores: np.ndarray
    kept: np.ndarray
    ready: np.ndarray

    @classmethod
    def empty(cls, n_users: int, k: int) -> TopLists:
        return cls(
            k=k,
            items=np.full((n_users, k), -1, dtype=np.int64),
            scores=np.zeros((n_users, k), dtype=np.float32),
            kept=np.zeros((n_users, k), dtype=bool),
            ready=np.zeros(n_users, dtype=bool),
        )

    def answers(self, users: np.ndarray, k: int) -> bool:
        return k <= self.k and bool(self.ready[users].all())

    def take(self, users: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(user, item, rank, score) of `users`' top k, from the table."""
        kept = self.kept[users, :k]
        ranks = np.cumsum(kept, axis=1)
        return (
            np.broadcast_to(users[:, None], kept.shape)[kept],
            self.items[users, :k][kept],
            ranks[kept],
            self.scores[users, :k][kept],
        )


@dataclass(frozen=True, eq=False)
class Recommender:
    """One model version ready to serve. Build it with `Recommender.load`."""

    ranker: RankerBase
    ranker_name: str
    version: str
    inputs: RankerInputs
    user_ids: pl.Series  # row u of the inputs' user arrays; the version's users, then users folded in
    item_ids: pl.Series
    n_version_users: int
    seen: sp.csr_array  # every logged (user, item) pair over the version's items, training or since
    cache_dir: Path | None
    text_model: str
    titles: dict[str, str]
    sparse_max: int = SPARSE_MAX
    # Items without history whose ID embedding synthetic interactions trained (source "synthetic-warmed"), and
    # how: items added later are warmed the same way.
    warmed: np.ndarray | None = None
    warming: WarmingConfig | None = None
    # The builder that gives items added later their stand-ins (saved with the version; None for versions saved
    # before builders were kept, which get training's fit on their warm items when an item is added).
    standins: StandInBuilder | None = None
    # The builder that gives users without history their stand-ins from their attributes (None for versions saved
    # before user stand-ins: such users are scored with the item bias alone, as those versions were trained).
    user_standins: UserStandInBuilder | None = None
    # The workspace's users table (attributes of the users served), when it has one.
    users: pl.DataFrame | None = None
    # The text model and its cache, loaded on the first stated text and kept (loading MiniLM takes ~1 s).
    _text: dict[str, Any] = field(default_factory=dict, repr=False)
    # Every user's top lists once `precompute` filled them ("top": a TopLists); this Recommender never changes (each
    # addition makes a new one), so the table never goes stale. init=False: `replace` starts the new one without.
    _lists: dict[str, TopLists] = field(default_factory=dict, init=False, repr=False)

    # ------------------------------------------------------------------------------------------------ load

    @classmethod
    def load(
        cls,
        workspace: Workspace | Path,
        version: str | None = None,
        *,
        ranker: str | None = None,
        cache_dir: Path | None = None,
        sparse_max: int = SPARSE_MAX,
        ann_min_items: int | None = ANN_MIN_ITEMS,
    ) -> Recommender:
        """The promoted version of `ranker` (the only ranker with a promoted version by default), or `version`.
        `cache_dir` holds the text-embedding cache (CACHE/embeddings), needed only for stated text. A catalogue of
        at least `ann_min_items` items (None: never) takes its candidates from ANN indexes built here
        (`with_candidate_index`)."""
        space = workspace if isinstance(workspace, Workspace) else Workspace(Path(workspace))
        registry = space.models
        if ranker is None:
            promoted = sorted({v.ranker for v in registry.versions() if v.current})
            if len(promoted) != 1:
                raise ConfigError(
                    f"{registry.root}: {'no ranker has' if not promoted else 'several rankers have'} a promoted "
                    f"version ({', '.join(promoted) or 'none'}); name one with ranker= (--ranker)."
                    + (" Run `warmstart refresh` to train and promote one." if not promoted else "")
                )
            ranker = promoted[0]
        version = version or registry.current(ranker)
        if version is None:
            raise WorkspaceError(f"{registry.root}: no promoted version of {ranker}; run `warmstart refresh`.")
        if not registry.exists(ranker, version):
            known = ", ".join(v.version for v in registry.versions(ranker)) or "none"
            raise WorkspaceError(f"no saved version {version!r} of {ranker} under {registry.root} (versions: {known}).")
        directory = registry.path(ranker, version)
        served = load_serving_inputs(directory)
        model = load_ranker(directory)
        if isinstance(model, LightGBMRanker):  # served pools follow the operator's threshold, not training's
            model.config = model.config.model_copy(update={"ann_min_items": ann_min_items})
        log = space.read(Tables.interactions) if space.exists(Tables.interactions) else None
        items = space.read(Tables.items) if space.exists(Tables.items) else None
        titles = (
            dict(zip(items[Columns.item], items[Columns.title].fill_null(""), strict=True)) if items is not None else {}
        )
        users = space.read(Tables.users) if space.exists(Tables.users) else None
        user_standins = UserStandInBuilder.load(directory) if UserStandInBuilder.saved_in(directory) else None
        recommender = cls._assemble(
            model, ranker, version, served, log, cache_dir, titles, sparse_max, users, user_standins
        )
        if StandInBuilder.saved_in(directory):
            recommender = replace(recommender, standins=StandInBuilder.load(directory))
        recommender = recommender.with_additions(space, items=items, log=log)
        if ann_min_items is not None and recommender.inputs.n_items >= ann_min_items:
            recommender = recommender.with_candidate_index()
        return recommender

    def as_of(self, requested: pl.DataFrame, log: pl.DataFrame) -> Recommender:
        """This recommender serving each user of `requested` (user_id, requested_at) as they would have been
        served at that time, a replay: the newcomer model's recent shares are those of the days before it, counted
        from `log`'s events (the workspace's) strictly before it. Other users ask now (the version's end), as
        always. What `evaluate --keep-version`'s held-out users were scored with (`ProtocolSplit.requested_at`)."""
        self._user_index([str(i) for i in requested[Columns.user].to_list()])  # unknown ids: a clear error
        if not has_times(log):
            raise DataError("the workspace's log has no times, so no list can be served as of a time.")
        known = log.select(Columns.item, Columns.ts).join(
            pl.DataFrame({Columns.item: self.item_ids}), on=Columns.item, how="semi"
        )
        times = RequestTimes.of(
            known,
            self.user_ids,
            self.item_ids,
            requested.select(pl.col(Columns.user).cast(pl.String), pl.col(Columns.requested_at).alias(Columns.ts)),
        )
        return replace(self, inputs=replace(self.inputs, request_times=times))

    def with_candidate_index(self) -> Recommender:
        """This recommender taking its candidates from ANN indexes over its items (`ranker.ann`): sublinear in the
        catalogue, approximate. Built at load rather than saved with the version: the index must cover what is
        served, items folded in at load included, and building takes seconds (docs/scaling.md); items added later
        are scored exactly beside it. Rankers that score every item (DeepFM) generate no candidates: unchanged."""
        return replace(self, inputs=replace(self.inputs, candidates=build_candidate_index(self.inputs)))

    def with_additions(
        self, space: Workspace, *, items: pl.DataFrame | None = None, log: pl.DataFrame | None = None
    ) -> Recommender:
        """This recommender serving too the items and users `space` lists and it does not serve yet (itself when
        there are none, or when its ranker cannot fold them in). `items` and `log` are the workspace's tables when
        the caller has read them already."""
        updated = self
        if self.ranker.tied_to_encoders:
            return updated
        items = items if items is not None or not space.exists(Tables.items) else space.read(Tables.items)
        if items is not None:
            added = items.join(pl.DataFrame({Columns.item: self.item_ids}), on=Columns.item, how="anti")
            if added.height:
                if log is None and space.exists(Tables.interactions):
                    log = space.read(Tables.interactions)
                updated = updated.add_items(added, log=log)
        if space.exists(Tables.users):
            # Users known only by their attributes (`warmstart add-users`, or a users file with idle users).
            listed = space.read(Tables.users)[Columns.user].cast(pl.String)
            new = listed.filter(~listed.is_in(updated.user_ids.implode()))
            if new.len():
                updated = updated.add_users(new, users=space.read(Tables.users))
        return updated

    @classmethod
    def _assemble(
        cls,
        model: RankerBase,
        ranker: str,
        version: str,
        served: ServingInputs,
        log: pl.DataFrame | None,
        cache_dir: Path | None,
        titles: dict[str, str],
        sparse_max: int,
        users: pl.DataFrame | None = None,
        user_standins: UserStandInBuilder | None = None,
    ) -> Recommender:
        inputs, user_ids, item_ids = served.inputs, served.user_ids, served.item_ids
        n_version_users = user_ids.len()
        pairs = pl.DataFrame(schema={Columns.user: pl.String, Columns.item: pl.String})
        if log is not None:
            # Logged pairs over the version's items (items added since the version was trained have no inputs).
            pairs = log.select(pl.col(Columns.user).cast(pl.String), pl.col(Columns.item).cast(pl.String)).unique()
            pairs = pairs.join(pl.DataFrame({Columns.item: item_ids}), on=Columns.item, how="semi")
            newcomers = pairs.join(pl.DataFrame({Columns.user: user_ids}), on=Columns.user, how="anti")
            if newcomers.height and not model.tied_to_encoders:
                new_ids = newcomers[Columns.user].unique().sort()
                rows = _matrix(newcomers, new_ids, item_ids)
                attributes = user_attributes(users, new_ids)
                standins = _user_standins(inputs, user_standins, attributes, rows)
                inputs = _with_users(
                    inputs,
                    rows,
                    _folded_in(inputs, rows, standins),
                    standins,
                    _attribute_rows(inputs, user_standins, attributes),
                )
                user_ids = pl.concat([user_ids, new_ids.rename(Columns.user)])
        seen = _matrix(
            pairs.join(pl.DataFrame({Columns.user: user_ids}), on=Columns.user, how="semi"), user_ids, item_ids
        )
        return cls(
            ranker=model,
            ranker_name=ranker,
            version=version,
            inputs=inputs,
            user_ids=user_ids,
            item_ids=item_ids,
            n_version_users=n_version_users,
            seen=sp.csr_array(((seen + inputs.history) > 0).astype(np.float32)),
            cache_dir=cache_dir,
            text_model=str(served.manifest.get("text_model", MODEL_NAME)),
            titles=titles,
            sparse_max=sparse_max,
            warmed=served.warmed,
            warming=WarmingConfig(**served.manifest["warming"]) if served.manifest.get("warming") else None,
            user_standins=user_standins,
            users=users,
        )

    def add_items(self, items: pl.DataFrame, *, log: pl.DataFrame | None = None) -> Recommender:
        """This version serving `items` too (item_id, title[, text, categories]; already conformed): each gets its
        MiniLM text embedding and a stand-in from the version's stand-in builder, warmed as the version warmed its
        own cold items, so it is recommendable at once. No TF-IDF or category features (the version's
        vocabularies are not saved): those are zero for them. Pairs of `log` (user_id, item_id) with them are seen."""
        if self.ranker.tied_to_encoders:
            raise ConfigError(f"{self.ranker_name} scores a fixed item table; retrain to serve new items.")
        duplicated = sorted(set(items[Columns.item].to_list()) & set(self.item_ids.to_list()))
        if duplicated:
            raise DataError(f"{len(duplicated)} item id(s) are already served: {duplicated[:_EXAMPLES]}.")
        if items.is_empty():
            return self
        text = self._embed(item_text(items).to_list())
        inputs = self.inputs
        warm = np.flatnonzero(inputs.popularity > 0)
        builder = self.standins or fitted_on_inputs(inputs)
        standins, n = builder.transform(text).astype(inputs.item_standin.dtype), items.height
        # Warmed as the version warmed its own cold items, so they compete on equal terms.
        standins = warm_added(standins, inputs.user_cf, inputs.item_cf[warm], self.warming)
        warmed = self.warming is not None and self.warming.simulate
        titles = items[Columns.title].fill_null("")
        extended = RankerInputs(
            history=sp.csr_array(sp.hstack([inputs.history, sp.csr_array((inputs.n_users, n), dtype=np.float32)])),
            text=np.vstack([inputs.text, text]),
            user_cf=inputs.user_cf,
            item_cf=np.vstack([inputs.item_cf, np.zeros((n, inputs.item_cf.shape[1]), inputs.item_cf.dtype)]),
            item_standin=np.vstack([inputs.item_standin, standins]),
            popularity=np.r_[inputs.popularity, np.zeros(n, inputs.popularity.dtype)],
            title_words=np.r_[inputs.title_words, title_words(titles)],
            tfidf=_pad_rows(inputs.tfidf, n),
            categories=_pad_rows(inputs.categories, n),
            time=inputs.time.with_items(_released(items)) if inputs.time is not None else None,
            user_standin=inputs.user_standin,
            user_attributes=inputs.user_attributes,
            item_given=np.r_[inputs.item_given, np.zeros(n, np.float32)] if inputs.item_given is not None else None,
            # The index covers the items it was built on; the added ones are scored exactly beside it.
            candidates=inputs.candidates,
        )
        new_ids = items[Columns.item].cast(pl.String).rename(Columns.item)
        logged = pl.DataFrame(schema={Columns.user: pl.String, Columns.item: pl.String})
        if log is not None:
            logged = log.select(pl.col(Columns.user).cast(pl.String), pl.col(Columns.item).cast(pl.String))
        seen = sp.csr_array(sp.hstack([self.seen, _matrix(logged, self.user_ids, new_ids)]))
        return replace(
            self,
            inputs=extended,
            item_ids=pl.concat([self.item_ids, new_ids]),
            seen=seen,
            titles=self.titles | dict(zip(items[Columns.item], titles, strict=True)),
            warmed=np.r_[self._warmed_mask(), np.full(n, warmed)],
        )

    def add_users(self, user_ids: list[str] | pl.Series, *, users: pl.DataFrame | None = None) -> Recommender:
        """This version serving users it has never seen and who logged nothing yet: each is served as a cold user
        (the ranker with an empty history, scored through a stand-in made from their attributes in `users`, the
        users table; this recommender's own table where not given)."""
        if self.ranker.tied_to_encoders:
            raise ConfigError(f"{self.ranker_name} scores a fixed user table; retrain to serve new users.")
        ids = pl.Series(Columns.user, [str(i) for i in user_ids], dtype=pl.String)
        repeated = sorted(set(ids.filter(ids.is_duplicated() | ids.is_in(self.user_ids.implode())).to_list()))
        if repeated:
            raise DataError(f"{len(repeated)} user id(s) are already served or repeat: {repeated[:_EXAMPLES]}.")
        if ids.is_empty():
            return self
        empty = sp.csr_array((ids.len(), self.inputs.n_items), dtype=np.float32)
        table = users if users is not None else self.users
        attributes = user_attributes(table, ids)
        standins = _user_standins(self.inputs, self.user_standins, attributes, empty)
        rows = _attribute_rows(self.inputs, self.user_standins, attributes)
        return replace(
            self,
            inputs=_with_users(self.inputs, empty, standins, standins, rows),
            users=table,
            user_ids=pl.concat([self.user_ids, ids]),
            seen=sp.csr_array(sp.vstack([self.seen, empty])),
        )

    def _embed(self, texts: list[str]) -> np.ndarray:
        """MiniLM embeddings through the embedding cache (the model loads only for texts the cache lacks)."""
        if self.cache_dir is None:
            raise ConfigError("embedding text needs the embedding cache: load the Recommender with cache_dir=.")
        # The version's own backend, whatever this process's: its items' embeddings came from that one.
        backend = text_backend_of(self.text_model)
        if "cache" not in self._text:
            self._text["cache"] = EmbeddingCache.in_cache_dir(self.cache_dir, self.text_model)
        cache = self._text["cache"]
        if "model" not in self._text and not cache.get_many([text_hash(t) for t in texts])[0].all():
            self._text["model"] = load_text_model(backend=backend)  # kept: loading MiniLM takes about a second
        return encode_texts(texts, model=self._text.get("model"), cache=cache, show_progress=False)

    # ------------------------------------------------------------------------------------------------ lookups

    # Built once per Recommender (each add_items / add_users makes a new one), not on every request.
    @cached_property
    def _user_rows(self) -> dict[str, int]:
        return _rows(self.user_ids)

    @cached_property
    def _item_rows(self) -> dict[str, int]:
        return _rows(self.item_ids)

    @cached_property
    def _head(self) -> np.ndarray:
        return head_items(self.inputs.popularity)

    def _user_index(self, ids: list[str]) -> np.ndarray:
        _unknown(ids, self._user_rows, "user", self.version)
        return _positions(self._user_rows, ids)

    def _item_index(self, ids: list[str]) -> np.ndarray:
        _unknown(ids, self._item_rows, "item", self.version)
        return _positions(self._item_rows, ids)

    def _item_columns(self, items: np.ndarray) -> dict[str, Any]:
        cold = self.inputs.is_cold[items]
        head = self._head[items]
        segment = np.where(cold, Segments.cold, np.where(head, Segments.head, Segments.tail))
        warmed = self._warmed_mask()[items]
        source = np.where(cold, np.where(warmed, SYNTHETIC_WARMED, CONTENT_STANDIN), ID_EMBEDDING)
        ids, titles = self._item_labels
        return {
            Columns.item: pl.Series(Columns.item, ids[items], dtype=pl.String),
            "source": source,
            Columns.segment: segment,
            Columns.title: pl.Series(Columns.title, titles[items], dtype=pl.String),
        }

    @cached_property
    def _item_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Item ids and titles by item row, as object arrays (indexing them is cheaper than a polars gather)."""
        ids = self.item_ids.to_list()
        return np.array(ids, dtype=object), np.array([self.titles.get(i, "") for i in ids], dtype=object)

    @cached_property
    def _user_labels(self) -> np.ndarray:
        return np.array(self.user_ids.to_list(), dtype=object)

    def _warmed_mask(self) -> np.ndarray:
        """Per served item: did synthetic interactions warm it (all False for a version saved without)."""
        return self.warmed if self.warmed is not None else np.zeros(self.inputs.n_items, dtype=bool)

    def _user_segments(self, users: np.ndarray) -> np.ndarray:
        activity = np.diff(self.inputs.history.indptr)[users]
        labels = np.where(activity <= self.sparse_max, Segments.sparse, Segments.warm)
        labels = np.where(users >= self.n_version_users, Segments.new, labels)
        # No history means the cold path, whether the version knew the user or not (users added by attributes).
        return np.where(activity == 0, Segments.cold, labels)

    # ------------------------------------------------------------------------------------------------ serve

    def _blocks(
        self, users: np.ndarray, k: int, exclude_seen: bool, block: int = 256
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Per block of `block` users: the block's users and (row, item, position, score, kept) of each one's first
        k candidates in the served order, `row` the user's place in the block (ascending; a user without
        candidates has none); a live top k keeps the positions `kept` says (see `_first_k`)."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}.")
        pool = np.arange(self.inputs.n_items)
        # A block's dense (users x items) scores stay under 2^24 entries (64 MB) on a large catalogue.
        block = max(1, min(block, 2**24 // max(pool.size, 1)))
        # The order is the ranker's placed one (cold places); the scores shown are the model's own.
        score = self.ranker.scorer(self.inputs, self.seen if exclude_seen else None, placed=False)
        for start in range(0, users.size, block):
            chunk = users[start : start + block]
            scores = score(chunk, pool)
            rows, items, kept = _first_k(self.ranker.place(scores, self.inputs, pool), pool, k)
            positions = np.arange(rows.size) - np.searchsorted(rows, rows, side="left")
            yield chunk, rows, items, positions, scores[rows, items], kept

    def _ranked(
        self, users: np.ndarray, k: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(user, item, rank, score) of each user's top k: from the precomputed table where it has them all."""
        lists = self._lists.get("top")
        if exclude_seen and lists is not None and lists.answers(users, k):
            return lists.take(users, k)
        parts = []
        for chunk, rows, items, _, scores, kept in self._blocks(users, k, exclude_seen):
            rows = rows[kept]  # ascending: a user's kept places are consecutive
            ranks = np.arange(rows.size) - np.searchsorted(rows, rows, side="left") + 1
            parts.append((chunk[rows], items[kept], ranks, scores[kept]))
        if not parts:
            return tuple(np.empty(0, dtype=np.int64) for _ in range(4))  # type: ignore[return-value]
        return tuple(np.concatenate(column) for column in zip(*parts, strict=True))  # type: ignore[return-value]

    def precompute(self, k: int = PRECOMPUTED_K, *, stop: Callable[[], bool] | None = None) -> int:
        """Ranks every served user's top k (seen items excluded) in blocks, far cheaper per user than one at a time
        (MovieLens-100K: 1.8 ms against 41 ms), and keeps them: `recommend` then answers a user whose list is done
        from the table, for any k up to it. Stops early when `stop()` says so (a newer recommender replaced this
        one). k shrinks to keep the table under PRECOMPUTED_ENTRIES entries; below PRECOMPUTED_MIN_K nothing is
        precomputed. Returns the users whose lists are ready. Safe beside requests: they read the rows already
        marked ready."""
        n_users = self.inputs.n_users
        k = min(k, PRECOMPUTED_ENTRIES // max(n_users, 1))
        if k < PRECOMPUTED_MIN_K or "top" in self._lists:
            return self.precomputed_users
        lists = TopLists.empty(n_users, k)
        self._lists["top"] = lists
        for chunk, rows, items, positions, scores, kept in self._blocks(np.arange(n_users), k, exclude_seen=True):
            users = chunk[rows]
            lists.items[users, positions] = items
            lists.scores[users, positions] = scores
            lists.kept[users, positions] = kept
            lists.ready[chunk] = True  # users without candidates too: their list is empty, live or not
            if stop is not None and stop():
                break
        return int(lists.ready.sum())

    def is_precomputed(self, user_ids: list[str], k: int) -> bool:
        """Whether `recommend(user_ids, k)` with seen items excluded is a lookup in the precomputed table (known
        users whose lists are ready, k within its depth)."""
        lists, rows = self._lists.get("top"), self._user_rows
        return lists is not None and all(i in rows for i in user_ids) and lists.answers(_positions(rows, user_ids), k)

    @property
    def precomputed_users(self) -> int:
        """Users whose top lists `precompute` has ready."""
        lists = self._lists.get("top")
        return int(lists.ready.sum()) if lists is not None else 0

    def recommend(
        self, user_ids: list[str] | pl.Series, k: int = 20, *, exclude_seen: bool = True, explain: bool = False
    ) -> pl.DataFrame:
        """Each user's top k: (user_id, item_id, rank, score, source, segment, title, user_segment[, because]).

        The version's training items are never recommended; `exclude_seen` also leaves out every item the
        workspace logged for the user since. `explain` adds `because`: the user's history items closest to the
        recommended one in text embedding (at most 2)."""
        ids = [str(i) for i in user_ids]
        users, items, ranks, scores = self._ranked(self._user_index(ids), k, exclude_seen)
        frame = self._frame(users, items, ranks, scores)
        return (
            frame.with_columns(pl.Series(BECAUSE, self._because(users, items), dtype=pl.List(pl.String)))
            if explain
            else frame
        )

    def _frame(self, users: np.ndarray, items: np.ndarray, ranks: np.ndarray, scores: np.ndarray) -> pl.DataFrame:
        item = self._item_columns(items)
        columns = {
            Columns.user: pl.Series(Columns.user, self._user_labels[users], dtype=pl.String),
            Columns.item: item[Columns.item],
            Columns.rank: ranks.astype(np.int32),
            Columns.score: scores.astype(np.float32),
            **{name: item[name] for name in ("source", Columns.segment, Columns.title)},
            USER_SEGMENT: self._user_segments(users),
        }
        return pl.DataFrame(columns)  # in RECOMMENDATION_COLUMNS order

    def _because(self, users: np.ndarray, items: np.ndarray, most: int = 2) -> list[list[str]]:
        """For each (user, item): the user's logged items closest to the item in text embedding."""
        out: list[list[str]] = []
        text, seen = self.inputs.text, self.seen
        for user, item in zip(users, items, strict=True):
            history = seen.indices[seen.indptr[user] : seen.indptr[user + 1]]
            if history.size == 0:
                out.append([])
                continue
            closest = history[np.argsort(-(text[history] @ text[item]), kind="stable")[:most]]
            out.append(self.item_ids.gather(closest).to_list())
        return out

    def recommend_text(
        self, text: str, k: int = 20, *, user_id: str | None = None, weight: float = 0.5, exclude_seen: bool = True
    ) -> pl.DataFrame:
        """Items for interests stated in words: cosine of the text's MiniLM embedding to each item's. With
        `user_id`, blended with that user's ranker scores: (1 - weight) * ranker + weight * text, each min-max
        scaled over the catalog (items outside the ranker's candidates count 0 on its side)."""
        if not text.strip():
            raise DataError("the stated text is empty; say what you are interested in, e.g. --text 'space operas'.")
        if not 0 <= weight <= 1:
            raise ConfigError(f"weight must be in [0, 1], got {weight}.")
        query = self._embed([text])[0]
        similarity = (self.inputs.text @ query).astype(np.float64)
        pool = np.arange(self.inputs.n_items)
        if user_id is None:
            scores, user = similarity, None
        else:
            user = self._user_index([str(user_id)])
            ranked = self.ranker.scorer(self.inputs, self.seen if exclude_seen else None)(user, pool)[0]
            scores = (1 - weight) * _minmax(ranked) + weight * _minmax(similarity)
            blocked = (self.seen if exclude_seen else self.inputs.history)[user].toarray()[0] > 0
            scores[blocked] = -np.inf
        _, items = top_k(scores[None, :], pool, k)
        frame = pl.DataFrame(
            {
                Columns.user: [user_id] * items.size,
                **self._item_columns(items),
                Columns.rank: np.arange(1, items.size + 1, dtype=np.int32),
                Columns.score: scores[items].astype(np.float32),
                "text_similarity": similarity[items].astype(np.float32),
                USER_SEGMENT: self._user_segments(user).repeat(items.size) if user is not None else [None] * items.size,
            },
            schema_overrides={Columns.user: pl.String, USER_SEGMENT: pl.String},
        )
        if user_id is None:
            frame = frame.with_columns(source=pl.lit(STATED_TEXT))
        return frame.select(*RECOMMENDATION_COLUMNS, "text_similarity")

    def similar_items(self, item_ids: list[str] | pl.Series, k: int = 10) -> pl.DataFrame:
        """Each item's k nearest items by cosine in the collaborative space, each item seen as the ranker sees it
        (ID embedding when it has training interactions, content stand-in otherwise):
        (seed_item_id, item_id, rank, score, source, segment, title)."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}.")
        seeds = self._item_index([str(i) for i in item_ids])
        everything = np.arange(self.inputs.n_items)
        view = self.inputs.item_view(everything, np.zeros(everything.size, dtype=bool))[:, :-1]  # drop the bias
        view = view / np.maximum(np.linalg.norm(view, axis=1, keepdims=True), 1e-12)
        scores = view[seeds] @ view.T
        scores[np.arange(seeds.size), seeds] = -np.inf  # an item is not similar to itself
        rows, items = top_k(scores, everything, k)
        ranks = np.arange(rows.size) - np.searchsorted(rows, rows, side="left") + 1
        frame = pl.DataFrame(
            {
                "seed_item_id": self.item_ids.gather(seeds[rows]),
                **self._item_columns(items),
                Columns.rank: ranks.astype(np.int32),
                Columns.score: scores[rows, items].astype(np.float32),
            }
        )
        return frame.select(
            "seed_item_id", Columns.item, Columns.rank, Columns.score, "source", Columns.segment, Columns.title
        )

    def users_for_item(
        self, item_id: str, k: int = 20, *, exclude_seen: bool = True, block: int = 1024
    ) -> pl.DataFrame:
        """The k users the ranker scores highest for one item (who should see it), users who already logged it
        left out: (item_id, user_id, rank, score, source, segment, title, user_segment)."""
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}.")
        item = self._item_index([str(item_id)])
        # One item across users: the model's scores (places are kept within a user's list, not across users).
        score = self.ranker.scorer(self.inputs, self.seen if exclude_seen else None, placed=False)
        users = np.arange(self.inputs.n_users)
        column = np.concatenate([score(users[s : s + block], item)[:, 0] for s in range(0, users.size, block)])
        _, best = top_k(column[None, :], users, k)
        frame = pl.DataFrame(
            {
                Columns.user: self.user_ids.gather(best),
                **self._item_columns(np.full(best.size, item[0])),
                Columns.rank: np.arange(1, best.size + 1, dtype=np.int32),
                Columns.score: column[best].astype(np.float32),
                USER_SEGMENT: self._user_segments(best),
            }
        )
        return frame.select(
            Columns.item,
            Columns.user,
            Columns.rank,
            Columns.score,
            "source",
            Columns.segment,
            Columns.title,
            USER_SEGMENT,
        )


def _first_k(scores: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's first k candidates in `ranker.base.top_k`'s order (equal scores to the lower item) for a score
    matrix that is -inf outside a few candidates per row (only the finite entries are sorted, not every item):
    (row, item, kept). As top_k, an inf takes a place among the first k and is then dropped (not `kept`)."""
    # A flat scan: 2-D np.nonzero took 29 ms of a 33 x 500k batch, a flat one 3 (benchmarks/dense_topk.py).
    rows, columns = np.divmod(np.flatnonzero(~np.isnan(scores) & (scores != -np.inf)), scores.shape[1])
    values = scores[rows, columns]
    order = np.lexsort((pool[columns], -values, rows))
    rows, columns, values = rows[order], columns[order], values[order]
    first = np.arange(rows.size) - np.searchsorted(rows, rows, side="left") < k
    return rows[first], pool[columns[first]], np.isfinite(values[first])


def _top_k_of_candidates(scores: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """`ranker.base.top_k` (rows' top k, equal scores to the lower item, never -inf, inf or NaN) of such a matrix."""
    rows, items, kept = _first_k(scores, pool, k)
    return rows[kept], items[kept]


def _rows(ids: pl.Series) -> dict[str, int]:
    return {value: row for row, value in enumerate(ids.to_list())}


def _positions(rows: dict[str, int], ids: list[str]) -> np.ndarray:
    return np.fromiter((rows[i] for i in ids), dtype=np.int64, count=len(ids))


def _matrix(pairs: pl.DataFrame, user_ids: pl.Series, item_ids: pl.Series) -> sp.csr_array:
    """Binary (users x items) matrix of (user_id, item_id) pairs, in the order of the id series."""
    users = pairs.join(pl.DataFrame({Columns.user: user_ids}).with_row_index("_u"), on=Columns.user)
    both = users.join(pl.DataFrame({Columns.item: item_ids}).with_row_index("_i"), on=Columns.item)
    data = np.ones(both.height, dtype=np.float32)
    matrix = sp.csr_array(
        (data, (both["_u"].to_numpy(), both["_i"].to_numpy())), shape=(user_ids.len(), item_ids.len())
    )
    return sp.csr_array((matrix > 0).astype(np.float32))


def _pad_rows(matrix: sp.csr_array | None, n: int) -> sp.csr_array | None:
    """`matrix` with n zero rows appended (features an added item does not have)."""
    if matrix is None:
        return None
    return sp.csr_array(sp.vstack([matrix, sp.csr_array((n, matrix.shape[1]), dtype=matrix.dtype)]))


def _with_users(
    inputs: RankerInputs, rows: sp.csr_array, user_cf: np.ndarray, standins: np.ndarray, attributes: np.ndarray
) -> RankerInputs:
    """The inputs with users appended: `rows` is their history, `user_cf` their collaborative [vector | 1] rows,
    `standins` their stand-ins and `attributes` their attribute rows. Every item array stays as it is (`replace`: a
    field added to RankerInputs is carried along, not dropped)."""
    assert inputs.user_standin is not None and inputs.user_attributes is not None
    return replace(
        inputs,
        history=sp.csr_array(sp.vstack([inputs.history, rows])),
        user_cf=np.vstack([inputs.user_cf, user_cf.astype(inputs.user_cf.dtype)]),
        user_standin=np.vstack([inputs.user_standin, standins.astype(inputs.user_standin.dtype)]),
        user_attributes=np.vstack([inputs.user_attributes, attributes.astype(inputs.user_attributes.dtype)]),
        time=inputs.time.with_users(rows.shape[0]) if inputs.time is not None else None,
    )


def _user_standins(
    inputs: RankerInputs, builder: UserStandInBuilder | None, attributes: pl.Series, rows: sp.csr_array
) -> np.ndarray:
    """Stand-in [vector | 1] rows of users from their attributes and the text of their `rows` (history); without a
    builder (a version saved before user stand-ins) a zero vector: the item bias alone, as training had it."""
    if builder is None:
        standins = np.zeros((rows.shape[0], inputs.user_cf.shape[1]), dtype=np.float32)
        standins[:, -1] = 1.0
        return standins
    return builder.transform(attributes, text_profiles(rows, inputs.text))


def _attribute_rows(inputs: RankerInputs, builder: UserStandInBuilder | None, attributes: pl.Series) -> np.ndarray:
    """Users' attribute rows as the version encoded its own (none without a builder: versions saved before)."""
    assert inputs.user_attributes is not None
    width = inputs.user_attributes.shape[1]
    if builder is None or width == 0:
        return np.zeros((attributes.len(), width), dtype=np.float32)
    return builder.attribute_rows(attributes)


def _folded_in(inputs: RankerInputs, rows: sp.csr_array, standins: np.ndarray) -> np.ndarray:
    """Collaborative [vector | 1] rows of users whose interactions (`rows`) the version never trained on: each
    solved against the version's fixed item vectors (the items as the ranker sees them: ID embeddings, stand-ins
    for items without history) and blended with their stand-in by how many interactions they have."""
    coo = sp.coo_array(rows)
    view = inputs.item_view(np.arange(inputs.n_items), np.zeros(inputs.n_items, dtype=bool))
    users, items = coo.row.astype(np.int64), coo.col.astype(np.int64)
    folded = fold_in_users(users, items, view[:, :-1], view[:, -1])
    folded = np.vstack([folded, np.zeros((rows.shape[0] - folded.shape[0], folded.shape[1]), folded.dtype)])
    return blend_with_fold_in(folded, standins, np.diff(sp.csr_array(rows).indptr).astype(np.float32))


def _released(items: pl.DataFrame) -> pl.Series:
    """The items' release times (null where the frame does not say)."""
    if Columns.released in items.columns:
        return items[Columns.released]
    return pl.Series(Columns.released, [None] * items.height, dtype=pl.Datetime("us", "UTC"))


__all__ = ["CONTENT_STANDIN", "ID_EMBEDDING", "STATED_TEXT", "SYNTHETIC_WARMED", "Recommender"]
