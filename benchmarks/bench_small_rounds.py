"""Small rounds: does the running reward model learn when a round has few prompts?

`auf demo` runs rounds of 8 prompts with 4 responses each. This replays that shape on a
simulated-oracle pool for each named preset (auf_assets/core/presets.py): per round, the mean
oracle gap of the pairs deltaucb selects against random's (same seeds, same prompts), and the
held-out accuracy of the running model itself, which is what the next round selects with.

    .venv/bin/python benchmarks/bench_small_rounds.py --pool ../shared/data/sim_pool_dev.parquet

Features are text statistics and MiniLM from the pool feature cache ($AUF_HOME); a preset whose
encoder is not cached is encoded first (MiniLM on the dev pool: about 16 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def per_round_gap(result, rounds: int) -> np.ndarray:
    pairs = result.pairs
    gap = (pairs["chosen_score"] - pairs["rejected_score"]).to_numpy()
    rnd = pairs["round"].to_numpy()
    return np.array([gap[rnd == k].mean() for k in range(1, rounds + 1)])


def main(argv: list[str] | None = None) -> int:
    from auf_assets.core.presets import get_preset, preset_names, run_settings
    from auf_assets.core.simulation import SimulationConfig, load_pool, simulate
    from auf_assets.pool_features import pool_features

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", required=True)
    ap.add_argument("--presets", nargs="+", default=["reference", "dev-protocol", "default"])
    ap.add_argument("--batch", type=int, default=8, help="prompts per round (the demo's 8)")
    ap.add_argument("--responses", type=int, default=4, help="responses per prompt (the demo's 4)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", default="", help="also write the numbers as JSON here")
    args = ap.parse_args(argv)
    unknown = set(args.presets) - set(preset_names())
    if unknown:
        ap.error(f"unknown presets {sorted(unknown)}; known: {preset_names()}")

    pool = load_pool(args.pool)
    shape = {
        "batch_size": args.batch,
        "responses_per_prompt": args.responses,
        "max_rounds": args.rounds,
        "eval_every": 1,
    }
    features: dict[str, np.ndarray] = {}

    def feats(encoder: str) -> np.ndarray:
        if encoder not in features:
            features[encoder] = pool_features(pool, encoder).matrix
        return features[encoder]

    def runs(method: str, preset: str) -> list:
        settings = run_settings(preset, **shape)
        x = feats(get_preset(preset).encoder)
        return [
            simulate(pool, x, SimulationConfig.from_dict({**settings, "method": method, "seed": s}))
            for s in range(args.seeds)
        ]

    report: dict = {"pool": pool.name, **shape, "seeds": args.seeds, "presets": {}}
    # Random's pairs do not depend on the features or the ensemble: one baseline for all.
    random_gap = np.mean([per_round_gap(r, args.rounds) for r in runs("random", "default")], 0)
    report["random_gap"] = random_gap.round(4).tolist()
    print(
        f"pool {pool.name}: {args.batch} prompts x {args.responses} responses a round, "
        f"{args.rounds} rounds, {args.seeds} seeds"
    )
    print(f"{'':28s}" + "".join(f"  round {k:<3d}" for k in range(1, args.rounds + 1)))
    print(f"{'random: oracle gap':28s}" + "".join(f"  {g:9.3f}" for g in random_gap))
    for preset in args.presets:
        results = runs("deltaucb", preset)
        gap = np.mean([per_round_gap(r, args.rounds) for r in results], 0)
        acc = np.mean([[p["running_accuracy"] for p in r.curve] for r in results], 0)
        ratio = gap / random_gap
        report["presets"][preset] = {
            "gap": gap.round(4).tolist(),
            "gap_ratio": ratio.round(3).tolist(),
            "running_accuracy": acc.round(4).tolist(),
        }
        print(f"{preset + ': gap / random':28s}" + "".join(f"  {x:8.2f}x" for x in ratio))
        print(f"{preset + ': running acc.':28s}" + "".join(f"  {a:9.3f}" for a in acc))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
