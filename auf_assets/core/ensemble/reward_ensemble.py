"""The trainable reward ensemble (:class:`RewardEnsemble`): a round of training on the replay
buffer, and the checkpoint file that lets training continue exactly where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import EnsembleConfig, TrainStats
from .heads import EnsembleHeads, _as_tensor
from .kernels import (
    _CHUNK_BYTES,
    _EPS,
    _adam_update,
    _AdamState,
    _Layer0Grad,
    _onednn_linear,
    _relu_backward,
)

_FORMAT = "auf-reward-ensemble"
_FORMAT_VERSION = 1
_META_KEY = "auf_reward_ensemble"


class RewardEnsemble(EnsembleHeads):
    """An anchored ensemble of ``H`` MLP reward heads (:class:`EnsembleHeads`: parameters, forward
    pass, loss) with its training (one hand-written, batched backward pass and AdamW per step) and
    its checkpoint file (:meth:`save`, :meth:`load`).
    """

    # ---------------------------------------------------------------- training

    def _ensure_adam(self) -> _AdamState:
        if self._adam is None:
            self._adam = _AdamState(self._params)
        if self._grads is None:
            self._grads = [torch.zeros_like(p) for p in self._params[1:]]
        return self._adam

    def _fused_anchor_ok(self, k: float) -> bool:
        """Whether the anchor gradient may be split between the GEMM and Adam's L2 term.

        The split computes ``k * (w - w_init)`` as ``(-k * w_init) + k * w``, which leaves a
        rounding residual of about ``k * |w| * 2**-23`` where the exact value is 0. Adam divides by
        ``sqrt(v) + eps``, so where a gradient is exactly zero (a ReLU unit dead for the whole
        batch) that residual would turn into a step of up to ``lr * residual / eps``. The split is
        used only while that is below ``1e-3 * lr`` (for the default ``lambda_0 = 1`` the residual
        is ~1e-15, seven orders below the bound); otherwise the anchor gradient is computed
        exactly, at the cost of one extra pass over the parameters per step.
        """
        residual = k * 2.0 * self._anchor_absmax * 2.0**-23
        return residual <= 1e-3 * _EPS

    def _backward(
        self, x: torch.Tensor, n: int, k: float, dtype: torch.dtype, want_loss: bool
    ) -> tuple[float, _Layer0Grad]:
        """Forward and backward pass for the batch ``x = [chosen; rejected]`` (``[2n, d]``).

        Fills ``self._grads`` (every parameter but ``layer0.weight``) with the data-term gradient
        minus ``k * w_init`` (``k = 0`` leaves the anchor out) and returns the batch's data loss
        (BT + center, mean over heads; NaN unless ``want_loss``) and what
        :meth:`_layer0_grad` needs for the big first-layer weight gradient, which training
        computes in row chunks, each consumed by Adam while it is still in cache.
        """
        cfg = self.config
        H = cfg.n_heads
        p, a0 = self._params, self._anchors
        g = self._grads
        assert g is not None
        B = 2 * n
        acts: list[torch.Tensor] = []
        lp = dtype != torch.float32
        x_lp = x.to(dtype) if lp else None
        r = self._forward(x_lp if lp else x, dtype, w0_lp=self._w0_lp if lp else None, keep=acts)
        rc, rr = r[:, :n], r[:, n:]
        margin = rc - rr
        s = rc + rr
        data_loss = float("nan")
        if want_loss:
            data_loss = float(
                torch.nn.functional.softplus(-margin).mean() + cfg.center_coef * s.square().mean()
            )
        # d total / d r  (total = mean over heads and pairs)
        scale = 1.0 / (H * n)
        sig = torch.sigmoid(-margin)
        cen = s * (2.0 * cfg.center_coef)
        dr = torch.cat([cen - sig, cen + sig], dim=1).mul_(scale)  # [H, 2n]

        # g[i] is the gradient of p[i + 1]
        torch.bmm(dr.unsqueeze(1), acts[-1], out=g[-1].unsqueeze(1))
        g[-1].sub_(a0[-1], alpha=k)
        da = dr.unsqueeze(2) * p[-1].unsqueeze(1)  # [H, B, h_L]
        for i in range(len(cfg.hidden) - 1, 0, -1):
            dz = _relu_backward(da, acts[i])
            torch.baddbmm(a0[2 * i], acts[i - 1].transpose(1, 2), dz, beta=-k, out=g[2 * i - 1])
            torch.sum(dz, dim=1, out=g[2 * i])
            g[2 * i].sub_(a0[2 * i + 1], alpha=k)
            da = torch.bmm(dz, p[2 * i].transpose(1, 2))
        dz1 = _relu_backward(da, acts[0])  # [H, B, h1]
        torch.sum(dz1, dim=1, out=g[0])
        g[0].sub_(a0[1], alpha=k)
        dz1_t = dz1.transpose(1, 2).reshape(-1, B)  # [H*h1, B]
        if lp:
            ctx = _Layer0Grad(dz1_t.to(dtype), x_lp, None)
        elif self.gemm_backend == "onednn":
            ctx = _Layer0Grad(dz1_t, x, x.T.contiguous())
        else:
            ctx = _Layer0Grad(dz1_t, x, None)
        return data_loss, ctx

    def _layer0_grad(self, ctx: _Layer0Grad, r0: int, r1: int, k: float) -> torch.Tensor:
        """Rows ``r0:r1`` of the ``layer0.weight`` gradient, minus ``k * w_init`` (fresh tensor)."""
        a0 = self._anchors[0][r0:r1]
        dz_t = ctx.dz_t[r0:r1]
        if ctx.x.dtype != torch.float32:  # low-precision GEMM, fp32 result
            g = torch.mm(dz_t, ctx.x)
            return torch.sub(g, a0, alpha=k) if k else g.to(torch.float32)
        if ctx.x_t is not None:
            g = _onednn_linear(dz_t, ctx.x_t, None, "none")
            return g.sub_(a0, alpha=k) if k else g
        return torch.addmm(a0, dz_t, ctx.x, beta=-k)

    def _gradients(
        self, x: torch.Tensor, n: int, k: float, dtype: torch.dtype = torch.float32
    ) -> list[torch.Tensor]:
        """Full gradients (data term minus ``k * w_init``) of every parameter, for testing."""
        self._ensure_adam()
        _, ctx = self._backward(x, n, k, dtype, want_loss=False)
        assert self._grads is not None
        g0 = self._layer0_grad(ctx, 0, self._params[0].shape[0], k)
        return [g0, *(g.clone() for g in self._grads)]

    def _chunks(self) -> list[tuple[int, int]]:
        rows = self._params[0].shape[0]
        step = max(1, _CHUNK_BYTES // (4 * self.in_dim))
        return [(r, min(rows, r + step)) for r in range(0, rows, step)]

    def train_round(
        self,
        chosen: np.ndarray | torch.Tensor,
        rejected: np.ndarray | torch.Tensor,
        n_done: int,
        *,
        progress: Callable[[int, int, float], None] | None = None,
    ) -> TrainStats:
        """One round of training on the replay buffer's contents.

        ``chosen``/``rejected`` are ``[M, d]`` features of the buffer's pairs. Samples up to
        ``max_steps * batch_size`` of them without replacement (a seeded generator that carries
        over across rounds), makes one pass in batches of ``batch_size`` (the last one may be
        smaller) with AdamW, whose state persists across rounds. ``n_done`` (prompts consumed
        so far) sets the anchor strength. ``progress(step, n_steps, batch_loss)`` is called after
        every step with the batch's BT + center loss (the anchor term is not recomputed per step).
        """
        t0 = time.perf_counter()
        cfg = self.config
        xc_all, xr_all = _as_tensor(chosen), _as_tensor(rejected)
        self._check_pair(xc_all, xr_all)
        if n_done < 0:
            raise ValueError(f"n_done must be >= 0, got {n_done}")
        lam = self.anchor_lambda(n_done)
        M = xc_all.shape[0]
        if M == 0:
            nan = float("nan")
            return TrainStats(0, 0, nan, nan, nan, nan, time.perf_counter() - t0, lam)

        n_use = min(M, cfg.max_steps * cfg.batch_size)
        order = torch.randperm(M, generator=self._sample_gen)[:n_use]
        n_steps = -(-n_use // cfg.batch_size)
        step_size = cfg.batch_size
        floor = min(cfg.min_steps, cfg.max_steps)
        if n_steps < floor:
            # A small buffer: pass over it again, each time in a fresh order, until the round
            # has made min_steps steps (a buffer below one batch is one step per pass).
            step_size = min(cfg.batch_size, M)
            n_steps = floor
            repeats = -(-n_steps * step_size // M)
            more = [torch.randperm(M, generator=self._sample_gen) for _ in range(repeats - 1)]
            order = torch.cat([order, *more])

        stats_idx = order[: min(cfg.stats_pairs, n_use)]
        if len(stats_idx):
            loss_before, bt_before = self._evaluate(xc_all[stats_idx], xr_all[stats_idx], lam)
        else:
            loss_before = bt_before = float("nan")

        adam = self._ensure_adam()
        assert self._grads is not None
        k = 2.0 * lam / (cfg.n_heads * self.n_params_per_head)
        wd = cfg.weight_decay
        # fused: -k * w_init goes into the gradient, Adam's L2 term adds k * w (see
        # _fused_anchor_ok); otherwise k * (w - w_init) is added exactly. Decoupled AdamW decay
        # needs the exact form, as its decay is not a gradient term.
        fused_anchor = wd == 0.0 and self._fused_anchor_ok(k)
        k_fold = k if fused_anchor else 0.0
        l2 = k if fused_anchor else 0.0
        dtype = self.compute_dtype
        lp = dtype != torch.float32
        if lp:
            self._w0_lp = self._params[0].to(dtype)
        chunks = self._chunks()
        p0, m0, v0 = self._params[0], adam.exp_avg[0], adam.exp_avg_sq[0]
        small = (self._params[1:], self._grads, adam.exp_avg[1:], adam.exp_avg_sq[1:])

        bs = cfg.batch_size
        xbuf = torch.empty(2 * bs, self.in_dim, dtype=torch.float32)
        for step in range(n_steps):
            idx = order[step * step_size : (step + 1) * step_size]
            n = idx.numel()
            x = xbuf[: 2 * n]
            if xc_all.dtype == torch.float32:
                torch.index_select(xc_all, 0, idx, out=x[:n])
                torch.index_select(xr_all, 0, idx, out=x[n:])
            else:
                x[:n].copy_(xc_all.index_select(0, idx))
                x[n:].copy_(xr_all.index_select(0, idx))
            batch_loss, ctx = self._backward(x, n, k_fold, dtype, want_loss=progress is not None)
            adam.step += 1
            if not fused_anchor and k:
                pairs = zip(self._params[1:], self._anchors[1:], strict=True)
                for grd, (prm, anc) in zip(self._grads, pairs, strict=True):
                    grd.add_(prm - anc, alpha=k)  # exactly zero where w == w_init
            _adam_update(*small, adam.step, cfg.lr, l2, wd)
            for r0, r1 in chunks:
                g = self._layer0_grad(ctx, r0, r1, k_fold)
                if not fused_anchor and k:
                    g.add_(p0[r0:r1] - self._anchors[0][r0:r1], alpha=k)
                _adam_update([p0[r0:r1]], [g], [m0[r0:r1]], [v0[r0:r1]], adam.step, cfg.lr, l2, wd)
                if lp:
                    assert self._w0_lp is not None
                    self._w0_lp[r0:r1].copy_(p0[r0:r1])  # refresh while the rows are in cache
            if progress is not None:
                progress(step + 1, n_steps, batch_loss)
        self._w0_lp = None

        if len(stats_idx):
            loss_after, bt_after = self._evaluate(xc_all[stats_idx], xr_all[stats_idx], lam)
        else:
            loss_after = bt_after = float("nan")
        self.rounds_trained += 1
        return TrainStats(
            steps=n_steps,
            pairs_used=n_use,
            loss_before=loss_before,
            loss_after=loss_after,
            bt_before=bt_before,
            bt_after=bt_after,
            seconds=time.perf_counter() - t0,
            anchor_lambda=lam,
        )

    # ---------------------------------------------------------------- persistence

    def save(self, path: str | os.PathLike) -> None:
        """Write parameters, anchors, optimizer state and sampling RNG to a safetensors file.

        Config, ``in_dim`` and ``rounds_trained`` go into the file's metadata as one JSON string.
        The write is atomic (temporary file + rename).
        """
        path = Path(path)
        tensors: dict[str, torch.Tensor] = {}
        for name, p, a in zip(self._names, self._params, self._anchors, strict=True):
            tensors[f"param.{name}"] = p.detach().clone()
            tensors[f"anchor.{name}"] = a.clone()
        if self._adam is not None:
            for name, m, v in zip(
                self._names, self._adam.exp_avg, self._adam.exp_avg_sq, strict=True
            ):
                tensors[f"adam.exp_avg.{name}"] = m.clone()
                tensors[f"adam.exp_avg_sq.{name}"] = v.clone()
            tensors["adam.step"] = self._adam.step.reshape(1).clone()
        tensors["rng.sample"] = self._sample_gen.get_state().clone()
        meta = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "in_dim": self.in_dim,
            "rounds_trained": self.rounds_trained,
            "config": self.config.to_dict(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)})
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, config: EnsembleConfig | None = None) -> RewardEnsemble:
        """Inverse of :meth:`save`; training continues exactly where it stopped.

        Without ``config`` the model keeps the settings stored in the file. With ``config`` the
        settings in :attr:`EnsembleConfig.CHANGEABLE_FIELDS` (learning rate, decay, anchor
        schedule, centering, batch, steps, dtype, ...) are taken from it and apply from the next
        :meth:`train_round` on (the next :meth:`save` stores them); a setting in
        :attr:`EnsembleConfig.FIXED_FIELDS` (heads, layer widths, seed) that differs from the
        file's raises a ``ValueError`` naming each one, as the checkpoint cannot honour it.
        """
        if config is not None and not isinstance(config, EnsembleConfig):
            raise TypeError("config must be an EnsembleConfig")
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
            if raw is None:
                raise ValueError(f"{path} is not a RewardEnsemble file (no '{_META_KEY}' metadata)")
            meta = json.loads(raw)
            if meta.get("format") != _FORMAT or meta.get("format_version") != _FORMAT_VERSION:
                raise ValueError(
                    f"{path}: unsupported format {meta.get('format')!r} "
                    f"version {meta.get('format_version')!r}"
                )
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        stored = EnsembleConfig.from_dict(meta["config"])
        if config is not None:
            _check_fixed_settings(path, stored, config)
        # The fixed settings agree, so building from `config` gives the stored architecture and
        # initial heads; the changeable ones are only ever read from `model.config` when used.
        model = cls(int(meta["in_dim"]), config if config is not None else stored)
        model.rounds_trained = int(meta["rounds_trained"])
        for i, name in enumerate(model._names):
            for prefix, target in (("param", model._params), ("anchor", model._anchors)):
                t = tensors[f"{prefix}.{name}"]
                if t.shape != target[i].shape:
                    raise ValueError(
                        f"{path}: {prefix}.{name} has shape {tuple(t.shape)}, "
                        f"expected {tuple(target[i].shape)}"
                    )
                target[i].copy_(t)
        model._anchor_absmax = max(float(a.abs().max()) for a in model._anchors)
        if "adam.step" in tensors:
            adam = model._ensure_adam()
            adam.step.copy_(tensors["adam.step"].reshape(()))
            for i, name in enumerate(model._names):
                adam.exp_avg[i].copy_(tensors[f"adam.exp_avg.{name}"])
                adam.exp_avg_sq[i].copy_(tensors[f"adam.exp_avg_sq.{name}"])
        model._sample_gen.set_state(tensors["rng.sample"])
        return model


def _check_fixed_settings(
    path: str | os.PathLike, stored: EnsembleConfig, requested: EnsembleConfig
) -> None:
    """Raise if ``requested`` differs from the checkpoint's ``stored`` config in a fixed setting."""
    names = [n for n in EnsembleConfig.FIXED_FIELDS if getattr(stored, n) != getattr(requested, n)]
    if names:
        diffs = "; ".join(
            f"{n}: stored {getattr(stored, n)!r}, requested {getattr(requested, n)!r}"
            for n in names
        )
        raise ValueError(
            f"{path}: the reward ensemble was built with settings that cannot change between "
            f"rounds ({diffs}). Keep the stored {', '.join(names)} to continue this chain of "
            "rounds, or start a new home (a fresh chain of rounds) to use the new value."
        )
