"""The reward-model checkpoint resource: ensemble settings and where checkpoints live.

Both `reward_scores` (which needs the model of the previous round, or fresh heads in round 1)
and `reward_model` (which trains it) read the ensemble settings from here, so they can't drift.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from auf_assets.core.ensemble import EnsembleConfig, RewardEnsemble
from resources import home
from resources.store import DuckDBStore, StoreError


class UncertaintyModel(dg.ConfigurableResource):
    """Anchored head ensemble settings (spec section 2) and checkpoint loading/saving."""

    n_heads: int = Field(default=20, ge=2)
    hidden: list[int] = Field(default_factory=lambda: [128, 128])
    lr: float = 5e-5
    anchor_lambda0: float = 1.0
    anchor_half_life: float = Field(
        default=1000.0, description="labelled prompts after which the anchor weight halves"
    )
    center_coef: float = 0.01
    replay_capacity: int = Field(default=6400, ge=1, description="pairs in the FIFO buffer")
    batch_size: int = Field(default=64, ge=1)
    max_steps: int = Field(default=100, ge=1, description="training steps per round")
    seed: int = 0
    checkpoint_dir: str = Field(default="", description="empty: $AUF_HOME/reward_models")

    def ensemble_config(self) -> EnsembleConfig:
        return EnsembleConfig(
            n_heads=self.n_heads,
            hidden=tuple(self.hidden),
            lr=self.lr,
            anchor_lambda0=self.anchor_lambda0,
            anchor_half_life=self.anchor_half_life,
            center_coef=self.center_coef,
            replay_capacity=self.replay_capacity,
            batch_size=self.batch_size,
            max_steps=self.max_steps,
            seed=self.seed,
        )

    def fresh(self, in_dim: int) -> RewardEnsemble:
        return RewardEnsemble(in_dim, self.ensemble_config())

    def latest_before(
        self, store: DuckDBStore, round_id: str, encoder: str, in_dim: int
    ) -> tuple[RewardEnsemble, str | None]:
        """The newest checkpoint of a round before `round_id`, or fresh heads (round 1)."""
        row = store.query(
            "SELECT round_id, path FROM reward_models WHERE round_id < ? AND encoder = ? "
            "ORDER BY round_id DESC LIMIT 1",
            [round_id, encoder],
        )
        if row.height == 0:
            return self.fresh(in_dim), None
        path = Path(row["path"][0])
        if not path.is_absolute():
            path = store.root / path
        if not path.is_file():
            raise StoreError(
                f"reward model of {row['round_id'][0]} is recorded at {path} but the file is "
                "missing; re-materialise that round's reward_model"
            )
        model = RewardEnsemble.load(path)
        if model.in_dim != in_dim:
            raise StoreError(
                f"reward model of {row['round_id'][0]} expects {model.in_dim}-dim features but "
                f"the encoder gives {in_dim}; use the same encoder or start a new home"
            )
        return model, row["round_id"][0]

    def checkpoint_path(self, store: DuckDBStore, round_id: str) -> Path:
        folder = (
            Path(self.checkpoint_dir) if self.checkpoint_dir else home.reward_models_dir(store.root)
        )
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{round_id}.safetensors"
