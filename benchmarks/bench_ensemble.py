"""Benchmark of one active-learning round of the reward-head ensemble (ENN), CPU.

A round = score every response of a batch of prompts (mu, sigma), pick one pair per prompt, add the
labelled pairs to the FIFO replay buffer, and train one pass over (a sample of) the buffer. The
script times the three parts for

* ``fast``: :class:`auf_assets.core.ensemble.RewardEnsemble` (all heads batched), in fp32 and, with
  ``--dtypes``, with bf16 first-layer GEMMs;
* ``reference-style``: the way the reference implementation does it, rebuilt here for a
  side-by-side ratio in the same run: 20 separate ``nn.Module`` MLP heads looped in Python, features
  kept as Python lists of per-row tensors (a ``deque`` of per-pair dicts as the replay buffer),
  rebuilt into a dataset each round, a ``DataLoader`` over it, the anchor term computed from the
  flattened, re-stacked parameters of every head each step, autograd and ``torch.optim.AdamW``.

Scenarios (defaults): d=2560 with a full buffer (6400 pairs -> 100 steps of 64), d=2560 while the
buffer is still filling (first round: 64 pairs -> 1 step), d=384 with a full buffer; 64 prompts x
30 responses are scored per round. Times are medians over ``--rounds`` rounds after ``--warmup``
rounds. Features are synthetic (seeded Gaussian); labels come from a hidden linear reward.

    python benchmarks/bench_ensemble.py                  # full run (a few minutes)
    python benchmarks/bench_ensemble.py --quick          # seconds, CI smoke
    python benchmarks/bench_ensemble.py --json out.json --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from auf_assets.core.ensemble import (  # noqa: E402
    EnsembleConfig,
    RewardEnsemble,
    onednn_available,
)
from auf_assets.core.round_step import ReplayBuffer  # noqa: E402

# Per-round medians of the reference implementation as measured on the 2-core development machine
# (fp32); quoted for comparison only, not measured by this script.
QUOTED_REFERENCE_S = {"d2560-full": 17.3, "d2560-filling": 5.3, "d384-full": 5.1}


@dataclass
class Shape:
    prompts: int = 64
    responses: int = 30
    heads: int = 20
    hidden: tuple[int, ...] = (128, 128)
    capacity: int = 6400
    batch_size: int = 64
    max_steps: int = 100


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(v), v[3] + v[4]  # total, idle + iowait


def wait_for_idle(max_wait: float, busy_below: float = 0.10, window: float = 1.0) -> bool:
    """On a shared machine, wait (up to ``max_wait`` s) until other processes leave the CPUs idle.

    Returns whether the machine was idle (``busy < busy_below`` over ``window`` seconds) when the
    wait ended. Linux only; elsewhere returns True at once.
    """
    if max_wait <= 0:
        return True
    t_end = time.monotonic() + max_wait
    while True:
        a = _cpu_times()
        if a is None:
            return True
        time.sleep(window)
        b = _cpu_times()
        busy = 1.0 - (b[1] - a[1]) / max(1, b[0] - a[0])
        if busy < busy_below:
            return True
        if time.monotonic() > t_end:
            return False


@dataclass
class Timing:
    score: list[float] = field(default_factory=list)
    buffer: list[float] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    idle_start: list[bool] = field(default_factory=list)

    def add(
        self, score: float, buffer: float, train: float, other: float, steps: int, idle: bool
    ) -> None:
        self.idle_start.append(idle)
        self.score.append(score)
        self.buffer.append(buffer)
        self.train.append(train)
        self.total.append(score + buffer + train + other)
        self.steps.append(steps)

    def medians(self) -> dict[str, float]:
        return {
            "score_s": statistics.median(self.score),
            "buffer_s": statistics.median(self.buffer),
            "train_s": statistics.median(self.train),
            "total_s": statistics.median(self.total),
            "steps": statistics.median(self.steps),
            "rounds": len(self.total),
            "total_min_s": min(self.total),
            "total_max_s": max(self.total),
            "rounds_started_idle": sum(self.idle_start),
        }


class SyntheticRounds:
    """Seeded synthetic features: per round a [prompts, responses, d] block and a hidden reward."""

    def __init__(self, d: int, shape: Shape, seed: int = 0):
        self.d = d
        self.shape = shape
        self.rng = np.random.default_rng(seed)
        self.w_true = self.rng.standard_normal(d).astype(np.float32) / np.sqrt(d)

    def block(self) -> np.ndarray:
        s = self.shape
        return self.rng.standard_normal((s.prompts, s.responses, self.d), dtype=np.float32)

    def random_pairs(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        a = self.rng.standard_normal((n, self.d), dtype=np.float32)
        b = self.rng.standard_normal((n, self.d), dtype=np.float32)
        first = (a @ self.w_true) >= (b @ self.w_true)
        return np.where(first[:, None], a, b), np.where(first[:, None], b, a)

    def label(self, x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first = (x1 @ self.w_true) >= (x2 @ self.w_true)
        return np.where(first[:, None], x1, x2), np.where(first[:, None], x2, x1)


def select_pairs(mu: np.ndarray, sigma: np.ndarray, beta: float = 1.0) -> tuple[np.ndarray, ...]:
    """DeltaUCB-like pick per prompt: (argmax U, argmin L) with distinct indices. [P, N] inputs."""
    upper, lower = mu + beta * sigma, mu - beta * sigma
    a = upper.argmax(1)
    lower = lower.copy()
    lower[np.arange(len(a)), a] = np.inf
    return a, lower.argmin(1)


# ------------------------------------------------------------------------------------ fast path


def _pairs(chosen: np.ndarray, rejected: np.ndarray) -> pl.DataFrame:
    """Labelled feature pairs as replay-buffer rows (array columns)."""
    return pl.DataFrame({"chosen": chosen, "rejected": rejected})


def run_fast(
    d: int,
    shape: Shape,
    filling: bool,
    dtype: str,
    rounds: int,
    warmup: int,
    gemm: str | None,
    wait_idle: float = 0.0,
) -> Timing:
    data = SyntheticRounds(d, shape, seed=1)
    cfg = EnsembleConfig(
        n_heads=shape.heads,
        hidden=shape.hidden,
        replay_capacity=shape.capacity,
        batch_size=shape.batch_size,
        max_steps=shape.max_steps,
        compute_dtype=dtype,
    )
    model = RewardEnsemble(d, cfg)
    if gemm:
        model.gemm_backend = gemm
    buffer = ReplayBuffer(shape.capacity)
    if not filling:
        buffer.add(_pairs(*data.random_pairs(shape.capacity)))
    timing = Timing()
    n_done = 0
    for rnd in range(warmup + rounds):
        feats = data.block()  # [P, N, d], generated outside the timed region
        if filling:
            buffer = ReplayBuffer(shape.capacity)
        idle = wait_for_idle(wait_idle) if rnd >= warmup else True
        t0 = time.perf_counter()
        mu, sigma = model.predict(feats.reshape(-1, d))
        t1 = time.perf_counter()
        a, b = select_pairs(mu.reshape(shape.prompts, -1), sigma.reshape(shape.prompts, -1))
        rows = np.arange(shape.prompts)
        chosen, rejected = data.label(feats[rows, a], feats[rows, b])
        t2 = time.perf_counter()
        buffer.add(_pairs(chosen, rejected))
        c, r = buffer.arrays("chosen", "rejected")
        t3 = time.perf_counter()
        n_done += shape.prompts
        stats = model.train_round(c, r, n_done)
        t4 = time.perf_counter()
        if rnd >= warmup:
            timing.add(t1 - t0, t3 - t2, t4 - t3, t2 - t1, stats.steps, idle)
    return timing


# ------------------------------------------------------------------------------------ reference


class RefHead(nn.Module):
    def __init__(self, d: int, hidden: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        prev = d
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, 1, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RefEnsemble(nn.Module):
    """Reference-style ensemble: a ModuleList of heads, looped in Python."""

    def __init__(self, d: int, shape: Shape, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.mlps = nn.ModuleList([RefHead(d, shape.hidden) for _ in range(shape.heads)])
        for mod in self.mlps.modules():
            if isinstance(mod, nn.Linear):
                nn.init.xavier_uniform_(mod.weight)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        self.initial_weights = nn.Parameter(
            self.flat_weights().detach().clone(), requires_grad=False
        )

    def flat_weights(self) -> torch.Tensor:
        return torch.stack([torch.cat([p.view(-1) for p in m.parameters()]) for m in self.mlps])

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = torch.stack([mlp(features) for mlp in self.mlps], dim=1)  # [B, H, 1]
        reward = outputs.mean(dim=1)
        std = outputs.std(dim=1)
        return {
            "rewards": torch.cat([reward, reward - std, reward + std], dim=1),
            "individual_rewards": outputs.squeeze(-1),
        }

    def copy_from(self, fast: RewardEnsemble) -> None:
        with torch.no_grad():
            for h, mlp in enumerate(self.mlps):
                linears = [m for m in mlp.net if isinstance(m, nn.Linear)]
                for lin, (w, b) in zip(linears, fast.head_layers(h), strict=True):
                    lin.weight.copy_(w)
                    if b is not None:
                        lin.bias.copy_(b)


class ListDataset(Dataset):
    def __init__(self, rows: list[dict[str, torch.Tensor]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def ref_compute_rewards(samples: list[dict], model: RefEnsemble, batch_size: int) -> torch.Tensor:
    def rows():
        for sample in samples:
            yield from sample["features"]

    it = rows()
    out: list[torch.Tensor] = []
    while True:
        batch = []
        for _ in range(batch_size):
            try:
                batch.append(next(it))
            except StopIteration:
                break
        if not batch:
            break
        with torch.no_grad():
            out.extend(model(features=torch.stack(batch))["rewards"])
    return torch.stack(out).view(len(samples), -1, 3)


def ref_train(model, optimizer, replay, n_train, bs, lam, center, rng) -> int:
    ds = ListDataset(rng.sample(list(replay), min(len(replay), n_train)))
    loader = DataLoader(ds, batch_size=bs, shuffle=True)
    model.train()
    steps = 0
    for batch in loader:
        rc = model(features=batch["features_chosen"])["individual_rewards"]
        rr = model(features=batch["features_rejected"])["individual_rewards"]
        loss_base = -nn.functional.logsigmoid(rc - rr).mean()
        mse = ((model.flat_weights() - model.initial_weights.detach()) ** 2).mean(dim=1)
        loss = loss_base + lam * mse.mean() + center * torch.mean((rc + rr) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    model.eval()
    return steps


def run_reference(
    d: int, shape: Shape, filling: bool, rounds: int, warmup: int, wait_idle: float = 0.0
) -> Timing:
    data = SyntheticRounds(d, shape, seed=1)
    model = RefEnsemble(d, shape)
    model.eval()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.0
    )
    replay: deque = deque(maxlen=shape.capacity)
    if not filling:
        c0, r0 = data.random_pairs(shape.capacity)
        for x, y in zip(c0, r0, strict=True):
            replay.append(
                {"features_chosen": torch.from_numpy(x), "features_rejected": torch.from_numpy(y)}
            )
    rng = random.Random(0)
    timing = Timing()
    n_done = 0
    for rnd in range(warmup + rounds):
        feats = data.block()
        samples = [{"features": [torch.from_numpy(row) for row in prompt]} for prompt in feats]
        if filling:
            replay = deque(maxlen=shape.capacity)
        idle = wait_for_idle(wait_idle) if rnd >= warmup else True
        t0 = time.perf_counter()
        rewards = ref_compute_rewards(samples, model, batch_size=64)
        t1 = time.perf_counter()
        mu = rewards[..., 0].numpy()
        sigma = ((rewards[..., 2] - rewards[..., 1]) / 2).numpy()
        a, b = select_pairs(mu, sigma)
        chosen, rejected = [], []
        for p, (i, j) in enumerate(zip(a, b, strict=True)):
            x1, x2 = samples[p]["features"][i], samples[p]["features"][j]
            first = float(x1.numpy() @ data.w_true) >= float(x2.numpy() @ data.w_true)
            chosen.append(x1 if first else x2)
            rejected.append(x2 if first else x1)
        t2 = time.perf_counter()
        for x, y in zip(chosen, rejected, strict=True):
            replay.append({"features_chosen": x, "features_rejected": y})
        t3 = time.perf_counter()
        n_done += shape.prompts
        lam = 0.5 ** (n_done / 1000.0)
        steps = ref_train(
            model,
            optimizer,
            replay,
            shape.batch_size * shape.max_steps,
            shape.batch_size,
            lam,
            0.01,
            rng,
        )
        t4 = time.perf_counter()
        if rnd >= warmup:
            timing.add(t1 - t0, t3 - t2, t4 - t3, t2 - t1, steps, idle)
    return timing


# ------------------------------------------------------------------------------------ checks


def agreement_checks(d: int, shape: Shape) -> dict[str, float]:
    """Same weights, same features: batched vs reference-style forward; bf16 vs fp32 scores."""
    data = SyntheticRounds(d, shape, seed=2)
    feats = data.block().reshape(-1, d)
    cfg = EnsembleConfig(
        n_heads=shape.heads,
        hidden=shape.hidden,
        batch_size=shape.batch_size,
        max_steps=min(shape.max_steps, 32),
    )
    fast = RewardEnsemble(d, cfg)
    ref = RefEnsemble(d, shape)
    ref.copy_from(fast)
    with torch.no_grad():
        r_ref = ref(features=torch.from_numpy(feats))["individual_rewards"].T
    r_fast = fast.rewards(torch.from_numpy(feats)).detach()
    # train a little so the comparison is not only at init
    c, r = data.random_pairs(cfg.batch_size * cfg.max_steps)
    fast.train_round(c, r, n_done=0)
    mu32, s32 = fast.predict(feats)
    fast.config.compute_dtype = "bfloat16"
    mu16, s16 = fast.predict(feats)
    fast.config.compute_dtype = "float32"
    return {
        "forward_max_abs_diff_vs_reference": float((r_fast - r_ref).abs().max()),
        "bf16_mu_max_abs_diff": float(np.abs(mu16 - mu32).max()),
        "bf16_sigma_max_abs_diff": float(np.abs(s16 - s32).max()),
        "mu_std": float(mu32.std()),
        "sigma_mean": float(s32.mean()),
    }


# ------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6, help="measured rounds per scenario")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first")
    ap.add_argument(
        "--dims", default="2560,384", help="feature dims; the first also runs 'filling'"
    )
    ap.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes of the fast path")
    ap.add_argument("--baseline-rounds", type=int, default=None, help="default: --rounds")
    ap.add_argument("--no-baseline", action="store_true", help="skip the reference-style baseline")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument(
        "--gemm", choices=["onednn", "blas"], default=None, help="fp32 GEMM route (default: auto)"
    )
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="before each measured round wait up to this many seconds for the other processes "
        "on a shared machine to leave the CPUs idle (Linux; 0 = off)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny shapes, a few seconds (CI smoke)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = Shape()
    dims = [int(x) for x in args.dims.split(",") if x]
    rounds, warmup = args.rounds, args.warmup
    if args.quick:
        shape = Shape(prompts=8, responses=6, capacity=256, batch_size=32, max_steps=4)
        dims, rounds, warmup = [256, 64], 2, 1
    base_rounds = args.baseline_rounds if args.baseline_rounds is not None else rounds
    dtypes = [x for x in args.dtypes.split(",") if x]
    if rounds < 1 or not dims:
        ap.error("need --rounds >= 1 and at least one dim")

    scenarios = [(f"d{dims[0]}-full", dims[0], False), (f"d{dims[0]}-filling", dims[0], True)]
    scenarios += [(f"d{d}-full", d, False) for d in dims[1:]]

    env = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "gemm_backend": args.gemm or ("onednn" if onednn_available() else "blas"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "shape": {k: v for k, v in vars(shape).items()},
        "rounds": rounds,
        "warmup": warmup,
        "wait_idle_s": args.wait_idle,
    }
    print(
        f"# ENN round benchmark: torch {env['torch']}, {env['threads']} threads, "
        f"fp32 GEMMs via {env['gemm_backend']}, "
        f"{shape.prompts}x{shape.responses} scored/round, H={shape.heads}, hidden={shape.hidden}, "
        f"buffer {shape.capacity}, {shape.max_steps} steps x {shape.batch_size}; "
        f"median of {rounds} rounds after {warmup} warm-up",
        flush=True,
    )
    results: list[dict] = []
    for name, d, filling in scenarios:
        row_base = None
        if not args.no_baseline and base_rounds > 0:
            t = run_reference(d, shape, filling, base_rounds, warmup, args.wait_idle).medians()
            row_base = {"scenario": name, "impl": "reference-style", "dtype": "float32", **t}
            results.append(row_base)
            print(f"  {name} reference-style: {t['total_s']:.3f} s", flush=True)
        for dt in dtypes:
            t = run_fast(d, shape, filling, dt, rounds, warmup, args.gemm, args.wait_idle).medians()
            row = {"scenario": name, "impl": "fast", "dtype": dt, **t}
            if row_base is not None:
                row["speedup_vs_reference_style"] = row_base["total_s"] / t["total_s"]
            if name in QUOTED_REFERENCE_S and not args.quick:
                row["speedup_vs_quoted_reference"] = QUOTED_REFERENCE_S[name] / t["total_s"]
            results.append(row)
            print(f"  {name} fast {dt}: {t['total_s']:.3f} s", flush=True)

    checks = agreement_checks(dims[-1], shape)

    print()
    print(
        "| scenario | impl | dtype | steps | score s | buffer s | train s | round s (min-max) "
        "| idle starts | x vs ref-style (same run) | x vs quoted ref |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        x_run = r.get("speedup_vs_reference_style")
        x_quoted = r.get("speedup_vs_quoted_reference")
        print(
            f"| {r['scenario']} | {r['impl']} | {r['dtype']} | {r['steps']:.0f} "
            f"| {r['score_s']:.3f} | {r['buffer_s']:.4f} | {r['train_s']:.3f} "
            f"| {r['total_s']:.3f} ({r['total_min_s']:.3f}-{r['total_max_s']:.3f}) "
            f"| {r['rounds_started_idle']}/{r['rounds']} "
            f"| {'' if x_run is None else f'{x_run:.1f}x'} "
            f"| {'' if x_quoted is None else f'{x_quoted:.1f}x'} |"
        )
    print()
    print(
        f"checks (d={dims[-1]}): batched vs reference-style forward, same weights: max |diff| = "
        f"{checks['forward_max_abs_diff_vs_reference']:.2e}; bf16 vs fp32 scores after one round: "
        f"max |d mu| = {checks['bf16_mu_max_abs_diff']:.2e} (std of mu {checks['mu_std']:.2e}), "
        f"max |d sigma| = {checks['bf16_sigma_max_abs_diff']:.2e} "
        f"(mean sigma {checks['sigma_mean']:.2e})"
    )
    if not args.quick:
        print(
            "quoted reference: per-round medians of the reference implementation measured on the "
            "2-core dev machine (fp32), not measured in this run: "
            + ", ".join(f"{k} {v} s" for k, v in QUOTED_REFERENCE_S.items())
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"env": env, "results": results, "checks": checks}, indent=2)
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
