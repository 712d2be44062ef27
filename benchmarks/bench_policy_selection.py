"""Policy-aware selection against the reward-model methods, with the DPO policy in the loop.

Every run (method x seed) replays the active loop on a simulated-oracle pool with a small policy
(the packaged SmolLM2-135M-Instruct by default) that takes a DPO step after every round; sharp,
wsharp, activedpo and apl select with that policy, random/drts/deltaucb with the reward-model
ensemble (defaults of `auf simulate`). All spend 2 labels per prompt. Reported per method (mean
and spread over seeds): the selected pairs' oracle gap, the held-out accuracy of the independent
evaluation reward model trained on them, the DPO policy's held-out implicit-reward accuracy
against the oracle, and the seconds per round split into log-prob passes, gradient features,
selection and DPO training.

    .venv/bin/python benchmarks/bench_policy_selection.py \\
        --pool ../shared/data/sim_pool_dev.parquet --out bench-out/policy

The CPU run is shortened (8 prompts x 4 responses a round, 3 rounds, 128 tokens, 4 DPO
steps a round): a benchmark of
the mechanism at small scale, not of the paper's numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

METHODS = ("random", "drts", "deltaucb", "sharp", "wsharp", "activedpo", "apl")


def main(argv: list[str] | None = None) -> int:
    from auf_assets.core.policy import PolicyLoopConfig
    from auf_assets.sim_bench import BenchSpec, run_bench
    from auf_assets.sim_bench_report import policy_table
    from resources import home
    from resources.model_loading import local_model_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch", type=int, default=8, help="prompts per round")
    ap.add_argument("--responses", type=int, default=4, help="responses per prompt")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--heldout", type=float, default=0.05)
    ap.add_argument("--policy-model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=4, help="DPO steps per round")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--sketch-dim", type=int, default=1024)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loop = PolicyLoopConfig(
        steps_per_round=args.steps, max_length=args.max_length, sketch_dim=args.sketch_dim
    )
    policy = {
        "base_dir": str(local_model_dir(args.policy_model, home.models_dir())),
        "config": loop.to_dict(),
        "all_methods": True,
        "reference_cache": str(out / "reference_logps.json"),
    }
    spec = BenchSpec(
        pool=args.pool,
        methods=list(args.methods),
        seeds=list(args.seeds),
        encoder="text-stats",
        run={
            "batch_size": args.batch,
            "responses_per_prompt": args.responses,
            "max_rounds": args.rounds,
            "heldout_fraction": args.heldout,
            "eval_every": 10_000,  # once, after the last round
        },
        jobs=args.jobs,
        policy=policy,
    )
    started = time.perf_counter()
    result = run_bench(spec, out / "bench", log=print)
    wall = time.perf_counter() - started
    report = policy_table(result["runs"], list(args.methods))
    header = (
        f"Pool `{args.pool}`: {args.batch} prompts x {args.responses} responses a round, "
        f"{args.rounds} rounds ({args.batch * args.rounds * 2} labels), seeds {args.seeds}, "
        f"{args.heldout:.0%} of the prompts held out; policy {args.policy_model}, "
        f"{args.steps} DPO steps a round (LoRA r {loop.lora_r}, lr {loop.learning_rate}, beta "
        f"{loop.dpo_beta}), {args.max_length} tokens, sketch dim {args.sketch_dim}; "
        f"{len(result['runs'])} runs on {result['workers']} workers in {wall:.0f} s."
    )
    text = f"{header}\n\n{report}\n"
    (out / "policy.md").write_text(text)
    (out / "policy.json").write_text(
        json.dumps({"args": vars(args), "wall_seconds": wall, "runs": result["runs"]}, indent=1)
    )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
