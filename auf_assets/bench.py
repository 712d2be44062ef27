"""The simulated-oracle benchmark as Dagster assets (group ``benchmarks``, not partitioned).

``simulation_pool_features`` validates a pool file and fills the feature cache (the expensive,
once-per-pool step); ``method_benchmark`` runs every (method, seed) on it in parallel and records
the table, the plot and the curves as metadata, so results are browsable in the UI. The job
``method_benchmark_job`` materialises both. The logic lives in :mod:`auf_assets.sim_bench`.
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from auf_assets.core.presets import DEFAULT_PRESET, default_round, get_preset
from auf_assets.core.simulation import SimulationConfig, load_pool
from auf_assets.pool_features import pool_features
from auf_assets.reporting import png_markdown
from auf_assets.sim_bench import DEFAULT_METHODS, BenchSpec, run_bench
from resources import home

GROUP = "benchmarks"
_ROUND = default_round()  # the same defaults as `auf simulate` and a real round


class PoolFeaturesConfig(dg.Config):
    pool: str = Field(description="pool file: one row per response with an oracle_score")
    encoder: str = Field(
        default=get_preset(DEFAULT_PRESET)["encoder"],
        description="minilm | text-stats | transformers dir | a+b",
    )
    pooling: str = Field(default="mean", description="mean or last (token)")
    max_length: int = Field(default=512, ge=8)
    dtype: str = Field(default="bf16", description="encoder compute dtype: bf16, fp16, fp32")
    device: str = "auto"


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "numpy"},
    code_version="1",
    description="A validated simulation pool and its cached per-response features.",
)
def simulation_pool_features(
    context: dg.AssetExecutionContext, config: PoolFeaturesConfig
) -> dg.Output[dict]:
    pool = load_pool(config.pool)
    feats = pool_features(
        pool,
        config.encoder,
        pooling=config.pooling,
        max_length=config.max_length,
        dtype=config.dtype,
        device=config.device,
        log=context.log.info,
    )
    summary = pool.summary()
    value = {
        "pool": config.pool,
        "encoder": config.encoder,
        "pooling": config.pooling,
        "max_length": config.max_length,
        "dtype": config.dtype,
        "device": config.device,
        "key": feats.key,
        "dim": feats.dim,
    }
    return dg.Output(
        value,
        metadata={
            "pool": dg.MetadataValue.path(config.pool),
            "prompts": pool.n_prompts,
            "responses": pool.n_responses,
            "dropped_prompts": len(pool.dropped_prompts),
            "pool_summary": dg.MetadataValue.json(summary),
            "encoder": feats.key,
            "feature_dim": feats.dim,
            "encode_seconds": round(feats.computed_seconds, 2),
            "from_cache": not any(b["computed"] for b in feats.blocks),
            "cache_files": dg.MetadataValue.json([b["file"] for b in feats.blocks]),
        },
    )


class MethodBenchmarkConfig(dg.Config):
    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    responses_per_prompt: int = Field(default=0, ge=0, description="K per prompt (0: all)")
    batch_size: int = Field(default=32, ge=1, description="prompts per round (B)")
    heldout_fraction: float = Field(default=0.25, ge=0.0, lt=1.0)
    beta: float = Field(default=_ROUND["beta"], ge=0.0)
    eval_every: int = Field(default=1, ge=1)
    gap_threshold: float = Field(default=0.1, ge=0.0)
    warmup_rounds: int = Field(default=_ROUND["warmup_rounds"], ge=0)
    train_passes: int = Field(default=_ROUND["train_passes"], ge=1)
    ensemble: dict = Field(
        default_factory=dict,
        description="overrides of the running model's settings (the default preset's)",
    )
    eval_model: dict = Field(default_factory=dict, description="EvalModelConfig overrides")
    jobs: int = Field(default=0, ge=0, description="worker processes (0: min(cores, runs))")
    out_dir: str = Field(default="", description="empty: $AUF_HOME/bench/<run id>")


@dg.asset(
    group_name=GROUP,
    kinds={"pytorch", "matplotlib"},
    code_version="1",
    description="Selection methods compared on the simulated-oracle pool: held-out accuracy, "
    "oracle gap and chosen score vs labels spent (mean and spread over seeds).",
)
def method_benchmark(
    context: dg.AssetExecutionContext,
    config: MethodBenchmarkConfig,
    simulation_pool_features: dict,
) -> dg.MaterializeResult:
    run = {
        "responses_per_prompt": config.responses_per_prompt or None,
        "batch_size": config.batch_size,
        "heldout_fraction": config.heldout_fraction,
        "beta": config.beta,
        "eval_every": config.eval_every,
        "gap_threshold": config.gap_threshold,
        "warmup_rounds": config.warmup_rounds,
        "train_passes": config.train_passes,
        "ensemble": dict(config.ensemble),
        "eval_model": dict(config.eval_model),
    }
    SimulationConfig.from_dict({**run, "method": config.methods[0]})  # fail fast
    feats = simulation_pool_features
    spec = BenchSpec(
        pool=feats["pool"],
        methods=list(config.methods),
        seeds=list(config.seeds),
        encoder=feats["encoder"],
        pooling=feats["pooling"],
        max_length=feats["max_length"],
        dtype=feats["dtype"],
        device=feats["device"],
        run=run,
        jobs=config.jobs,
    )
    out = Path(config.out_dir) if config.out_dir else home.auf_home() / "bench" / context.run_id
    result = run_bench(spec, out, log=context.log.info)
    summary = {
        m: {
            "labels_per_prompt": s["labels_per_prompt"],
            "final": s["final"],
            "wall_seconds_mean": s["wall_seconds_mean"],
        }
        for m, s in result["summary"].items()
    }
    plot = Path(result["files"]["plot"])
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.md(result["markdown"]),
            "plot": png_markdown(plot.read_bytes(), "benchmark curves"),
            "plot_file": dg.MetadataValue.path(str(plot)),
            "bench_json": dg.MetadataValue.path(result["files"]["json"]),
            "summary": dg.MetadataValue.json(summary),
            "runs": len(result["runs"]),
            "workers": result["workers"],
            "total_seconds": result["total_seconds"],
            "encoder": result["encoder"]["key"],
        }
    )


method_benchmark_job = dg.define_asset_job(
    "method_benchmark_job",
    selection=dg.AssetSelection.groups(GROUP),
    description="Validate a simulation pool, cache its features, and benchmark selection methods "
    "on it with the oracle score as the judge.",
)

BENCH_ASSETS = [simulation_pool_features, method_benchmark]
BENCH_JOBS = [method_benchmark_job]
