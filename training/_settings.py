"""The models' hyperparameters: `ModelSettings` (every model one evaluation trains), `StandInConfig` (how stand-ins
are built) and `TimedChoices` (what a log with times changes). Their defaults are what the product runs."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from catalog import SPARSE_MAX, ConfigError
from encoders import CFConfig, ImplicitConfig, MapperConfig, WarmingConfig
from ranker.base import RankerBase
from ranker.deepfm import DeepFMConfig
from ranker.lightgbm_ranker import LightGBMRankerConfig
from ranker.registry import ranker_class


class StandInConfig(BaseModel):
    """How stand-ins (collaborative vectors made from content) are built for entities without history.

    A ridge mapper with penalty 10, fitted out-of-fold on warm entities, is what every ranker figure in
    docs/benchmarks.md was measured with. The distilled MLP mapper scored better alone (CiteULike cold Recall@20
    0.3064 against 0.2438, benchmarks/cf_mapper.py) but has not been measured inside the ranker, so it is not the
    default.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    mapper: MapperConfig = MapperConfig()
    """The content-to-ID mapper fitted on warm entities (its defaults: ridge, penalty 10)."""
    folds: int = Field(5, ge=2)
    """Warm entities get out-of-fold stand-ins (a mapper fitted on the other folds), so the ranker learns from
    stand-ins like the ones it is served for new entities."""
    seed: int = 0
    """Seeds the fold assignment."""


class TimedChoices(BaseModel):
    """What a log with times changes in the defaults, chosen on MovieLens-100K's validation window from prior weight
    {0, 1, 2} x warming {off, on} x tail strength {0, 0.5} x cold places {0, 1, 2} (benchmarks/ml100k_temporal.py,
    docs/benchmarks.md): the only setting that met the floors set for it and recent popularity's NDCG there."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    prior_weight: float = Field(2.0, ge=0)
    """The LightGBM ranker boosts from recent popularity with this weight."""
    prior_days: Literal[7, 14, 28] = 14
    """Over how many days that recent popularity is counted."""
    cold_slots: int = Field(1, ge=0)
    """Places of the top k the best-scored new items keep."""
    simulate: bool = False
    """Whether the embedding simulator warms stand-ins (it cost validation NDCG@20 0.3732 -> 0.3624); pairs the
    language-model judge wrote still warm their items."""


TIMED_ALTERNATIVES: dict[str, TimedChoices] = {
    "choice_recent14_place1": TimedChoices(),
    "choice_recent28": TimedChoices(prior_days=28, cold_slots=0),
}
"""The timed choices a backfill (window by window) and a refresh (run by run) choose among: each run trains each on
the same encoders and scores it on its held-out data, and the next run serves the one that scored best there. The
first is the validation window's choice (the default); the second boosts from the line the gate holds the product
to (recent popularity over 28 days) and keeps no place for new items."""


@dataclass(frozen=True)
class ModelSettings:
    """Hyperparameters of every model one evaluation trains (chosen on validation splits)."""

    # implicit's ALS (dim 256, reg 0.01, alpha 40, chosen on CiteULike's warm_val; early stopping on the plan's
    # validation pairs) beat BPR-MF on CiteULike alone and inside the product, tied on MovieLens-100K, and fits in a
    # fraction of the time (docs/benchmarks.md). It waited until cold users with different attributes got
    # different lists through it (tests/serving/test_user_standins.py): the newcomer model serves them now. On
    # every core: the same vectors as on one, in about half the time on two (docs/scaling.md).
    cf: CFConfig = field(default_factory=lambda: ImplicitConfig(threads=0))
    standins: StandInConfig = field(default_factory=StandInConfig)
    ranker: LightGBMRankerConfig = field(default_factory=LightGBMRankerConfig)
    deepfm: DeepFMConfig = field(default_factory=DeepFMConfig)
    # How synthetic interactions warm stand-ins (chosen on CiteULike's hybrid_val, benchmarks/warming.py); None
    # trains without them (the `--no-augment` ablation).
    warming: WarmingConfig | None = field(default_factory=WarmingConfig)
    # What replaces the above on a log with times (`for_log`); None keeps them.
    timed: TimedChoices | None = field(default_factory=TimedChoices)
    # Users with at most `newcomers` events are served by the newcomer model (ranker.newcomers), its weights chosen
    # on a holdout of training users (training.choose_newcomers); None: every user by the ranker. Users with fewer
    # than 6 events ranked below popularity through the ranker (docs/benchmarks.md, issue 29).
    newcomers: int | None = SPARSE_MAX
    # Which ranker fit_ranker trains: a name in ranker.registry.RANKERS.
    ranker_name: str = "lightgbm"
    seed: int = 0

    def __post_init__(self) -> None:
        ranker_class(self.ranker_name)  # an unknown name is a ConfigError here, not after the encoders trained

    @classmethod
    def seeded(cls, seed: int, ranker_name: str = "lightgbm") -> ModelSettings:
        """The default settings with every model seeded by `seed`, training `ranker_name`."""
        defaults = cls()
        mapper = defaults.standins.mapper.model_copy(update={"seed": seed})
        return cls(
            cf=defaults.cf.model_copy(update={"seed": seed}),
            standins=defaults.standins.model_copy(update={"mapper": mapper, "seed": seed}),
            ranker=defaults.ranker.model_copy(update={"seed": seed}),
            deepfm=defaults.deepfm.model_copy(update={"seed": seed}),
            warming=defaults.warming.model_copy(update={"seed": seed}) if defaults.warming else None,
            ranker_name=ranker_name,
            seed=seed,
        )

    @classmethod
    def capped(cls, seed: int, max_epochs: int, ranker_name: str = "lightgbm") -> ModelSettings:
        """The seeded defaults with BPR-MF's epochs capped (scheduled retrains on a budget)."""
        seeded = cls.seeded(seed, ranker_name)
        cf = seeded.cf.model_copy(update={"epochs": min(seeded.cf.epochs, max_epochs)})
        return replace(seeded, cf=cf)

    def with_ann_min_items(self, ann_min_items: int | None) -> ModelSettings:
        """The same settings with the LightGBM ranker's candidates taken from an ANN index over pools of at least
        `ann_min_items` items (None: always exact; WARMSTART_ANN_MIN_ITEMS)."""
        return replace(self, ranker=self.ranker.model_copy(update={"ann_min_items": ann_min_items}))

    def for_log(self, has_times: bool) -> ModelSettings:
        """The settings a log with (or without) times trains with: `timed`'s choices applied where it has times."""
        if not has_times or self.timed is None:
            return self
        choices = self.timed
        ranker = self.ranker.model_copy(update=choices.model_dump(include={"prior_weight", "prior_days", "cold_slots"}))
        warming = self.warming.model_copy(update={"simulate": choices.simulate}) if self.warming else None
        return replace(self, ranker=ranker, warming=warming, timed=None)

    def with_timed(self, choices: TimedChoices) -> ModelSettings:
        """The same settings with `choices` for logs with times."""
        return replace(self, timed=choices)

    def refitting(self, ranker: RankerBase, bpr_epochs: int) -> ModelSettings:
        """The settings that train `ranker` (fitted with these settings) again on more data: its configuration with
        its early-stopped length fixed (`RankerBase.refit_config`) and BPR-MF for `bpr_epochs` epochs, with the
        timed choices already applied (`for_log`)."""
        fixed = ranker.refit_config()
        cf = self.cf.model_copy(update={"epochs": max(bpr_epochs, 1)})
        if isinstance(fixed, DeepFMConfig):
            return replace(self, cf=cf, deepfm=fixed, timed=None)
        if isinstance(fixed, LightGBMRankerConfig):
            return replace(self, cf=cf, ranker=fixed, timed=None)
        raise ConfigError(f"no settings hold the configuration of {type(ranker).__name__}.")

    def without_augmentation(self) -> ModelSettings:
        """The same settings training without synthetic interactions (the ablation)."""
        return replace(self, warming=None)

    def ranker_config(self) -> BaseModel:
        """The configuration of the chosen ranker."""
        return self.deepfm if self.ranker_name == "deepfm" else self.ranker

    def new_ranker(self) -> RankerBase:
        """An unfitted ranker of the chosen kind with its configuration."""
        if self.ranker_name not in ("lightgbm", "deepfm"):
            raise ConfigError(f"no configuration for ranker {self.ranker_name!r}.")
        return ranker_class(self.ranker_name)(self.ranker_config())  # type: ignore[call-arg]
