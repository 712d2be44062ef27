"""The pipeline's round and the simulator share one logic (auf_assets.core.round_step): the same
features, the same replay buffer, the same training passes and warm-up rule, so a setting chosen
in `auf simulate` means the same in a real round."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from test_simulation import pool_frame

from auf_assets.core.ensemble import EnsembleConfig, RewardEnsemble
from auf_assets.core.features import TEXT_STATS, EncoderBlock, scale_block
from auf_assets.core.methods import get_method
from auf_assets.core.round_step import (
    ReplayBuffer,
    select_with_model,
    train_on_replay,
    warming_up,
)
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


def test_replay_buffer_fifo():
    buf = ReplayBuffer(capacity=5)
    assert len(buf) == 0 and buf.rows.height == 0

    def rows(start, n):
        v = np.arange(start, start + n)
        return pl.DataFrame({"chosen": v, "rejected": -v})

    buf.add(rows(0, 3))
    assert len(buf) == 3 and buf.arrays("chosen")[0].tolist() == [0, 1, 2]
    buf.add(rows(3, 4))  # 7 in, capacity 5: 0 and 1 are dropped
    c, r = buf.arrays("chosen", "rejected")
    assert len(buf) == 5 and c.tolist() == [2, 3, 4, 5, 6] and r.tolist() == [-2, -3, -4, -5, -6]
    buf.add(rows(7, 0))  # a round without decided pairs changes nothing
    assert buf.arrays("chosen")[0].tolist() == [2, 3, 4, 5, 6]
    buf.add(rows(100, 12))  # more than the capacity at once: only the newest 5 stay
    assert buf.arrays("chosen")[0].tolist() == [107, 108, 109, 110, 111]
    for i in range(9):  # many small rounds
        buf.add(rows(200 + i, 1))
    assert buf.arrays("chosen")[0].tolist() == [204, 205, 206, 207, 208]
    # Features themselves as array columns: what the benchmarks keep.
    feats = ReplayBuffer(2)
    feats.add(pl.DataFrame({"chosen": np.eye(3, dtype=np.float32)}))
    assert feats.arrays("chosen")[0].tolist() == [[0, 1, 0], [0, 0, 1]]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="capacity"):
            ReplayBuffer(bad)


def test_the_pipelines_replay_buffer_is_the_simulators(tmp_path):
    """The pipeline rebuilds the buffer each round from every decided pair in the store; the
    simulator adds each round's pairs as it goes: the same pairs, in the same order."""
    store = DuckDBStore(path=str(tmp_path / "db.duckdb"))
    ids = [f"p{i}" for i in range(9)]
    store.add_prompts(pl.DataFrame({"prompt_id": ids, "prompt": ids, "source": "s"}), "f")
    simulator = ReplayBuffer(capacity=5)
    for k in (1, 2, 3):
        taken = store.take_round_prompts(f"round-000{k}", k, 3).prompts["prompt_id"].to_list()
        rows = [
            {
                "pair_id": f"z-{pid}",  # ids sort against the prompt order on purpose
                "round_id": f"round-000{k}",
                "prompt_id": pid,
                "preference": "tie" if pid == "p4" else "a",
                "chosen_completion_id": f"{pid}-c",
                "rejected_completion_id": f"{pid}-r",
                "labeller": "t",
            }
            for pid in taken
        ]
        store.replace_round("judgements", f"round-000{k}", pl.DataFrame(rows))
        decided = [(r["chosen_completion_id"], r["rejected_completion_id"]) for r in rows]
        simulator.add(  # the simulator's round: its non-tied pairs, in the round's prompt order
            pl.DataFrame(
                [p for p, r in zip(decided, rows, strict=True) if r["preference"] != "tie"],
                schema=["chosen", "rejected"],
                orient="row",
            )
        )
        pipeline = ReplayBuffer.of(store.decided_pairs(k), 5)
        got = pipeline.arrays("chosen_completion_id", "rejected_completion_id")
        assert [x.tolist() for x in got] == [
            x.tolist() for x in simulator.arrays("chosen", "rejected")
        ]
    assert len(pipeline) == 5 and "p4-c" not in got[0]
    first = ReplayBuffer.of(store.decided_pairs(1), 100).rows
    assert first["round_id"].unique().to_list() == ["round-0001"]


def test_one_warm_up_rule_for_both():
    """Round numbers count from 1; the first `warmup_rounds` rounds pick at random."""
    assert [warming_up(n, 2) for n in (1, 2, 3)] == [True, True, False]
    assert not warming_up(1, 0)
    rng = np.random.default_rng(4)
    mu, sigma = rng.normal(size=(6, 5)), rng.uniform(0.1, 1.0, size=(6, 5))
    kwargs = {"warmup_rounds": 1, "beta": 1.0, "seed": 9}
    picks, rule = select_with_model("deltaucb", mu, sigma, None, round_number=1, **kwargs)
    assert rule == "random"
    np.testing.assert_array_equal(picks, get_method("random").select(mu, sigma, seed=9))
    picks, rule = select_with_model("deltaucb", mu, sigma, None, round_number=2, **kwargs)
    assert rule == "deltaucb"
    np.testing.assert_array_equal(picks, get_method("deltaucb").select(mu, sigma))
    # the method's options apply to the method, never to the warm-up rule
    options = {"q": 0.5}
    _, rule = select_with_model(
        "deltaquantile", mu, sigma, None, round_number=1, options=options, **kwargs
    )
    assert rule == "random"
    with pytest.raises(ValueError, match="sharp is a policy method"):
        select_with_model("sharp", mu, sigma, None, round_number=3, **kwargs)


def test_training_passes_on_the_buffer_are_one_update():
    rng = np.random.default_rng(0)
    chosen = rng.normal(size=(20, 4)).astype(np.float32)
    rejected = rng.normal(size=(20, 4)).astype(np.float32)
    cfg = EnsembleConfig(n_heads=3, hidden=(8,), max_steps=2, batch_size=4, seed=1)
    by_hand = RewardEnsemble(4, cfg)
    passes = [by_hand.train_round(chosen, rejected, 20) for _ in range(3)]
    model = RewardEnsemble(4, cfg)
    stats = train_on_replay(model, chosen, rejected, 20, passes=3)
    assert stats.steps == 6 == sum(p.steps for p in passes)
    assert stats.loss_before == passes[0].loss_before and stats.loss_after == passes[-1].loss_after
    np.testing.assert_array_equal(model.predict(chosen)[0], by_hand.predict(chosen)[0])
    with pytest.raises(ValueError, match="passes"):
        train_on_replay(model, chosen, rejected, 20, passes=0)


def test_warm_up_rounds_pick_at_random_and_passes_repeat_training(auf_home, tiny_lm_dir):
    import dagster as dg
    from test_round import tiny_resources, tiny_run_config

    from auf_assets.prompts import prompt_pool
    from auf_assets.round import ROUND_ASSETS
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
