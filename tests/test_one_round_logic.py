"""The pipeline's round and the simulator share one logic: the same features, the same replay
buffer, the same training passes and warm-up, so a setting chosen in `auf simulate` means the
same in a real round."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from test_simulation import pool_frame

from auf_assets.core.ensemble import ReplayBuffer
from auf_assets.core.features import TEXT_STATS, EncoderBlock, scale_block
from auf_assets.core.simulation import validate_pool
from auf_assets.core.text_features import (
    N_TEXT_FEATURES,
    REFERENCE_STATISTICS,
    TEXT_FEATURE_NAMES,
    scale_text_statistics,
    standardize,
    text_statistics,
)
from auf_assets.pool_features import pool_features
from resources.encoder import FeatureEncoder
from resources.store import DuckDBStore


def test_the_pipeline_encoder_gives_the_simulator_features(tmp_path, tiny_lm_dir):
    pool = validate_pool(pool_frame(4, 3))
    spec = f"{tiny_lm_dir}+text-stats"  # one setting, the same string in both
    sim = pool_features(
        pool, spec, pooling="last", dtype="fp32", device="cpu", root=tmp_path
    ).matrix
    encoder = FeatureEncoder(encoder=spec, pooling="last", dtype="fp32", device="cpu")
    frame = pool.frame.sort("feature_row")
    ours = encoder.encode(frame["prompt"].to_list(), frame["response"].to_list())
    assert ours.shape == (12, 32 + N_TEXT_FEATURES)
    # The simulator caches fp16: equal up to that rounding.
    np.testing.assert_allclose(ours, sim[frame["feature_row"].to_numpy()], rtol=2e-3, atol=2e-3)
    # The backbone block: unit vectors times sqrt(dim); the statistics on the reference scale.
    assert np.allclose(np.linalg.norm(ours[:, :32], axis=1), np.sqrt(32), rtol=1e-4)
    stats = scale_text_statistics(
        text_statistics(frame["prompt"].to_list(), frame["response"].to_list())
    )
    assert np.allclose(ours[:, 32:], stats, atol=1e-5)
    assert "text-stats" in encoder.key and encoder.key.endswith("|z1")
    assert encoder.key != FeatureEncoder().key  # the default: text statistics alone
    assert FeatureEncoder().key == "text-stats:v1|z1"


def test_text_statistics_are_scaled_by_fixed_numbers_not_by_the_batch():
    prompts, responses = ["Explain DNS."] * 3, ["Short.", "A longer answer\n- one\n- two", ""]
    raw = text_statistics(prompts, responses)
    one_by_one = np.concatenate([scale_text_statistics(raw[i : i + 1]) for i in range(3)])
    assert np.array_equal(one_by_one, scale_text_statistics(raw))  # a round's batch is no input
    assert not np.allclose(scale_text_statistics(raw), standardize(raw))
    assert [n for n, _, _ in REFERENCE_STATISTICS] == list(TEXT_FEATURE_NAMES)
    assert np.array_equal(scale_block(EncoderBlock(TEXT_STATS), raw), scale_text_statistics(raw))
    with pytest.raises(ValueError, match="matrix"):
        scale_text_statistics(np.zeros((2, 3)))


def test_the_encoder_is_one_spec_checked_when_built():
    only_stats = FeatureEncoder(encoder="text-stats").encode(["q"], ["an answer."])
    assert only_stats.shape == (1, N_TEXT_FEATURES)
    for bad in ("", "minilm++text-stats"):
        with pytest.raises(ValueError, match="bad encoder setting"):
            FeatureEncoder(encoder=bad)
    # A run config saved with the old pair of keys is refused, naming the one spec to use.
    with pytest.raises(ValueError, match="set encoder: 'all-minilm-l6-v2\\+text-stats'"):
        FeatureEncoder(model="all-minilm-l6-v2")
    with pytest.raises(ValueError, match="set encoder: 'text-stats'"):
        FeatureEncoder(model="", text_stats=True)


def test_the_store_replay_buffer_is_the_simulators_fifo(tmp_path):
    store = DuckDBStore(path=str(tmp_path / "db.duckdb"))
    ids = [f"p{i}" for i in range(9)]
    store.add_prompts(pl.DataFrame({"prompt_id": ids, "prompt": ids, "source": "s"}), "f")
    order = []  # (chosen, rejected) in the order the simulator would add them
    for k in (1, 2, 3):
        taken = store.take_round_prompts(f"round-000{k}", k, 3).prompts["prompt_id"].to_list()
        rows = []
        for pid in taken:
            rows.append(
                {
                    "pair_id": f"z-{pid}",  # ids sort against the prompt order on purpose
                    "round_id": f"round-000{k}",
                    "prompt_id": pid,
                    "preference": "tie" if pid == "p4" else "a",
                    "chosen_completion_id": f"{pid}-c",
                    "rejected_completion_id": f"{pid}-r",
                    "labeller": "t",
                }
            )
            if pid != "p4":
                order.append((f"{pid}-c", f"{pid}-r"))
        store.replace_round("judgements", f"round-000{k}", pl.DataFrame(rows))
    buffer = ReplayBuffer(capacity=5, dim=1)
    names = {name: i for i, name in enumerate(sorted({n for pair in order for n in pair}))}
    for c, r in order:
        buffer.add(
            np.array([[names[c]]], dtype=np.float32), np.array([[names[r]]], dtype=np.float32)
        )
    chosen, _ = buffer.arrays()
    inverse = {i: n for n, i in names.items()}
    expected = [inverse[int(v)] for v in chosen[:, 0]]
    got = store.replay_buffer(3, 5)["chosen_completion_id"].to_list()
    assert got == expected
    assert store.replay_buffer(1, 100)["round_id"].unique().to_list() == ["round-0001"]


def test_warm_up_rounds_pick_at_random_and_passes_repeat_training(auf_home, tiny_lm_dir):
    import dagster as dg
    from test_round import tiny_resources, tiny_run_config

    from auf_assets.active_round import ROUND_ASSETS
    from auf_assets.prompts import prompt_pool
    from resources.reward_model import UncertaintyModel

    instance = dg.DagsterInstance.ephemeral()
    dg.materialize([prompt_pool], instance=instance, resources={"store": DuckDBStore()})
    instance.add_dynamic_partitions("rounds", ["round-0001"])
    config = tiny_run_config(tiny_lm_dir, method="deltaucb")
    config["ops"]["selected_pairs"]["config"]["warmup_rounds"] = 1
    model = UncertaintyModel(
        n_heads=4, hidden=[16, 16], lr=1e-2, max_steps=1, batch_size=2, train_passes=3
    )
    result = dg.materialize(
        ROUND_ASSETS,
        instance=instance,
        partition_key="round-0001",
        resources={**tiny_resources(tiny_lm_dir), "uncertainty_model": model},
        run_config=config,
    )
    meta = {
        e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert meta["selected_pairs"]["method"].value == "random"
    assert meta["selected_pairs"]["warm_up_round"].value is True
    assert meta["selected_pairs"]["random_pair_predicted_gap"].value >= 0
    assert set(DuckDBStore().round_rows("pairs", "round-0001")["method"]) == {"random"}
    if meta["reward_model"]["replay_pairs"].value:
        assert meta["reward_model"]["train_steps"].value == 3
