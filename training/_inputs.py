"""The ranker's inputs for one split: text embeddings, BPR-MF, stand-ins (warmed by synthetic interactions where
asked), TF-IDF, categories and recency, all aligned to the split's index."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from catalog import Columns, DataError, has_times
from encoders import BPRMF, CFConfig, EmbeddingCache, ImplicitMF, WarmingConfig, cf_model, encode_texts, item_text
from ranker.baselines import tfidf_item_vectors
from ranker.evaluate import EvalIndex, ProtocolSplit, interaction_matrix
from ranker.features import RankerInputs, normalise_rows
from ranker.temporal import TimeFeatures, time_features
from training._settings import StandInConfig
from training._standins import StandInBuilder, Warmed, synthetic_matrix, warmed_standins
from training._user_standins import UserStandInBuilder, user_attributes


@dataclass(frozen=True)
class EncoderReport:
    """What producing one split's inputs measured."""

    bprmf: dict[str, float | int | None]  # the CF model's summary: epochs run, best epoch, validation scores
    text_cache_hits: int
    text_cache_misses: int
    warming: dict[str, object] | None = None  # the warming config and what it warmed, when warming ran

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "bprmf": self.bprmf,
            "text_cache_hits": self.text_cache_hits,
            "text_cache_misses": self.text_cache_misses,
        }
        if self.warming is not None:
            out["warming"] = self.warming
        return out


@dataclass(frozen=True, eq=False)
class ItemContent:
    """What the items' own text and categories give, whatever the history: every set of inputs encoded over the
    same items can share it (a fit's served inputs share their fitted ones': at 500k items the text embeddings
    alone are 0.8 GB, held twice while the served inputs were encoded beside the fitted)."""

    text: np.ndarray
    title_words: np.ndarray
    tfidf: sp.csr_array
    categories: sp.csr_array | None
    # The embedding cache's answers when the text was encoded.
    text_cache_hits: int
    text_cache_misses: int


def item_content(items: pl.DataFrame, *, cache_dir: Path) -> ItemContent:
    """`items`' (one row per index item, in index order) text embeddings (through the cache in `cache_dir`), title
    lengths, TF-IDF rows and categories."""
    cache = EmbeddingCache.in_cache_dir(cache_dir)
    text = encode_texts(item_text(items).to_list(), cache=cache, show_progress=True)
    titles = items[Columns.title].fill_null("")
    return ItemContent(
        text=text,
        title_words=title_words(titles),
        tfidf=tfidf_item_vectors(titles.to_list(), min_df=1 if titles.len() < 50 else 2),
        categories=category_matrix(items),
        text_cache_hits=cache.hits,
        text_cache_misses=cache.misses,
    )


@dataclass(frozen=True, eq=False)
class EncodedSplit:
    """The ranker's inputs for one split, the stand-in builder that made them, and what producing them measured."""

    inputs: RankerInputs
    report: EncoderReport
    standins: StandInBuilder
    # What synthetic interactions warmed (serving's source, the line without augmentation); None without them.
    warming: Warmed | None = None
    # The builder that gave users their stand-ins (serving gives users added later theirs from it).
    user_standins: UserStandInBuilder | None = None
    # The items' content the inputs were encoded with (inputs encoded over the same items can share it).
    content: ItemContent | None = None

    def without_warming(self) -> EncodedSplit:
        """The same inputs serving the content stand-ins (itself when nothing was warmed)."""
        if self.warming is None:
            return self
        inputs = self.inputs.with_item_standins(self.warming.content, None)
        return EncodedSplit(inputs, self.report, self.standins, user_standins=self.user_standins, content=self.content)

    def inputs_for(self, split: ProtocolSplit) -> RankerInputs:
        """The inputs, with the split's request times where its users arrive at their own times (the protocols
        over users: the newcomer model's recent shares are those of the days before each asks)."""
        times = split.request_times()
        return self.inputs if times is None else replace(self.inputs, request_times=times)

    def with_history(self, history: sp.csr_array) -> EncodedSplit:
        """The same encoders' arrays serving from another (users x items) history; popularity follows it."""
        inputs = replace(self.inputs, history=history, popularity=np.asarray(history.sum(axis=0)).ravel())
        return replace(self, inputs=inputs)

    def over_log(self, log: pl.DataFrame, index: EvalIndex, items: pl.DataFrame) -> EncodedSplit:
        """These encoders' arrays with the history, popularity and recency that inputs encoded over `log` (and
        `items`, in index order) have: what does not depend on the encoders, as `encode_inputs` makes it."""
        history = interaction_matrix(log, index)
        popularity = np.asarray(history.sum(axis=0)).ravel()
        time = _time_features(log, index, items)
        return replace(self, inputs=replace(self.inputs, history=history, popularity=popularity, time=time))


def _aligned(ids: np.ndarray, vectors: np.ndarray, wanted: pl.Series, width: int) -> np.ndarray:
    """Rows of `vectors` (keyed by sorted `ids`) in the order of `wanted`; zero rows for ids it lacks."""
    out = np.zeros((wanted.len(), width), dtype=np.float32)
    if ids.size == 0:
        return out
    names = wanted.to_numpy().astype(str)
    positions = np.minimum(np.searchsorted(ids, names), ids.size - 1)
    found = ids[positions] == names
    out[found] = vectors[positions[found]]
    return out


def encode_inputs(
    index: EvalIndex,
    items: pl.DataFrame,
    history: pl.DataFrame,
    *,
    cache_dir: Path,
    cf_config: CFConfig,
    standin_config: StandInConfig,
    cf_validation: pl.DataFrame | None = None,
    warming: WarmingConfig | None = None,
    synthetic: pl.DataFrame | None = None,
    users: pl.DataFrame | None = None,
    takers: pl.DataFrame | None = None,
    content: ItemContent | None = None,
) -> EncodedSplit:
    """Text embeddings, BPR-MF on `history`, out-of-fold stand-ins and TF-IDF: the ranker's inputs.

    `items` holds one row per index item, in index order. Users and items absent from `history` get zero
    collaborative vectors; items then serve through their stand-ins. With `warming`, stand-ins are warmed by
    synthetic interactions (`warmed_standins`): `synthetic` (user_id, item_id, weight) where given for an item
    without history, the embedding simulator's proposals elsewhere; with `takers` (user_id, item_id: the ranker's
    labels, held out of `history`), a share of warm items are warmed from pairs naming some of their takers.
    Users get stand-ins from their attributes in `users` (the users table; none given: from their text alone) and
    the text of their items, out-of-fold for users with history (`UserStandInBuilder`). `content` is `items`'
    (`item_content`) where another set of inputs over the same items has it already.
    """
    if content is None:
        content = item_content(items, cache_dir=cache_dir)
    elif content.text.shape[0] != items.height:
        raise DataError(f"encode_inputs: item content for {content.text.shape[0]} items, {items.height} items given.")
    text = content.text
    matrix = interaction_matrix(history, index)
    cf = cf_model(cf_config).fit(history.select(Columns.user, Columns.item), cf_validation, show_progress=True)
    item_cf, user_cf = _collaborative(cf, index)
    cf_summary = cf.summary
    del cf  # its own vectors, copied into item_cf and user_cf (0.45 GB at M, held through warming before)
    popularity = np.asarray(matrix.sum(axis=0)).ravel()
    warm = np.flatnonzero(popularity > 0)
    builder = StandInBuilder(standin_config)
    standins = builder.fit_out_of_fold(text, item_cf, warm)
    warmed = None
    if warming is not None:
        given = synthetic_matrix(synthetic, index, warm) if synthetic is not None else None
        taken = interaction_matrix(takers, index) if takers is not None else None
        warmed = warmed_standins(standins, user_cf, item_cf, warm, given, warming, taken)
        standins = warmed.standins
    user_builder = UserStandInBuilder(standin_config)
    with_history = np.flatnonzero(np.diff(matrix.indptr) > 0)
    attributes = user_attributes(users, index.user_ids)
    user_standins = user_builder.fit_out_of_fold(attributes, text_profiles(matrix, text), user_cf, with_history)
    inputs = RankerInputs(
        history=matrix,
        text=text,
        user_cf=user_cf,
        item_cf=item_cf,
        item_standin=standins,
        popularity=popularity,
        title_words=content.title_words,
        tfidf=content.tfidf,
        categories=content.categories,
        time=_time_features(history, index, items),
        user_standin=user_standins,
        user_attributes=user_builder.attribute_rows(attributes),
        item_given=warmed.given_pairs if warmed is not None else None,
    )
    report = EncoderReport(
        bprmf=cf_summary,
        text_cache_hits=content.text_cache_hits,
        text_cache_misses=content.text_cache_misses,
        warming=warmed.config.model_dump() | warmed.report.as_dict() if warmed is not None else None,
    )
    return EncodedSplit(
        inputs=inputs,
        report=report,
        standins=builder,
        warming=warmed,
        user_standins=user_builder,
        content=content,
    )


def text_profiles(history: sp.csr_array, text: np.ndarray) -> np.ndarray:
    """Each user's normalised mean of their items' normalised text embeddings (zero rows without items): the text
    part of a user's stand-in, as RankerInputs.text_profiles has it."""
    return normalise_rows(
        sp.csr_array(history > 0, dtype=np.float32) @ normalise_rows(np.asarray(text, dtype=np.float32))
    )


def _collaborative(cf: BPRMF | ImplicitMF, index: EvalIndex) -> tuple[np.ndarray, np.ndarray]:
    """(item [vector | bias], user [vector | 1]) rows in index order: the item bias rides along as one more
    dimension, the user side holding a 1."""
    emb = cf.embeddings
    width = emb.dim + 1
    item_cf = _aligned(emb.item_ids, np.c_[emb.item_vectors, emb.item_bias], index.item_ids, width)
    user_cf = _aligned(emb.user_ids, np.c_[emb.user_vectors, np.ones(emb.user_ids.size)], index.user_ids, width)
    # The user side's constant 1 carries the item bias into every score, for users BPR-MF never saw as well:
    # without it a user without history scores 0 for every item instead of each item's learned bias.
    user_cf[:, -1] = 1.0
    return item_cf, user_cf


def title_words(titles: pl.Series) -> np.ndarray:
    """Words per title (a ranker feature), for training and for items added later alike."""
    return titles.fill_null("").str.split(" ").list.len().to_numpy().astype(np.float32)


def _time_features(history: pl.DataFrame, index: EvalIndex, items: pl.DataFrame) -> TimeFeatures | None:
    """Recency arrays as of the history's end, for logs with times (`items` in index order)."""
    if not has_times(history):
        return None
    released = items[Columns.released] if Columns.released in items.columns else None
    return time_features(history, index.user_ids, index.item_ids, released=released)


def category_matrix(items: pl.DataFrame) -> sp.csr_array | None:
    """Multi-hot (items x distinct categories, sorted by name) in the row order of `items`; None without any."""
    if Columns.categories not in items.columns:
        return None
    rows = items.select(pl.col(Columns.categories).fill_null([])).with_row_index("_row").explode(Columns.categories)
    rows = rows.drop_nulls(Columns.categories)
    if rows.height == 0:
        return None
    names = rows[Columns.categories].unique().sort()
    columns = np.searchsorted(names.to_numpy(), rows[Columns.categories].to_numpy())
    data = np.ones(rows.height, dtype=np.float32)
    matrix = sp.csr_array((data, (rows["_row"].to_numpy(), columns)), shape=(items.height, names.len()))
    return sp.csr_array(matrix > 0, dtype=np.float32)
