"""A full active-learning run at the reference's shape, features streamed from disk.

UltraFeedback's size is 951 rounds of 64 prompts x 30 responses. With a 2560-dim backbone the
features are 951 * 1920 * 2560 fp16 values (9.3 GB): they live in one .npy file on disk and each
round reads only its own 1920 rows (a memory map), so resident memory stays small. Each round
runs the real loop: score with the ensemble, select one pair per prompt (`select_pairs`), reveal
the synthetic oracle for the pair, add it to the FIFO replay buffer and train.

    .venv/bin/python benchmarks/bench_full_run.py --features /tmp/auf-full-run.npy
    .venv/bin/python benchmarks/bench_full_run.py --rounds 20 --features /tmp/small.npy  # quick

Prints the wall time split (I/O, scoring, selection, training), the peak resident memory and
the held-out accuracy of the final model, and writes them as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from auf_assets.core.acquisition import select_pairs
from auf_assets.core.ensemble import EnsembleConfig, RewardEnsemble
from auf_assets.core.round_step import ReplayBuffer


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def write_features(path: Path, rounds: int, rows_per_round: int, dim: int, seed: int) -> None:
    """Synthetic features, one round at a time, appended to an fp16 .npy file (plain writes:
    a memory map would count the whole file in this process's resident memory)."""
    rng = np.random.default_rng(seed)
    header = {"descr": "<f2", "fortran_order": False, "shape": (rounds * rows_per_round, dim)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for _ in range(rounds):
            block = rng.standard_normal((rows_per_round, dim), dtype=np.float32)
            fh.write(block.astype(np.float16).tobytes())


class RoundReader:
    """Reads one round's rows with a positioned read: streamed, never mapped or held in RAM."""

    def __init__(self, path: Path):
        self.fh = open(path, "rb")  # noqa: SIM115 (closed by close())
        version = np.lib.format.read_magic(self.fh)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        self.shape, _, self.dtype = read_header(self.fh)
        self.offset = self.fh.tell()

    def rows(self, start: int, count: int) -> np.ndarray:
        dim = self.shape[1]
        self.fh.seek(self.offset + start * dim * self.dtype.itemsize)
        block = np.fromfile(self.fh, dtype=self.dtype, count=count * dim)
        return block.reshape(count, dim).astype(np.float32)

    def close(self) -> None:
        self.fh.close()


def current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def oracle_scores(features: np.ndarray, direction: np.ndarray, rng: np.random.Generator):
    """A hidden linear reward with noise: what the judge would say."""
    return features @ direction + 0.5 * rng.standard_normal(len(features)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--features",
        default="/tmp/auf-full-run.npy",
        help="fp16 .npy feature file (created on first use)",
    )
    parser.add_argument("--rounds", type=int, default=951)
    parser.add_argument("--prompts", type=int, default=64, help="prompts per round")
    parser.add_argument("--responses", type=int, default=30, help="responses per prompt")
    parser.add_argument("--dim", type=int, default=2560)
    parser.add_argument("--heads", type=int, default=20)
    parser.add_argument("--method", default="deltaucb")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = args.prompts * args.responses
    path = Path(args.features)
    expected = (args.rounds * rows, args.dim)
    if not path.exists() or np.load(path, mmap_mode="r").shape != expected:
        # Written by a child process, so its page-cache traffic is not this process's memory.
        started = time.perf_counter()
        writer = multiprocessing.get_context("spawn").Process(
            target=write_features, args=(path, args.rounds, rows, args.dim, args.seed)
        )
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            raise SystemExit(f"writing {path} failed")
        print(
            f"wrote {path} ({path.stat().st_size / 2**30:.1f} GiB) in "
            f"{time.perf_counter() - started:.0f}s",
            flush=True,
        )
    reader = RoundReader(path)
    max_rss = 0.0

    rng = np.random.default_rng(args.seed + 1)
    direction = (rng.standard_normal(args.dim) / np.sqrt(args.dim)).astype(np.float32)
    model = RewardEnsemble(args.dim, EnsembleConfig(n_heads=args.heads, seed=args.seed))
    buffer = ReplayBuffer(model.config.replay_capacity)
    timings = {"io": 0.0, "scoring": 0.0, "selection": 0.0, "training": 0.0}
    per_round = []
    run_started = time.perf_counter()
    for r in range(args.rounds):
        round_started = time.perf_counter()
        t = time.perf_counter()
        x = reader.rows(r * rows, rows)
        timings["io"] += time.perf_counter() - t

        t = time.perf_counter()
        mu, sigma = model.predict(x)
        timings["scoring"] += time.perf_counter() - t

        t = time.perf_counter()
        picks = select_pairs(
            args.method,
            mu.reshape(args.prompts, args.responses),
            sigma.reshape(args.prompts, args.responses),
            seed=args.seed + r,
        )
        flat = picks + (np.arange(args.prompts) * args.responses)[:, None]
        first, second = x[flat[:, 0]], x[flat[:, 1]]
        score = oracle_scores(np.concatenate([first, second]), direction, rng)
        first_wins = (score[: args.prompts] >= score[args.prompts :])[:, None]
        chosen = np.where(first_wins, first, second).astype(np.float32)
        rejected = np.where(first_wins, second, first).astype(np.float32)
        buffer.add(pl.DataFrame({"chosen": chosen, "rejected": rejected}))
        timings["selection"] += time.perf_counter() - t

        t = time.perf_counter()
        chosen, rejected = buffer.arrays("chosen", "rejected")
        model.train_round(chosen, rejected, n_done=(r + 1) * args.prompts)
        timings["training"] += time.perf_counter() - t
        per_round.append(time.perf_counter() - round_started)
        max_rss = max(max_rss, current_rss_mb())
        if (r + 1) % 50 == 0 or r + 1 == args.rounds:
            print(
                f"round {r + 1}/{args.rounds}: {per_round[-1]:.2f}s this round, "
                f"{time.perf_counter() - run_started:.0f}s total, RSS "
                f"{current_rss_mb():.0f} MB (peak {peak_rss_mb():.0f} MB)",
                flush=True,
            )
    total = time.perf_counter() - run_started

    # Held-out accuracy of the final model on fresh synthetic responses.
    test = np.random.default_rng(args.seed + 2).standard_normal((4000, args.dim)).astype(np.float32)
    truth = test @ direction
    mu, _ = model.predict(test)
    i, j = np.random.default_rng(args.seed + 3).integers(0, len(test), size=(2, 20000))
    accuracy = float(np.mean(np.sign(mu[i] - mu[j]) == np.sign(truth[i] - truth[j])))

    result = {
        "rounds": args.rounds,
        "prompts": args.prompts,
        "responses": args.responses,
        "dim": args.dim,
        "heads": args.heads,
        "method": args.method,
        "threads": torch.get_num_threads(),
        "total_s": round(total, 1),
        "median_round_s": round(float(np.median(per_round)), 3),
        "split_s": {k: round(v, 1) for k, v in timings.items()},
        "peak_rss_mb": round(peak_rss_mb()),
        "max_round_rss_mb": round(max_rss),
        "heldout_accuracy": round(accuracy, 3),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
