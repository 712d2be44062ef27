"""The simulated-oracle benchmark as Dagster assets (group ``benchmarks``, not partitioned).

``simulation_pool_features`` validates a pool file and fills the feature cache (the expensive,
once-per-pool step); ``method_benchmark`` runs every (method, seed) on it in parallel and records
the table, the plot and the curves as metadata, so results are browsable in the UI. The job
``method_benchmark_job`` materialises both. The logic lives in :mod:`auf_assets.sim_bench`.
"""

from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field, model_validator

from auf_assets.core.features import EncoderBlock
from auf_assets.core.settings import RoundSettings, refuse_renamed
from auf_assets.core.simulation import SimulationConfig, load_pool
from auf_assets.pool_features import pool_features
from auf_assets.reporting import png_markdown
from auf_assets.sim_bench import DEFAULT_METHODS, DEFAULT_SEEDS, BenchSpec, run_bench
from resources import home

GROUP = "benchmarks"
_SIM = SimulationConfig()  # the same defaults as `auf simulate` (and a real round's preset)


class PoolFeaturesConfig(dg.Config):
    pool: str = Field(description="pool file: one row per response with an oracle_score")
    encoder: str = Field(
        default=RoundSettings().encoder,
        description="minilm | text-stats | transformers dir | a+b",
    )
    pooling: Literal["mean", "last"] = Field(
        default=EncoderBlock.pooling, description="mean or last (token)"
    )
    max_length: int = Field(default=EncoderBlock.max_length, ge=8)
    dtype: Literal["bf16", "fp16", "fp32", "auto"] = Field(
        default=EncoderBlock.dtype, description="encoder compute dtype"
    )
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
    seeds: list[int] = Field(default_factory=lambda: list(DEFAULT_SEEDS))
    responses_per_prompt: int = Field(default=0, ge=0, description="K per prompt (0: all)")
    batch_size: int = Field(default=_SIM.batch_size, description="prompts per round (B)")
    heldout_fraction: float = _SIM.heldout_fraction
    acquisition_width: float = Field(
        default=_SIM.acquisition_width, description="bounds are mu -/+ width * sigma"
    )
    eval_every: int = _SIM.eval_every
    gap_threshold: float = _SIM.gap_threshold
    warmup_rounds: int = _SIM.warmup_rounds
    train_passes: int = _SIM.train_passes
    ensemble: dict = Field(
        default_factory=dict,
        description="overrides of the running model's settings (the default preset's)",
    )
    eval_model: dict = Field(default_factory=dict, description="EvalModelConfig overrides")
    jobs: int = Field(default=0, ge=0, description="worker processes (0: min(cores, runs))")
    out_dir: str = Field(default="", description="empty: $AUF_HOME/bench/<run id>")
    beta: float | None = Field(
        default=None, exclude=True, description="renamed to acquisition_width: setting it fails"
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data):
        return refuse_renamed("benchmark", data)

    @model_validator(mode="after")
    def _check(self):
        for method in self.methods:  # the settings check themselves (SimulationConfig)
            SimulationConfig.from_dict({**self.run_settings(), "method": method})
        return self

    def run_settings(self) -> dict:
        """The SimulationConfig fields every run shares."""
        return {
            "responses_per_prompt": self.responses_per_prompt or None,
            "batch_size": self.batch_size,
            "heldout_fraction": self.heldout_fraction,
            "acquisition_width": self.acquisition_width,
            "eval_every": self.eval_every,
            "gap_threshold": self.gap_threshold,
            "warmup_rounds": self.warmup_rounds,
            "train_passes": self.train_passes,
            "ensemble": dict(self.ensemble),
            "eval_model": dict(self.eval_model),
        }


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
    run = config.run_settings()
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
