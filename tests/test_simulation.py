"""Simulated-oracle runs: pool validation, the round loop, label accounting, CLIs and the assets."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from auf_assets.core.simulation import (
    PAIR_COLUMNS,
    Oracle,
    PoolError,
    SimulationConfig,
    heldout_pairs,
    load_pool,
    pairwise_accuracy,
    sample_responses,
    simulate,
    split_prompts,
    validate_pool,
)
from auf_assets.core.text_features import (
    N_TEXT_FEATURES,
    TEXT_FEATURE_NAMES,
    standardize,
    text_statistics,
)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The models here are tiny: one thread is fastest and immune to a busy machine's contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FAST_ENSEMBLE = {"n_heads": 6, "hidden": (32, 32), "lr": 3e-3}
FAST_EVAL = {"n_heads": 2, "hidden": (32, 32), "epochs": 10, "lr": 3e-3}


def pool_frame(n_prompts: int = 30, n_resp: int = 6, seed: int = 0) -> pl.DataFrame:
    """Random scores; a response's length and layout grow with its score (text-stats can learn)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        for n in range(n_resp):
            s = float(rng.random())
            words = " ".join(f"w{k}" for k in range(int(3 + 40 * s)))
            lines = "\n".join(f"- point {k}" for k in range(int(6 * s)))
            rows.append(
                {
                    "prompt_id": f"p{p:03d}",
                    "source": "synthetic",
                    "prompt": f"Question number {p}?",
                    "completion_id": f"p{p:03d}-m{n}",
                    "model": f"m{n}",
                    "response": f"{words}.\n{lines}",
                    "oracle_score": s,
                }
            )
    return pl.DataFrame(rows)


def linear_features(pool, dim: int = 8, noise: float = 0.3, seed: int = 0) -> np.ndarray:
    """Features whose first coordinate is a noisy linear function of the oracle score."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(pool.n_responses, dim)).astype(np.float32)
    x[:, 0] = 3.0 * pool.scores + noise * rng.normal(size=pool.n_responses)
    return x


def config(method: str = "deltaucb", **kw) -> SimulationConfig:
    base = {"batch_size": 8, "ensemble": dict(FAST_ENSEMBLE), "eval_model": dict(FAST_EVAL)}
    return SimulationConfig.from_dict({**base, **kw, "method": method})


# -- pool validation --------------------------------------------------------------------------


def test_pool_validation_errors_name_file_and_problem(tmp_path):
    df = pool_frame(4, 3)
    path = tmp_path / "pool.parquet"
    df.drop("oracle_score").write_parquet(path)
    with pytest.raises(PoolError, match=r"pool\.parquet.*missing column.*oracle_score"):
        load_pool(path)

    df.with_columns(oracle_score=pl.lit("high")).write_parquet(path)
    with pytest.raises(PoolError, match=r"pool\.parquet.*oracle_score must be numeric"):
        load_pool(path)

    nan = df.with_columns(
        oracle_score=pl.when(pl.col("completion_id") == "p001-m2")
        .then(float("nan"))
        .otherwise(pl.col("oracle_score"))
    )
    nan.write_parquet(path)
    with pytest.raises(PoolError, match=r"NaN.*p001-m2"):
        load_pool(path)

    dup = df.with_columns(
        completion_id=pl.when(pl.col("completion_id") == "p000-m1")
        .then(pl.lit("p000-m0"))
        .otherwise(pl.col("completion_id"))
    )
    dup.write_parquet(path)
    with pytest.raises(PoolError, match=r"duplicate completion_id.*p000-m0"):
        load_pool(path)

    with pytest.raises(PoolError, match="not found"):
        load_pool(tmp_path / "nope.parquet")
    (tmp_path / "pool.txt").write_text("x")
    with pytest.raises(PoolError, match="unsupported pool format"):
        load_pool(tmp_path / "pool.txt")


def test_prompts_with_fewer_than_two_responses_are_dropped_and_reported():
    df = pool_frame(5, 3)
    df = df.filter(~((pl.col("prompt_id") == "p002") & (pl.col("model") != "m0")))
    pool = validate_pool(df, name="mini")
    assert pool.dropped_prompts == ["p002"]
    assert pool.n_prompts == 4 and "p002" not in pool.prompt_ids
    assert pool.summary()["dropped_prompts"] == 1
    with pytest.raises(PoolError, match="no prompt has at least 2"):
        validate_pool(df.filter(pl.col("model") == "m0"), name="mini")


def test_string_scores_that_parse_are_accepted_and_source_is_optional():
    df = pool_frame(3, 3).drop("source").with_columns(pl.col("oracle_score").cast(pl.String))
    pool = validate_pool(df)
    assert pool.scores.dtype == np.float64 and pool.frame["source"].to_list()[0] == ""


def test_ragged_pool_index_and_k_sampling():
    df = pool_frame(6, 5).filter(~((pl.col("prompt_id") == "p001") & (pl.col("model") == "m4")))
    pool = validate_pool(df)
    assert pool.index.shape == (6, 5)
    assert pool.mask.sum(axis=1).tolist() == [5, 4, 5, 5, 5, 5]
    small = sample_responses(pool, 3, seed=1)
    assert small.mask.sum(axis=1).tolist() == [3] * 6
    assert sample_responses(pool, 3, seed=1).frame.equals(small.frame)
    # The sampled pool still points into the full pool's feature rows.
    full_ids = pool.frame["completion_id"].to_list()
    for cid, row in zip(small.frame["completion_id"], small.feature_rows, strict=True):
        assert full_ids[row] == cid
    with pytest.raises(ValueError):
        sample_responses(pool, 1, seed=0)


def test_split_is_seeded_and_disjoint():
    train, held = split_prompts(40, 0.25, seed=3)
    assert len(held) == 10 and len(train) == 30
    assert not set(train) & set(held)
    t2, h2 = split_prompts(40, 0.25, seed=3)
    assert np.array_equal(train, t2) and np.array_equal(held, h2)
    assert not np.array_equal(split_prompts(40, 0.25, seed=4)[1], held)


def test_heldout_pairs_and_accuracy():
    df = pl.DataFrame(
        {
            "prompt_id": ["a", "a", "a"],
            "prompt": ["q"] * 3,
            "completion_id": ["a1", "a2", "a3"],
            "model": ["x", "y", "z"],
            "response": ["r1", "r2", "r3"],
            "oracle_score": [0.9, 0.85, 0.1],
        }
    )
    pool = validate_pool(df)
    ri, rj, sign = heldout_pairs(pool, np.array([0]), pool.scores, threshold=0.1)
    assert sorted(zip(ri.tolist(), rj.tolist(), strict=True)) == [(0, 2), (1, 2)]
    assert pairwise_accuracy(np.array([1.0, 0.0, 0.5]), ri, rj, sign) == 0.5
    assert pairwise_accuracy(np.array([1.0, 1.0, 0.0]), ri, rj, sign) == 1.0
    assert pairwise_accuracy(np.array([0.0, 0.0, 0.0]), ri, rj, sign) == 0.5  # ties: 1/2


# -- the loop ---------------------------------------------------------------------------------


def test_heldout_prompts_are_never_selected_and_only_selected_scores_are_revealed():
    pool = validate_pool(pool_frame(30, 6))
    x = linear_features(pool)
    cfg = config("drts", seed=5)
    oracle = Oracle(pool.scores)
    result = simulate(pool, x, cfg, oracle=oracle)
    train, held = split_prompts(pool.n_prompts, cfg.heldout_fraction, cfg.seed)
    held_ids = {pool.prompt_ids[i] for i in held}
    assert not held_ids & set(result.pairs["prompt_id"])
    assert sorted(result.pairs["prompt_id"]) == sorted(pool.prompt_ids[i] for i in train)

    # The judge saw exactly the two responses of every selected pair, nothing else.
    row_of = {cid: i for i, cid in enumerate(pool.frame["completion_id"])}
    selected = sorted(
        row_of[c]
        for c in [*result.pairs["chosen_completion_id"], *result.pairs["rejected_completion_id"]]
    )
    assert sorted(oracle.revealed_rows().tolist()) == selected
    assert oracle.n_revealed == 2 * result.pairs.height == result.info["labels"]
    # Evaluation read only held-out ground truth.
    held_prompt = set(pool.frame[oracle.evaluated_rows()]["prompt_id"])
    assert held_prompt <= held_ids
    # chosen = the higher oracle score
    assert (result.pairs["chosen_score"] >= result.pairs["rejected_score"]).all()


def test_output_columns_and_label_accounting(tmp_path):
    pool = validate_pool(pool_frame(20, 5))
    x = linear_features(pool)
    expected = {
        "deltaucb": 2,
        "random": 2,
        "random_pair": 2,
        "ultrafeedback_oracle": 4,
        "maxmin": 5,
        "delta_model": 0,
    }
    for method, per_prompt in expected.items():
        extra = {"strong_model": "m0", "weak_model": "m1"} if method == "delta_model" else {}
        result = simulate(pool, x, config(method, seed=1, **extra))
        path = tmp_path / f"{method}.parquet"
        result.pairs.write_parquet(path)
        pairs = pl.read_parquet(path)
        assert tuple(pairs.columns) == PAIR_COLUMNS
        assert pairs.height == 15  # one pair per train prompt (25% of 20 held out)
        assert (pairs["labels"] == per_prompt).all(), method
        assert result.curve[-1]["labels"] == per_prompt * 15
        assert (pairs["method"] == method).all() and (pairs["seed"] == 1).all()
        assert pairs["round"].min() == 1 and pairs["round"].max() == 2  # B=8: 8 + 7
        assert (pairs["chosen_completion_id"] != pairs["rejected_completion_id"]).all()
        labels = [p["labels"] for p in result.curve]
        assert labels == sorted(labels)
    dm = pl.read_parquet(tmp_path / "delta_model.parquet")
    assert all(c.endswith("-m0") for c in dm["chosen_completion_id"])


def test_exact_ties_count_labels_but_do_not_train():
    df = pool_frame(16, 4).with_columns(
        oracle_score=pl.when(pl.col("prompt_id") < "p008")
        .then(0.5)
        .otherwise(pl.col("oracle_score"))
    )
    pool = validate_pool(df)
    result = simulate(pool, linear_features(pool), config("random", seed=0, heldout_fraction=0.0))
    ties = result.pairs.filter(pl.col("tie"))
    assert ties.height == 8 and (ties["labels"] == 2).all()
    assert result.curve[-1]["ties"] == 8 and result.curve[-1]["labels"] == 32
    assert result.curve[-1]["pairs"] == 16
    assert result.curve[-1]["accuracy"] is None  # nothing held out: no accuracy, never NaN


def test_determinism_under_seed():
    pool = validate_pool(pool_frame(24, 6))
    x = linear_features(pool)
    a = simulate(pool, x, config("dts", seed=7, responses_per_prompt=4))
    b = simulate(pool, x, config("dts", seed=7, responses_per_prompt=4))
    c = simulate(pool, x, config("dts", seed=8, responses_per_prompt=4))
    assert a.pairs.equals(b.pairs)
    assert [p["accuracy"] for p in a.curve] == [p["accuracy"] for p in b.curve]
    assert not a.pairs.equals(c.pairs)


def test_active_method_learns_on_a_learnable_pool():
    pool = validate_pool(pool_frame(48, 6, seed=2))
    x = linear_features(pool, dim=4, noise=0.1, seed=2)
    result = simulate(pool, x, config("drts", seed=1, batch_size=12, train_passes=3))
    final = result.curve[-1]
    assert final["accuracy"] > 0.75  # chance: 0.5
    assert final["running_accuracy"] > 0.6
    assert result.info["heldout_eval_pairs"] > 50


def test_config_validation():
    with pytest.raises(ValueError, match="unknown selection method 'nope'; known: random"):
        SimulationConfig(method="nope")
    with pytest.raises(ValueError, match="strong_model"):
        SimulationConfig(method="delta_model")
    with pytest.raises(ValueError, match="responses_per_prompt"):
        SimulationConfig(responses_per_prompt=1)
    with pytest.raises(ValueError, match="heldout_fraction"):
        SimulationConfig(heldout_fraction=1.0)
    cfg = config("infomax", warmup_rounds=1)
    again = SimulationConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


# -- text features ----------------------------------------------------------------------------


def test_text_statistics_are_bounded_and_informative():
    prompts = ["What is 2+2?", "Write code", "Hi"]
    responses = [
        "4.",
        "```python\nprint('hi')\n```\n- one\n- two\n**Note**: done.",
        "I'm sorry, I cannot help with that.",
    ]
    x = text_statistics(prompts, responses)
    assert x.shape == (3, N_TEXT_FEATURES) == (3, len(TEXT_FEATURE_NAMES))
    assert np.isfinite(x).all() and np.abs(x).max() < 1000
    col = TEXT_FEATURE_NAMES.index
    assert x[1, col("has_code_block")] == 1.0 and x[0, col("has_code_block")] == 0.0
    assert x[2, col("log_refusals")] > 0 and x[0, col("log_refusals")] == 0
    assert x[1, col("log_chars")] > x[0, col("log_chars")]
    z = standardize(x)
    assert np.allclose(z.mean(axis=0), 0, atol=1e-5)
    assert text_statistics([None], [None]).shape == (1, N_TEXT_FEATURES)


# -- CLIs and assets --------------------------------------------------------------------------

SMALL_RUN = [
    "--encoder", "text-stats", "--batch", "8", "--heads", "4", "--lr", "3e-3",
    "--eval-epochs", "5", "--eval-heads", "2",
]  # fmt: skip


def test_auf_simulate_cli(tmp_path, auf_home, capsys):
    from auf_assets.cli import main

    path = tmp_path / "pool.parquet"
    pool_frame(20, 5).write_parquet(path)
    out = tmp_path / "sel" / "pairs.parquet"
    argv = ["simulate", "--pool", str(path), "--method", "drts", "--seed", "1",
            "-K", "4", "--out", str(out), *SMALL_RUN]  # fmt: skip
    assert main(argv) == 0
    pairs = pl.read_parquet(out)
    assert tuple(pairs.columns) == PAIR_COLUMNS and pairs.height == 15
    curve = json.loads(out.with_suffix(".json").read_text())
    assert curve["curve"][-1]["labels"] == 30
    index = json.loads((auf_home / "features" / "pools" / "index.json").read_text())
    assert len(index["entries"]) == 1 and index["entries"][0]["encoder"].startswith("text-stats")
    # A second run reuses the cached features.
    assert main([*argv[: -len(SMALL_RUN)], *SMALL_RUN, "--method", "random"]) == 0
    assert (
        len(json.loads((auf_home / "features" / "pools" / "index.json").read_text())["entries"])
        == 1
    )
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "wrote" in printed

    bad = tmp_path / "bad.parquet"
    pool_frame(3, 3).drop("model").write_parquet(bad)
    assert main(["simulate", "--pool", str(bad), "--out", str(out), *SMALL_RUN]) == 2
    assert "missing column" in capsys.readouterr().err


def test_auf_bench_cli_parallel(tmp_path, auf_home, capsys):
    from auf_assets.cli import main

    path = tmp_path / "pool.parquet"
    pool_frame(20, 5).write_parquet(path)
    out = tmp_path / "bench"
    argv = ["bench", "--pool", str(path), "--methods", "random,deltaucb", "maxmin",
            "--seeds", "0", "1", "--out", str(out), "--jobs", "2", *SMALL_RUN]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((out / "bench.json").read_text())
    assert set(data["summary"]) == {"random", "deltaucb", "maxmin"}
    assert len(data["runs"]) == 6 and data["workers"] == 2
    assert data["summary"]["maxmin"]["labels_per_prompt"] == "N"
    final = data["summary"]["deltaucb"]["final"]
    assert final["labels"] == 30 and final["accuracy_mean"] is not None
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "bench.md").read_text()
    assert "| deltaucb | 2 |" in md and "held-out pairwise accuracy" in md.lower()
    assert (out / "pairs" / "maxmin-seed1.parquet").is_file()
    assert "| random | 2 |" in capsys.readouterr().out


def test_bench_assets_materialize(tmp_path, auf_home):
    import dagster as dg

    from auf_assets.bench import BENCH_ASSETS, BENCH_JOBS

    path = tmp_path / "pool.parquet"
    pool_frame(16, 4).write_parquet(path)
    run_config = {
        "ops": {
            "simulation_pool_features": {"config": {"pool": str(path), "encoder": "text-stats"}},
            "method_benchmark": {
                "config": {
                    "methods": ["random", "drts"],
                    "seeds": [0],
                    "batch_size": 6,
                    "jobs": 1,
                    "ensemble": FAST_ENSEMBLE | {"hidden": [32, 32]},
                    "eval_model": FAST_EVAL | {"hidden": [32, 32]},
                    "out_dir": str(tmp_path / "bench"),
                }
            },
        }
    }
    result = dg.materialize(BENCH_ASSETS, run_config=run_config)
    assert result.success
    mats = {
        e.step_materialization_data.materialization.asset_key.path[-1]: (
            e.step_materialization_data.materialization.metadata
        )
        for e in result.get_asset_materialization_events()
    }
    assert mats["simulation_pool_features"]["responses"].value == 64
    bench = mats["method_benchmark"]
    assert "data:image/png;base64," in bench["plot"].value
    assert "| drts | 2 |" in bench["table"].value
    assert (tmp_path / "bench" / "bench.json").is_file()
    assert BENCH_JOBS[0].name == "method_benchmark_job"


def test_pool_features_with_a_transformers_dir_and_concatenation(tmp_path, tiny_lm_dir):
    from auf_assets.pool_features import parse_encoder, pool_features

    pool = validate_pool(pool_frame(4, 3))
    spec = f"{tiny_lm_dir}+text-stats"
    feats = pool_features(pool, spec, pooling="last", dtype="fp32", device="cpu", root=tmp_path)
    assert feats.matrix.shape == (12, 32 + N_TEXT_FEATURES)
    assert all(b["computed"] for b in feats.blocks) and np.isfinite(feats.matrix).all()
    again = pool_features(
        pool, spec, pooling="last", dtype="fp32", device="cpu", root=tmp_path, allow_compute=False
    )
    assert not any(b["computed"] for b in again.blocks)
    assert np.array_equal(again.matrix, feats.matrix)
    # Another setting of the same backbone is another cache entry.
    with pytest.raises(LookupError):
        pool_features(pool, spec, pooling="mean", dtype="fp32", root=tmp_path, allow_compute=False)
    assert parse_encoder("minilm")[0].name == "all-minilm-l6-v2"
    with pytest.raises(ValueError):
        parse_encoder("minilm+")
