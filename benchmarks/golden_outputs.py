"""Record the project's behaviour with fixed seeds, to compare before and after a refactor.

    .venv/bin/python benchmarks/golden_outputs.py OUT_DIR [--pool POOL]

POOL defaults to ../shared/data/sim_pool_dev.parquet.

Writes one JSON file per case: `auf simulate`'s pairs and curve on the dev pool for random,
deltaucb and drts, sharp with a tiny random policy, and two tiny-model rounds through
`dg.materialize` (pairs, reward scores, verdicts, the reward model's losses). Compare two
folders with `diff -r`. Timestamps, run ids and absolute paths are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

VOLATILE = ("_at", "path", "run_id", "seconds", "elapsed")


def _rows(frame) -> list[dict]:
    import polars as pl

    keep = [c for c in frame.columns if not any(v in c for v in VOLATILE)]
    frame = frame.select(keep)
    floats = [c for c, t in frame.schema.items() if t in (pl.Float32, pl.Float64)]
    frame = frame.with_columns([pl.col(c).round(6) for c in floats])
    return frame.sort(keep[: min(3, len(keep))]).to_dicts()


def simulated(pool_path: str, out: Path, work: Path) -> None:
    from auf_assets.core.simulation import SimulationConfig, load_pool, simulate
    from auf_assets.pool_features import pool_features

    pool = load_pool(pool_path)
    feats = pool_features(pool, "text-stats", root=work / "features")
    for method in ("random", "deltaucb", "drts"):
        config = SimulationConfig.from_dict({"method": method, "seed": 0, "max_rounds": 3})
        result = simulate(pool, feats.matrix, config)
        _write(out / f"simulate-{method}.json", result.pairs, result.curve)


def simulated_sharp(pool_path: str, out: Path, work: Path) -> None:
    from tiny_models import build_tiny_lm, with_chat_template

    from auf_assets.core.policy import PolicyLoop, PolicyLoopConfig
    from auf_assets.core.simulation import SimulationConfig, load_pool, simulate
    from auf_assets.pool_features import pool_features

    base = with_chat_template(build_tiny_lm(work / "lm"), work / "chat-lm")
    pool = load_pool(pool_path)
    feats = pool_features(pool, "text-stats", root=work / "features")
    config = SimulationConfig.from_dict(
        {
            "method": "sharp",
            "seed": 0,
            "max_rounds": 2,
            "batch_size": 16,
            "responses_per_prompt": 4,
        }
    )
    loop = PolicyLoop(
        base, PolicyLoopConfig(steps_per_round=2, max_length=64, device="cpu"), seed=0
    )
    try:
        result = simulate(pool, feats.matrix, config, policy=loop)
    finally:
        loop.close()
    _write(out / "simulate-sharp.json", result.pairs, result.curve)


def pipeline_rounds(out: Path, work: Path) -> None:
    import dagster as dg
    from test_round import materialize_round
    from tiny_models import build_tiny_lm

    from auf_assets.prompts import prompt_pool
    from resources.store import DuckDBStore

    model = build_tiny_lm(work / "round-lm")
    os.environ["AUF_HOME"] = str(work / "home")
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([prompt_pool], instance=instance, resources={"store": DuckDBStore()})
    for key in ("round-0001", "round-0002"):
        assert materialize_round(instance, key, model).success
    store = DuckDBStore()
    tables = {}
    for table in ("round_prompts", "pairs", "reward_scores", "judge_scores", "judgements"):
        tables[table] = _rows(store.sql_for_tests(f"SELECT * FROM {table}"))  # noqa: S608
    tables["reward_models"] = _rows(
        store.sql_for_tests(
            "SELECT round_id, loss_before, loss_after, replay_sha256 FROM reward_models"
        )
    )
    (out / "pipeline-rounds.json").write_text(json.dumps(tables, indent=1, default=str))


def _write(path: Path, pairs, curve) -> None:
    curve = [{k: v for k, v in p.items() if not any(s in k for s in VOLATILE)} for p in curve]
    path.write_text(json.dumps({"pairs": _rows(pairs), "curve": curve}, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--pool", default=str(ROOT.parent / "shared/data/sim_pool_dev.parquet"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        simulated(args.pool, out, work)
        simulated_sharp(args.pool, out, work)
        pipeline_rounds(out, work)
    print(f"wrote {sorted(p.name for p in out.iterdir())}")


if __name__ == "__main__":
    main()
