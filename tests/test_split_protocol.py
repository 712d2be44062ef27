"""The split protocol (tune on one half of a pool, confirm on the other) and settings presets."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from auf_assets.core.simulation import (
    SPLIT_HALVES,
    Oracle,
    PoolError,
    SimulationConfig,
    pool_half,
    protocol_split,
    protocol_splits,
    simulate,
    split_prompts,
    validate_pool,
)

FAST_ENSEMBLE = {"n_heads": 4, "hidden": (16, 16), "lr": 3e-3}
FAST_EVAL = {"n_heads": 2, "hidden": (16, 16), "epochs": 5, "lr": 3e-3}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def model_pool(n_prompts: int = 24, n_models: int = 8, seed: int = 0) -> pl.DataFrame:
    """Every prompt answered by every model; model k's scores centre on k / n_models (so models
    have clearly different strengths), and a response's length grows with its score."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        for k in range(n_models):
            s = float(np.clip(k / n_models + 0.15 * rng.normal(), 0.0, 1.0))
            rows.append(
                {
                    "prompt_id": f"p{p:03d}",
                    "prompt": f"Question {p}?",
                    "completion_id": f"p{p:03d}-m{k}",
                    "model": f"m{k}",
                    "response": " ".join(f"w{i}" for i in range(int(3 + 30 * s))) + ".",
                    "oracle_score": s,
                }
            )
    return pl.DataFrame(rows)


def features(pool, dim: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(pool.n_responses, dim)).astype(np.float32)
    x[:, 0] = 3.0 * pool.scores + 0.2 * rng.normal(size=pool.n_responses)
    return x


def cfg(method: str, seed: int = 0, **kw) -> SimulationConfig:
    base = {"batch_size": 4, "ensemble": dict(FAST_ENSEMBLE), "eval_model": dict(FAST_EVAL)}
    return SimulationConfig.from_dict({**base, **kw, "method": method, "seed": seed})


def _models(sub) -> set[str]:
    return set(sub.frame["model"].to_list())


# -- the splits -------------------------------------------------------------------------------


def test_prompt_split_halves_are_disjoint_prompt_sets_with_every_model():
    pool = validate_pool(model_pool(25, 6))
    split = protocol_split(pool, "prompts", seed=3, index=0)
    assert not set(split.tune_prompts) & set(split.confirm_prompts)
    assert sorted(split.tune_prompts + split.confirm_prompts) == sorted(pool.prompt_ids)
    assert len(split.tune_prompts) == 13 and len(split.confirm_prompts) == 12
    tune, confirm = (pool_half(pool, split, h) for h in SPLIT_HALVES)
    assert set(tune.prompt_ids) == set(split.tune_prompts)
    assert set(confirm.prompt_ids) == set(split.confirm_prompts)
    assert _models(tune) == _models(confirm) == {f"m{k}" for k in range(6)}
    assert tune.n_responses + confirm.n_responses == pool.n_responses


def test_model_split_halves_are_disjoint_model_sets_on_every_prompt():
    pool = validate_pool(model_pool(10, 9))
    split = protocol_split(pool, "models", seed=0, index=1)
    assert not set(split.tune_models) & set(split.confirm_models)
    assert sorted(split.tune_models + split.confirm_models) == [f"m{k}" for k in range(9)]
    assert {len(split.tune_models), len(split.confirm_models)} == {4, 5}
    tune, confirm = (pool_half(pool, split, h) for h in SPLIT_HALVES)
    # Each prompt keeps only its half's responses: same prompts, no shared response.
    assert tune.prompt_ids == confirm.prompt_ids == pool.prompt_ids
    assert _models(tune) == set(split.tune_models) and _models(confirm) == set(split.confirm_models)
    assert not set(tune.frame["completion_id"]) & set(confirm.frame["completion_id"])


def test_model_split_is_stratified_by_strength_unless_asked_not_to():
    pool = validate_pool(model_pool(40, 8, seed=1))
    # Ranked by mean score the models are m7, m6, ..., m0: consecutive pairs go to different
    # halves, so each half has one of the two strongest, one of the next two, and so on.
    for index in range(6):
        split = protocol_split(pool, "models", seed=5, index=index)
        for a, b in (("m7", "m6"), ("m5", "m4"), ("m3", "m2"), ("m1", "m0")):
            assert (a in split.tune_models) != (b in split.tune_models)
    uniform = [
        protocol_split(pool, "models", seed=5, index=i, stratify_models=False) for i in range(12)
    ]
    together = sum(("m7" in s.tune_models) == ("m6" in s.tune_models) for s in uniform)
    assert together > 0  # uniform halving sometimes puts the two strongest in one half


def test_both_split_crosses_prompt_and_model_halves():
    pool = validate_pool(model_pool(20, 8))
    split = protocol_split(pool, "both", seed=0, index=0)
    tune, confirm = (pool_half(pool, split, h) for h in SPLIT_HALVES)
    assert not set(tune.prompt_ids) & set(confirm.prompt_ids)
    assert not _models(tune) & _models(confirm)
    assert tune.n_responses == 10 * 4 and confirm.n_responses == 10 * 4
    # The halves keep pointing into the full pool's feature rows.
    ids = pool.frame["completion_id"].to_list()
    for sub in (tune, confirm):
        for cid, row in zip(sub.frame["completion_id"], sub.feature_rows, strict=True):
            assert ids[row] == cid


def test_splits_are_reproducible_by_seed_and_differ_by_index_and_seed():
    pool = validate_pool(model_pool(30, 10))
    a = protocol_splits(pool, "both", 3, seed=7)
    b = protocol_splits(pool, "both", 3, seed=7)
    assert a == b
    assert [s.index for s in a] == [0, 1, 2]
    assert a[0].tune_prompts != a[1].tune_prompts and a[0].tune_models != a[1].tune_models
    c = protocol_splits(pool, "both", 3, seed=8)
    assert [s.tune_prompts for s in c] != [s.tune_prompts for s in a]
    assert pool_half(pool, a[1], "tune").frame.equals(pool_half(pool, b[1], "tune").frame)
    assert json.loads(json.dumps(a[0].to_dict()))["tune_models"] == list(a[0].tune_models)


def test_split_errors():
    pool = validate_pool(model_pool(6, 3))
    with pytest.raises(ValueError, match="at least 4 models"):
        protocol_split(pool, "models")
    with pytest.raises(ValueError, match="split must be one of"):
        protocol_split(pool, "responses")
    with pytest.raises(ValueError, match="half must be one of"):
        pool_half(pool, protocol_split(pool, "prompts"), "test")
    with pytest.raises(ValueError, match="n_splits"):
        protocol_splits(pool, "prompts", 0)
    # A half whose prompts keep fewer than 2 responses drops them, and fails when none is left.
    ragged = model_pool(8, 4).filter(~((pl.col("prompt_id") == "p000") & (pl.col("model") != "m0")))
    rp = validate_pool(ragged)
    split = protocol_split(rp, "models", seed=0)
    half = "tune" if "m0" in split.tune_models else "confirm"
    assert "p000" in pool_half(rp, split, half).dropped_prompts
    with pytest.raises(ValueError, match="at least 2 prompts"):
        protocol_split(validate_pool(model_pool(1, 4)), "both")
    # p000 answered by m0, m1 and p001 by m2, m3: stratified halving sends strength neighbours
    # (m0/m1, m2/m3) to different halves, so each half keeps one response per prompt: nothing.
    apart = model_pool(2, 4).filter(
        ((pl.col("prompt_id") == "p000") & pl.col("model").is_in(["m0", "m1"]))
        | ((pl.col("prompt_id") == "p001") & pl.col("model").is_in(["m2", "m3"]))
    )
    ap = validate_pool(apart)
    with pytest.raises(PoolError, match="no prompt left"):
        pool_half(ap, protocol_split(ap, "models", seed=0), "tune")


# -- runs inside a half -----------------------------------------------------------------------


def test_a_run_inside_a_half_selects_evaluates_and_reveals_only_that_half():
    pool = validate_pool(model_pool(32, 8))
    x = features(pool)
    split = protocol_split(pool, "both", seed=1, index=0)
    for half in SPLIT_HALVES:
        sub = pool_half(pool, split, half)
        oracle = Oracle(sub.scores)
        result = simulate(sub, x, cfg("deltaucb", seed=2), oracle=oracle)
        train, held = split_prompts(sub.n_prompts, 0.25, 2)
        assert len(held) == 4 and result.info["heldout_eval_pairs"] > 0
        picked = set(result.pairs["prompt_id"])
        assert picked == {sub.prompt_ids[i] for i in train}
        assert picked <= set(split.prompts(half))
        model_of = dict(zip(pool.frame["completion_id"], pool.frame["model"], strict=True))
        used = {
            model_of[c]
            for c in [
                *result.pairs["chosen_completion_id"],
                *result.pairs["rejected_completion_id"],
            ]
        }
        assert used <= set(split.models(half))
        revealed = set(sub.frame[oracle.revealed_rows()]["completion_id"])
        evaluated = set(sub.frame[oracle.evaluated_rows()]["prompt_id"])
        assert revealed <= set(sub.frame["completion_id"])
        assert evaluated == {sub.prompt_ids[i] for i in held}
        assert result.curve[-1]["accuracy"] is not None
        # Analysis hooks: the held-out rows and the final evaluation model's rewards.
        assert len(result.heldout["rows"]) == len(result.heldout["mu"]) > 0
        assert result.pool is not None and result.pool.n_prompts == sub.n_prompts


def test_the_halves_really_differ():
    pool = validate_pool(model_pool(32, 8))
    x = features(pool)
    split = protocol_split(pool, "models", seed=0, index=0)
    tune, confirm = (pool_half(pool, split, h) for h in SPLIT_HALVES)
    assert not np.isclose(tune.scores.mean(), confirm.scores.mean(), atol=1e-3)
    a = simulate(tune, x, cfg("random", seed=0))
    b = simulate(confirm, x, cfg("random", seed=0))
    # Same prompts (a model split), same run seed: same prompt order, different responses.
    assert a.pairs["prompt_id"].to_list() == b.pairs["prompt_id"].to_list()
    assert not set(a.pairs["chosen_completion_id"]) & set(b.pairs["chosen_completion_id"])
    assert a.curve[-1]["mean_gap"] != b.curve[-1]["mean_gap"]


# -- the report -------------------------------------------------------------------------------


def _run(method, seed, split, half, acc, gap, labels=8):
    point = {"accuracy": acc, "mean_gap": gap, "labels": labels}
    return {"method": method, "seed": seed, "split": split, "half": half, "curve": [point]}


def test_protocol_report_pairs_runs_with_random_and_applies_the_bar():
    from auf_assets.sim_bench_report import protocol_markdown, protocol_report

    runs = []
    for half in SPLIT_HALVES:
        for split in (0, 1):
            for seed in (0, 1):
                runs.append(_run("random", seed, split, half, 0.80 + 0.01 * split, 0.2))
                # drts: +0.01 accuracy and a 2x gap everywhere, except seed 1 on confirm.
                bad = half == "confirm" and seed == 1
                runs.append(
                    _run("drts", seed, split, half, 0.80 + 0.01 * split + (-0.02 if bad else 0.01),
                         0.4)
                )  # fmt: skip
                runs.append(_run("maxmin", seed, split, half, 0.9, 0.8, labels=40))
    report = protocol_report(runs)
    assert list(report) == ["tune", "confirm"]
    tune = report["tune"]["drts"]
    assert tune["runs"] == 4 and tune["gap_ratio"] == pytest.approx(2.0)
    assert tune["delta_accuracy"][0] == pytest.approx(0.01)
    assert tune["per_seed"][0]["gap_ratio"] == pytest.approx(2.0)
    assert tune["bar"]["passes"] and tune["bar"]["min_delta_accuracy"] == pytest.approx(0.01)
    conf = report["confirm"]["drts"]
    assert conf["per_seed"][1]["delta_accuracy"] == pytest.approx(-0.02)
    assert not conf["bar"]["passes"]
    # MaxMin spends more labels: never judged against the equal-label bar.
    assert not report["tune"]["maxmin"]["bar"]["equal_labels"]
    assert not report["tune"]["maxmin"]["bar"]["passes"]
    assert not report["tune"]["random"]["bar"]["passes"]
    md = protocol_markdown(report)
    assert "| tune | drts | 4 | 8 |" in md and "| pass |" in md and "| fail |" in md


# -- CLIs -------------------------------------------------------------------------------------

SMALL = [
    "--encoder", "text-stats", "--batch", "4", "--heads", "4", "--lr", "3e-3",
    "--eval-epochs", "5", "--eval-heads", "2",
]  # fmt: skip


def test_auf_bench_split_both(tmp_path, auf_home, capsys):
    from auf_assets.cli import main

    path = tmp_path / "pool.parquet"
    model_pool(24, 8).write_parquet(path)
    out = tmp_path / "bench"
    argv = ["bench", "--pool", str(path), "--methods", "random,deltaucb", "--seeds", "0", "1",
            "--split", "both", "--splits", "2", "--out", str(out), "--jobs", "1",
            *SMALL]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((out / "bench.json").read_text())
    assert len(data["runs"]) == 2 * 2 * 2 * 2  # methods x seeds x splits x halves
    assert data["protocol"]["kind"] == "both" and len(data["protocol"]["splits"]) == 2
    s0, s1 = data["protocol"]["splits"]
    assert not set(s0["tune_prompts"]) & set(s0["confirm_prompts"])
    assert not set(s0["tune_models"]) & set(s0["confirm_models"])
    assert s0["tune_prompts"] != s1["tune_prompts"]
    assert set(data["groups"]) == {"split0/tune", "split0/confirm", "split1/tune", "split1/confirm"}
    assert set(data["protocol_report"]) == {"tune", "confirm"}
    assert data["protocol_report"]["confirm"]["deltaucb"]["runs"] == 4
    for run in data["runs"]:
        split = data["protocol"]["splits"][run["split"]]
        prompts = split[f"{run['half']}_prompts"]
        pairs = pl.read_parquet(run["pairs_file"])
        assert set(pairs["prompt_id"]) <= set(prompts)
        assert f"split{run['split']}-{run['half']}" in run["pairs_file"]
    md = (out / "bench.md").read_text()
    assert "split protocol 'both'" in md and "| confirm | deltaucb |" in md
    assert (out / "bench.png").is_file() and (out / "bench-tune.png").is_file()
    assert "| tune | random |" in capsys.readouterr().out


def test_auf_bench_without_split_is_unchanged(tmp_path, auf_home):
    from auf_assets.cli import main

    path = tmp_path / "pool.parquet"
    model_pool(12, 5).write_parquet(path)
    out = tmp_path / "bench"
    argv = ["bench", "--pool", str(path), "--methods", "random", "--seeds", "0",
            "--out", str(out), "--jobs", "1", *SMALL]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((out / "bench.json").read_text())
    assert "protocol" not in data and "half" not in data["runs"][0]
    assert data["preset"] == "default"


def test_auf_simulate_on_one_half_and_with_a_preset(tmp_path, auf_home, capsys):
    from auf_assets.cli import main

    path = tmp_path / "pool.parquet"
    model_pool(16, 8).write_parquet(path)
    out = tmp_path / "sel.parquet"
    argv = ["simulate", "--pool", str(path), "--method", "drts", "--out", str(out),
            "--split", "models", "--split-index", "1", "--half", "confirm",
            "--preset", "reference", "--lr", "2e-3", "--encoder", "text-stats", "--batch", "4",
            "--heads", "3", "--eval-epochs", "3", "--eval-heads", "2"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["preset"] == "reference"
    assert summary["config"]["ensemble"]["lr"] == 2e-3  # the flag overrides the preset
    assert summary["config"]["ensemble"]["n_heads"] == 3
    assert summary["config"]["ensemble"]["max_steps"] == 100  # the preset's
    assert summary["split"]["half"] == "confirm" and summary["split"]["index"] == 1
    pairs = pl.read_parquet(out)
    models = {c.split("-")[1] for c in pairs["chosen_completion_id"]}
    assert models <= set(summary["split"]["confirm_models"])
    assert "confirm half of models split 1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:  # refused when parsed, before any work
        main([*argv[:-2], "--preset", "nope"])
    assert refused.value.code == 2


# -- presets ----------------------------------------------------------------------------------


def test_presets_are_round_settings_and_default_is_what_the_code_does():
    from auf_assets.cli import build_parser
    from auf_assets.core.methods import get_method
    from auf_assets.core.presets import PRESETS, get_preset, run_settings
    from auf_assets.core.settings import RoundSettings, SettingsError

    # `default` is RoundSettings() by construction: every consumer reads its defaults from it.
    assert get_preset("default") == RoundSettings()
    ref = get_preset("reference")
    assert (ref.encoder, ref.train_passes, ref.ensemble.min_steps) == ("minilm", 1, 0)
    for name, preset in PRESETS.items():
        assert get_method(preset.settings.method).family == "reward_model", name
        SimulationConfig.from_dict(run_settings(name))  # every preset is a valid config
    # A partial ensemble dict overrides the default preset's, not the reference's.
    partial = SimulationConfig.from_dict({"ensemble": {"lr": 1e-3}}).ensemble
    assert partial.lr == 1e-3 and partial.min_steps == RoundSettings().ensemble.min_steps
    # The CLIs leave the preset's values alone unless a flag is given.
    args = build_parser().parse_args(["simulate", "--pool", "p", "--out", "o"])
    assert args.encoder is None and args.preset is None and args.method is None
    demo = build_parser().parse_args(["demo"])
    assert demo.method is None and demo.acquisition_width is None

    # Copies, not the table itself; overrides merge into the ensemble and are checked.
    get_preset("reference").ensemble.lr = 1.0
    assert PRESETS["reference"].settings.ensemble.lr == 5e-5
    merged = run_settings("reference", ensemble={"lr": 1e-3}, acquisition_width=0.5)
    assert merged["ensemble"]["lr"] == 1e-3 and merged["ensemble"]["n_heads"] == 20
    assert merged["acquisition_width"] == 0.5
    with pytest.raises(SettingsError, match=r"acquisition_width must be .* in \[0, inf\)"):
        run_settings("default", acquisition_width=-1.0)
    with pytest.raises(SettingsError, match="unknown preset"):
        get_preset("tuned-on-my-laptop")


@pytest.mark.process
def test_presets_module_imports_nothing_heavy():
    # The CLI builds its parser (and checks its flags) from the presets: no torch, no Dagster.
    code = (
        "import sys, auf_assets.core.presets, auf_assets.cli\n"
        "print([m for m in ('torch', 'dagster', 'polars') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
