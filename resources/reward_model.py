"""The reward-model checkpoint resource: ensemble settings and where checkpoints live.

Both `reward_scores` (which needs the model of the previous round, or fresh heads in round 1)
and `reward_model` (which trains it) read the ensemble settings from here; a loaded checkpoint
takes the settings that may change between rounds and refuses the ones that cannot (see
`EnsembleConfig.CHANGEABLE_FIELDS` and `FIXED_FIELDS`), so what is configured is what trains.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import dagster as dg
from pydantic import Field, model_validator

from auf_assets.core.devices import choose_device
from auf_assets.core.ensemble import EnsembleConfig, RewardEnsemble
from auf_assets.core.settings import RoundSettings, check_number
from resources import home
from resources.store import DuckDBStore, StoreError

# Defaults: the default preset (auf_assets/core/presets.py), the same as `auf simulate`'s.
_ROUND = RoundSettings()
_ENSEMBLE = _ROUND.ensemble


class UncertaintyModel(dg.ConfigurableResource):
    """Anchored head ensemble settings (spec section 2) and checkpoint loading/saving.

    The values are checked when the resource is built (`EnsembleConfig`, i.e.
    `auf_assets.core.settings.EnsembleSettings`, says what is allowed)."""

    n_heads: int = _ENSEMBLE.n_heads
    hidden: list[int] = Field(default_factory=lambda: list(_ENSEMBLE.hidden))
    lr: float = _ENSEMBLE.lr
    weight_decay: float = _ENSEMBLE.weight_decay
    anchor_lambda0: float = _ENSEMBLE.anchor_lambda0
    anchor_half_life: float = Field(
        default=_ENSEMBLE.anchor_half_life,
        description="labelled prompts after which the anchor weight halves",
    )
    center_coef: float = _ENSEMBLE.center_coef
    replay_capacity: int = Field(
        default=_ENSEMBLE.replay_capacity, description="pairs in the FIFO buffer"
    )
    batch_size: int = _ENSEMBLE.batch_size
    max_steps: int = Field(default=_ENSEMBLE.max_steps, description="training steps per pass")
    min_steps: int = Field(
        default=_ENSEMBLE.min_steps,
        description="the fewest steps per pass: a small replay buffer is passed over again, so "
        "the first rounds of small batches learn",
    )
    train_passes: int = Field(
        default=_ROUND.train_passes,
        description="training passes over the replay buffer per round",
    )
    seed: int = 0
    checkpoint_dir: str = Field(default="", description="empty: $AUF_HOME/reward_models")

    @model_validator(mode="after")
    def _check(self) -> UncertaintyModel:
        self.ensemble_config()
        check_number("n_heads", self.n_heads, ge=2, integer=True)  # one head has no spread
        check_number("train_passes", self.train_passes, ge=1, integer=True)
        return self

    def ensemble_config(self) -> EnsembleConfig:
        return EnsembleConfig(
            n_heads=self.n_heads,
            hidden=tuple(self.hidden),
            lr=self.lr,
            weight_decay=self.weight_decay,
            anchor_lambda0=self.anchor_lambda0,
            anchor_half_life=self.anchor_half_life,
            center_coef=self.center_coef,
            replay_capacity=self.replay_capacity,
            batch_size=self.batch_size,
            max_steps=self.max_steps,
            min_steps=self.min_steps,
            seed=self.seed,
        )

    def fresh(self, in_dim: int) -> RewardEnsemble:
        choose_device("cpu")  # the ensemble runs on the CPU: this process's share of it
        return RewardEnsemble(in_dim, self.ensemble_config())

    def previous_model(
        self, store: DuckDBStore, round_id: str, round_index: int, encoder: str, in_dim: int
    ) -> tuple[RewardEnsemble, dict | None]:
        """The model round `round_id` builds on: the previous round's checkpoint.

        The first round starts from fresh heads. Any later round needs the checkpoint of the round
        right before it (in round order); when that round has none yet, this fails and names it:
        falling back to an older checkpoint would silently fork the model's history. Settings
        that may change between rounds (learning rate, steps, batch, anchor schedule) take effect
        on the loaded model; the ones that cannot (heads, layers, seed, feature size) fail.
        Returns the model and the previous round's `reward_models` row (None in the first round).
        """
        choose_device("cpu")  # the ensemble runs on the CPU: this process's share of it
        previous = store.previous_round(round_index)
        if previous is None:
            return self.fresh(in_dim), None
        record = store.reward_model_record(previous)
        if record is None:
            raise StoreError(
                f"{round_id} builds on the reward model of {previous}, which has none yet: "
                f"finish {previous} first (materialise its judgements and reward_model), then "
                f"run {round_id} again"
            )
        if record["encoder"] != encoder:
            raise StoreError(
                f"the reward model of {previous} was trained on {record['encoder']} features but "
                f"the encoder is now {encoder}: use the same encoder for every round of a home, "
                "or start a new home"
            )
        path = store.resolve(record["path"])
        if not path.is_file():
            raise StoreError(
                f"the reward model of {previous} is recorded at {path} but the file is missing; "
                f"re-materialise {previous}'s reward_model"
            )
        try:
            model = RewardEnsemble.load(path, self.ensemble_config())
        except ValueError as exc:
            raise StoreError(f"the reward model of {previous} ({path}): {exc}") from exc
        if model.in_dim != in_dim:
            raise StoreError(
                f"the reward model of {previous} expects {model.in_dim}-dim features but the "
                f"encoder gives {in_dim}; use the same encoder or start a new home"
            )
        return model, record

    def new_checkpoint_path(self, store: DuckDBStore, round_id: str) -> Path:
        """A fresh file name for a round's checkpoint (the old file stays until the row moves)."""
        folder = self.checkpoint_folder(store)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{round_id}.{uuid.uuid4().hex[:12]}.safetensors"

    def checkpoint_folder(self, store: DuckDBStore) -> Path:
        return (
            Path(self.checkpoint_dir) if self.checkpoint_dir else home.reward_models_dir(store.root)
        )
