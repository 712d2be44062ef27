"""`auf simulate` and `auf bench`: simulated-oracle runs on a pool of pre-scored responses.

`auf_assets.cli.build_parser` calls :func:`add_commands` to add both subcommands.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from auf_assets.cli.common import number, one_of, refuse, selection_method, setting
from auf_assets.core.features import EncoderBlock
from auf_assets.core.settings import PACKAGED_LM, EnsembleSettings, RoundSettings, known_methods

DEFAULT_BENCH_OUT = "bench-out"


_DEFAULT = RoundSettings()  # the default preset


def _csv_list(values: list[str] | None) -> list[str]:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (both comma and space separated lists work)."""
    out: list[str] = []
    for v in values or []:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def _ensemble(field: str, convert=float):
    """A flag checked by the ensemble settings that own the value (their range)."""
    return setting(lambda v: EnsembleSettings(**{field: v}), convert)


def _round(field: str, convert=int):
    return setting(lambda v: RoundSettings(**{field: v}), convert)


def _policy(field: str, convert=float):
    from auf_assets.core.policy import PolicyLoopConfig

    return setting(lambda v: PolicyLoopConfig(**{field: v}), convert)


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """The flags of a run. Numbers are checked when parsed (a bad value stops the command before
    any work); the ones without a default here take the simulator's (SimulationConfig)."""
    from auf_assets.core.policy import PolicyLoopConfig

    loop = PolicyLoopConfig()
    p.add_argument(
        "--pool", required=True, help="pool file (parquet/csv/jsonl), one row per response"
    )
    p.add_argument(
        "--responses-per-prompt",
        "-K",
        type=number(integer=True, ge=0),
        default=0,
        help="K responses per prompt (at least 2), sampled by seed (default 0: all)",
    )
    p.add_argument(
        "--batch", "-B", type=number(integer=True, ge=1), default=None, help="prompts per round"
    )
    p.add_argument(
        "--heldout",
        type=number(ge=0, lt=1),
        default=None,
        help="fraction of prompts held out for evaluation",
    )
    p.add_argument(
        "--acquisition-width",
        "--beta",  # the old name
        dest="acquisition_width",
        type=_round("acquisition_width", float),
        default=None,
        help="bounds are mu -/+ width * sigma (default: the preset's, "
        f"{_DEFAULT.acquisition_width:g})",
    )
    p.add_argument(
        "--eval-every",
        type=number(integer=True, ge=1),
        default=None,
        help="evaluate every E rounds",
    )
    p.add_argument(
        "--gap-threshold",
        type=number(ge=0),
        default=None,
        help="held-out pairs count when their oracle scores differ by at least this",
    )
    p.add_argument(
        "--warmup-rounds",
        type=_round("warmup_rounds"),
        default=None,
        help=f"first rounds pick at random (default: the preset's, {_DEFAULT.warmup_rounds})",
    )
    p.add_argument(
        "--train-passes",
        type=_round("train_passes"),
        default=None,
        help="training passes over the replay buffer per round (default: the preset's, "
        f"{_DEFAULT.train_passes})",
    )
    p.add_argument(
        "--max-rounds",
        type=number(integer=True, ge=0),
        default=0,
        help="stop after N rounds (0: all)",
    )
    ref = EnsembleSettings()  # the reference values, for the help
    ens = p.add_argument_group(
        "running reward model and features: a named preset, each value overridable by its flag"
    )
    ens.add_argument(
        "--preset",
        type=one_of(_preset_names, "preset"),
        default=None,
        help="settings preset (auf_assets/core/presets.py): "
        f"{', '.join(_preset_names())} (default: default; reference = the paper's values)",
    )
    ens.add_argument(
        "--heads",
        type=_ensemble("n_heads", int),
        default=None,
        help=f"ensemble heads (reference {ref.n_heads})",
    )
    ens.add_argument(
        "--lr",
        type=_ensemble("lr"),
        default=None,
        help=f"AdamW learning rate (reference {ref.lr:g})",
    )
    ens.add_argument(
        "--max-steps",
        type=_ensemble("max_steps", int),
        default=None,
        help=f"steps per round (reference {ref.max_steps}, batch {ref.batch_size})",
    )
    ens.add_argument(
        "--min-steps",
        type=_ensemble("min_steps", int),
        default=None,
        help="the fewest steps per round: a small buffer is passed over again (reference "
        f"{ref.min_steps})",
    )
    ens.add_argument(
        "--anchor-lambda0",
        type=_ensemble("anchor_lambda0"),
        default=None,
        help=f"anchor strength (reference {ref.anchor_lambda0:g})",
    )
    ens.add_argument(
        "--anchor-half-life",
        type=_ensemble("anchor_half_life"),
        default=None,
        help=f"prompts (reference {ref.anchor_half_life:g}; inf: none)",
    )
    ev = p.add_argument_group("evaluation reward model (fresh each evaluation)")
    ev.add_argument("--eval-epochs", type=number(integer=True, ge=1), default=None, help="passes")
    ev.add_argument("--eval-lr", type=number(gt=0), default=None, help="learning rate")
    ev.add_argument("--eval-heads", type=number(integer=True, ge=1), default=None, help="heads")
    fe = p.add_argument_group("features (computed once per pool, cached under $AUF_HOME)")
    fe.add_argument(
        "--encoder",
        type=setting(lambda v: RoundSettings(encoder=v), str),
        default=None,
        help="minilm | text-stats | a transformers dir | blocks joined by '+' "
        f"(default: the preset's, {_DEFAULT.encoder}; minilm = the packaged all-minilm-l6-v2)",
    )
    fe.add_argument("--pooling", choices=("mean", "last"), default=EncoderBlock.pooling)
    fe.add_argument(
        "--max-length",
        type=number(integer=True, ge=8),
        default=EncoderBlock.max_length,
        help=f"encoder tokens (default {EncoderBlock.max_length})",
    )
    fe.add_argument(
        "--dtype",
        choices=("bf16", "fp16", "fp32", "auto"),
        default=EncoderBlock.dtype,
        help=f"encoder compute dtype (default {EncoderBlock.dtype})",
    )
    fe.add_argument("--device", default="auto", help="cpu, cuda, ... (default auto)")
    sp = p.add_argument_group(
        "split protocol (tune settings on one half of the pool, confirm on the other)"
    )
    sp.add_argument(
        "--split",
        choices=("none", "prompts", "models", "both"),
        default="none",
        help="halve the pool by prompts, by the models that wrote the responses, or both "
        "(default none: the whole pool)",
    )
    sp.add_argument(
        "--split-seed",
        type=number(integer=True, ge=0),
        default=0,
        help="seed of the splits (default 0)",
    )
    sp.add_argument(
        "--no-stratify-models",
        action="store_true",
        help="halve the models uniformly (default: stratified by mean oracle score)",
    )
    po = p.add_argument_group(
        "the DPO policy in the loop (sharp, wsharp, activedpo and apl select with it; "
        "--with-policy trains it for any method, to compare the policies)"
    )
    po.add_argument(
        "--with-policy",
        action="store_true",
        help="train the DPO policy after every round for any method and report its held-out "
        "implicit-reward accuracy against the oracle",
    )
    po.add_argument(
        "--policy-model",
        default=PACKAGED_LM,
        help="the policy's base: packaged name, local HF dir or cached repo id "
        "(default: the packaged SmolLM2-135M-Instruct)",
    )
    po.add_argument(
        "--policy-steps",
        type=_policy("steps_per_round", int),
        default=loop.steps_per_round,
        help=f"DPO steps a round (default {loop.steps_per_round})",
    )
    po.add_argument(
        "--dpo-beta",
        "--policy-beta",  # the old name
        dest="dpo_beta",
        type=_policy("dpo_beta"),
        default=loop.dpo_beta,
        help=f"DPO beta (default {loop.dpo_beta:g})",
    )
    po.add_argument(
        "--policy-lr",
        type=_policy("learning_rate"),
        default=loop.learning_rate,
        help=f"DPO learning rate (default {loop.learning_rate:g})",
    )
    po.add_argument(
        "--policy-max-length",
        type=_policy("max_length", int),
        default=loop.max_length,
        help=f"tokens of prompt + response for scoring and training (default {loop.max_length})",
    )
    po.add_argument(
        "--sketch-dim",
        type=_policy("sketch_dim", int),
        default=loop.sketch_dim,
        help=f"activedpo: projected dimension (default {loop.sketch_dim})",
    )
    po.add_argument(
        "--fraction",
        type=number(gt=0, le=1),
        default=None,
        help="policy-aware methods: the share of a round's prompts that get a pair (default 1)",
    )
    po.add_argument(
        "--policy-device", default=loop.device, help=f"cpu, cuda, ... (default {loop.device})"
    )
    dm = p.add_argument_group("delta_model baseline")
    dm.add_argument("--strong-model", default=None, help="model whose response is chosen")
    dm.add_argument("--weak-model", default=None, help="model whose response is rejected")


def _preset_names() -> list[str]:
    from auf_assets.core.presets import preset_names

    return preset_names()


def _preset(args: argparse.Namespace) -> RoundSettings:
    from auf_assets.core.presets import DEFAULT_PRESET, get_preset

    return get_preset(args.preset or DEFAULT_PRESET)


def _encoder(args: argparse.Namespace) -> str:
    """``--encoder`` if given, else the preset's."""
    return args.encoder or _preset(args).encoder


def _run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """SimulationConfig settings: the preset's values, then every flag that was given."""
    from auf_assets.core.presets import DEFAULT_PRESET, run_settings

    ensemble: dict[str, Any] = {}
    for arg, key in (
        ("heads", "n_heads"),
        ("lr", "lr"),
        ("max_steps", "max_steps"),
        ("min_steps", "min_steps"),
        ("anchor_lambda0", "anchor_lambda0"),
        ("anchor_half_life", "anchor_half_life"),
    ):
        value = getattr(args, arg)
        if value is not None:
            ensemble[key] = value
    rounds = {
        key: getattr(args, key)
        for key in ("acquisition_width", "warmup_rounds", "train_passes")
        if getattr(args, key) is not None
    }
    eval_model: dict[str, Any] = {}
    for arg, key in (("eval_epochs", "epochs"), ("eval_lr", "lr"), ("eval_heads", "n_heads")):
        value = getattr(args, arg)
        if value is not None:
            eval_model[key] = value
    given = {
        "batch_size": args.batch,
        "heldout_fraction": args.heldout,
        "eval_every": args.eval_every,
        "gap_threshold": args.gap_threshold,
    }
    settings: dict[str, Any] = run_settings(
        args.preset or DEFAULT_PRESET,
        **rounds,
        **{key: value for key, value in given.items() if value is not None},
        ensemble=ensemble,
        responses_per_prompt=args.responses_per_prompt or None,
        max_rounds=args.max_rounds or None,
        eval_model=eval_model,
    )
    if getattr(args, "fraction", None) is not None:
        settings["method_options"] = {"fraction": args.fraction}
    if args.strong_model:
        settings["strong_model"] = args.strong_model
    if args.weak_model:
        settings["weak_model"] = args.weak_model
    return settings


def _policy_spec(args: argparse.Namespace, methods: list[str]) -> dict[str, Any] | None:
    """The policy loop's settings when a method needs it or --with-policy asks for it; the base
    model is resolved here (a packaged GGUF model is converted once into the home)."""
    from auf_assets.core.methods import method_names
    from auf_assets.core.policy import PolicyLoopConfig

    if not args.with_policy and not set(methods) & set(method_names("policy")):
        return None
    from resources import home
    from resources.model_loading import local_model_dir

    config = PolicyLoopConfig(
        dpo_beta=args.dpo_beta,
        steps_per_round=args.policy_steps,
        learning_rate=args.policy_lr,
        max_length=args.policy_max_length,
        sketch_dim=args.sketch_dim,
        device=args.policy_device,
    )
    base = local_model_dir(args.policy_model, home.models_dir())
    return {
        "base_dir": str(base),
        "config": config.to_dict(),
        "all_methods": bool(args.with_policy),
        "reference_cache": str(home.auf_home() / "policy" / "reference_logps.json"),
    }


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _print_pool(pool) -> None:
    s = pool.summary()
    per = s["responses_per_prompt"]
    sc = s["oracle_score"]
    print(
        f"pool {s['pool']}: {s['prompts']} prompts, {s['responses']} responses from "
        f"{s['models']} models ({per['min']}-{per['max']} per prompt); oracle score "
        f"min {sc['min']:.3g} median {sc['median']:.3g} mean {sc['mean']:.3g} max {sc['max']:.3g}"
    )
    if pool.dropped_prompts:
        shown = ", ".join(pool.dropped_prompts[:5])
        print(f"dropped {len(pool.dropped_prompts)} prompt(s) with fewer than 2 responses: {shown}")


def _setup_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _simulate(args: argparse.Namespace) -> int:
    _setup_env()
    from auf_assets.core.simulation import (
        PoolError,
        SimulationConfig,
        load_pool,
        pool_half,
        protocol_split,
        simulate,
    )
    from auf_assets.pool_features import pool_features
    from auf_assets.sim_bench_runs import policy_loop

    try:
        # Settings first: a bad value is refused before the pool is read or a model loads.
        method = args.method or _preset(args).method
        config = SimulationConfig.from_dict(
            {**_run_settings(args), "method": method, "seed": args.seed}
        )
        pool = load_pool(args.pool)
        encoder = _encoder(args)
        try:
            policy_spec = _policy_spec(args, [method])
        except (ValueError, OSError) as exc:  # bad policy setting or model source
            raise ValueError(f"policy: {exc}") from None
        pool = load_pool(args.pool)
        split = None
        if args.split != "none":
            split = protocol_split(
                pool,
                args.split,
                seed=args.split_seed,
                index=args.split_index,
                stratify_models=not args.no_stratify_models,
            )
            run_pool = pool_half(pool, split, args.half)
        else:
            run_pool = pool
    except (PoolError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _print_pool(pool)
    if split is not None:
        print(
            f"{args.half} half of {split.label}: {len(split.prompts(args.half))} prompts x "
            f"{len(split.models(args.half))} models"
        )
        _print_pool(run_pool)
    try:
        feats = pool_features(
            pool,
            encoder,
            pooling=args.pooling,
            max_length=args.max_length,
            dtype=args.dtype,
            device=args.device,
            log=print,
        )
    except (ValueError, OSError) as exc:  # bad encoder setting, unknown model source
        print(f"error: features: {exc}", file=sys.stderr)
        return 2
    print(f"features: {feats.key} (dim {feats.dim})")
    print(
        f"{'round':>5} {'prompts':>7} {'labels':>6} {'accuracy':>8} {'running':>8} "
        f"{'gap':>6} {'chosen':>6} {'ties':>4}"
    )

    def show(p: dict[str, Any]) -> None:
        print(
            f"{p['round']:>5} {p['prompts']:>7} {p['labels']:>6} {_fmt(p['accuracy']):>8} "
            f"{_fmt(p['running_accuracy']):>8} {_fmt(p['mean_gap']):>6} "
            f"{_fmt(p['mean_chosen_score']):>6} {p['ties']:>4}"
        )

    started = time.perf_counter()
    loop = policy_loop(policy_spec, method, args.seed, log=print)
    try:
        result = simulate(run_pool, feats.matrix, config, progress=show, policy=loop)
    finally:
        if loop is not None:
            loop.close()
    if loop is not None and result.curve:
        last = result.curve[-1]
        print(
            f"DPO policy: held-out implicit-reward accuracy {_fmt(last.get('policy_accuracy'))}; "
            f"seconds {json.dumps(last.get('policy_seconds'))}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.pairs.write_parquet(out)
    curve_path = out.with_suffix(".json")
    summary = result.to_dict()
    summary["features"] = {"key": feats.key, "dim": feats.dim, "encoder": encoder}
    summary["preset"] = args.preset or "default"
    if split is not None:
        summary["split"] = {**split.to_dict(), "half": args.half}
    curve_path.write_text(json.dumps(summary, indent=1, default=str))
    info = result.info
    print(
        f"{result.pairs.height} pairs ({info['labels']} labels) from {info['train_prompts']} train "
        f"prompts; {info['heldout_prompts']} held-out prompts, {info['heldout_eval_pairs']} "
        f"evaluation pairs; {time.perf_counter() - started:.1f}s"
    )
    print(f"wrote {out} and {curve_path}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    _setup_env()
    from auf_assets.core.simulation import PoolError
    from auf_assets.sim_bench import DEFAULT_METHODS, DEFAULT_SEEDS, BenchSpec, run_bench

    methods = _csv_list(args.methods) or list(DEFAULT_METHODS)
    unknown = [m for m in methods if m not in known_methods()]
    if unknown:
        return refuse(f"unknown method(s) {unknown}; valid: {', '.join(known_methods())}")
    try:
        seeds = [int(s) for s in _csv_list(args.seeds)] or list(DEFAULT_SEEDS)
        budgets = [int(b) for b in _csv_list(args.budgets)]
    except ValueError as exc:
        return refuse(f"--seeds and --budgets take integers: {exc}")
    if any(b < 1 for b in budgets) or any(s < 0 for s in seeds):
        return refuse("--budgets must be integers >= 1 and --seeds integers >= 0")
    try:
        spec = BenchSpec(
            pool=args.pool,
            methods=methods,
            seeds=seeds,
            encoder=_encoder(args),
            pooling=args.pooling,
            max_length=args.max_length,
            dtype=args.dtype,
            device=args.device,
            run=_run_settings(args),
            jobs=args.jobs,
            budgets=budgets,
            preset=args.preset or "default",
            split=None if args.split == "none" else args.split,
            n_splits=args.splits,
            split_seed=args.split_seed,
            stratify_models=not args.no_stratify_models,
            policy=_policy_spec(args, methods),
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_bench(spec, args.out, log=print)
    except (PoolError, ValueError, LookupError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print()
    print(result["markdown"])
    return 0


def add_commands(sub) -> None:
    """Add `simulate` and `bench` to the `auf` subcommands."""
    # Only the method registry here (numpy): building the parser must not import torch.
    from auf_assets.core.methods import method_names

    methods = ", ".join(method_names())
    sim = sub.add_parser(
        "simulate",
        help="one simulated-oracle run on a pool of pre-scored responses",
        description="Replay the active loop on a pool whose responses carry an oracle score. "
        "Writes the selected pairs (parquet) and the evaluation curve (same name, .json).",
    )
    sim.add_argument(
        "--method",
        "-m",
        type=selection_method(),
        default=None,
        help=f"one of: {methods} (default: the preset's, {_DEFAULT.method})",
    )
    sim.add_argument("--seed", type=number(integer=True, ge=0), default=0)
    sim.add_argument("--out", "-o", required=True, help="selected pairs, .parquet")
    _add_run_args(sim)
    sim.add_argument(
        "--split-index",
        type=number(integer=True, ge=0),
        default=0,
        help="with --split: which split (default 0)",
    )
    sim.add_argument(
        "--half",
        choices=("tune", "confirm"),
        default="tune",
        help="with --split: the half to run on (default tune)",
    )
    sim.set_defaults(func=_simulate)

    bench = sub.add_parser(
        "bench",
        help="many simulated runs (methods x seeds) in parallel, with a table, JSON and plot",
        description="Runs every method with every seed on the pool and reports held-out "
        "accuracy, mean oracle gap and mean chosen score as functions of labels spent. With "
        "--split, every run is repeated on the tuning and the confirmation half of --splits "
        "seeded splits of the pool, and the report compares the methods per half.",
    )
    bench.add_argument(
        "--methods", nargs="+", default=None, help=f"comma/space separated, from: {methods}"
    )
    bench.add_argument("--seeds", nargs="+", default=None, help="default 0 1 2")
    bench.add_argument("--out", "-o", default=DEFAULT_BENCH_OUT, help="output folder")
    bench.add_argument(
        "--jobs",
        "-j",
        type=number(integer=True, ge=0),
        default=0,
        help="worker processes (0: cores)",
    )
    bench.add_argument(
        "--budgets", nargs="+", default=None, help="label budgets of the table (default: auto)"
    )
    _add_run_args(bench)
    bench.add_argument(
        "--splits",
        type=number(integer=True, ge=1),
        default=2,
        help="with --split: how many seeded splits; every method and seed runs on both halves "
        "of each (default 2)",
    )
    bench.set_defaults(func=_bench)
