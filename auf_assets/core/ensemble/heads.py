"""The reward heads of the ensemble: parameters, the batched forward pass, predictions and loss."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from .config import _COMPUTE_DTYPES, EnsembleConfig, _is_int, anchor_lambda
from .kernels import _AdamState, _onednn_linear, onednn_available


def _as_tensor(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(features, torch.Tensor):
        return features.detach()
    arr = np.asarray(features)
    if arr.dtype not in (np.float32, np.float16, np.float64):
        arr = arr.astype(np.float32)
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:
        # read-only inputs (memory-mapped feature caches) are never written
        # to here; torch would warn about them on every conversion
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(arr)
    return torch.from_numpy(arr)


class EnsembleHeads:
    """The ``H`` MLP reward heads of :class:`~.reward_ensemble.RewardEnsemble`, run as one batched
    computation: the parameters, the forward pass, the predictions and the loss; training and the
    checkpoint file are :class:`~.reward_ensemble.RewardEnsemble`'s.

    Parameter layout (``h_1..h_L`` = ``config.hidden``)::

        layer0.weight [H*h_1, d]        head h owns rows h*h_1 : (h+1)*h_1
        layer0.bias   [H, h_1]
        layer<l>.weight [H, h_l, h_{l+1}], layer<l>.bias [H, h_{l+1}]   (l = 1..L-1)
        out.weight    [H, h_L]          (no bias)

    Rewards of head ``h``: ``relu(... relu(x @ W0_h.T + b0_h) @ W1_h + b1_h ...) @ w_out_h``.
    :meth:`head_layers` returns one head's weights in ``torch.nn.Linear`` convention.
    """

    def __init__(self, in_dim: int, config: EnsembleConfig | None = None):
        if not _is_int(in_dim) or in_dim < 1:
            raise ValueError(f"in_dim must be an integer >= 1, got {in_dim!r}")
        self.in_dim = int(in_dim)
        self.config = config if config is not None else EnsembleConfig()
        if not isinstance(self.config, EnsembleConfig):
            raise TypeError("config must be an EnsembleConfig")
        self.rounds_trained = 0
        cfg = self.config
        H = cfg.n_heads
        sizes = (self.in_dim, *cfg.hidden)
        self._sizes = sizes

        gen = torch.Generator().manual_seed(cfg.seed)
        params: dict[str, torch.Tensor] = {}

        def xavier(shape: tuple[int, ...], fan_in: int, fan_out: int) -> torch.Tensor:
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            return torch.empty(shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen)

        # Every head has the same fan-in/fan-out, so one draw over the stacked tensor is per-head
        # Xavier-uniform. layer0 is [H*h1, d]: the heads' first layers stacked in nn.Linear layout.
        w0 = xavier((H, sizes[1], sizes[0]), sizes[0], sizes[1])
        params["layer0.weight"] = w0.reshape(H * sizes[1], sizes[0])
        params["layer0.bias"] = torch.zeros(H, sizes[1])
        for i in range(1, len(cfg.hidden)):
            params[f"layer{i}.weight"] = xavier((H, sizes[i], sizes[i + 1]), sizes[i], sizes[i + 1])
            params[f"layer{i}.bias"] = torch.zeros(H, sizes[i + 1])
        params["out.weight"] = xavier((H, sizes[-1]), sizes[-1], 1)

        self._names = list(params)
        self._params = [params[n] for n in self._names]
        self._anchors = [p.clone() for p in self._params]
        self._anchor_absmax = max(float(a.abs().max()) for a in self._anchors)
        self.n_params_per_head = sum(p.numel() for p in self._params) // H

        self._sample_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self._grads: list[torch.Tensor] | None = None  # small parameters' gradient buffers
        self._adam: _AdamState | None = None
        #: fp32 GEMM route for the first layer: "onednn" where usable, else "blas" (torch.mm);
        #: results agree to fp32 rounding, and each is deterministic for a fixed thread count.
        self.gemm_backend = (
            "onednn" if onednn_available() and torch.backends.mkldnn.enabled else "blas"
        )
        self._w0_lp: torch.Tensor | None = None  # low-precision copy of layer0.weight

    # ---------------------------------------------------------------- parameters

    @property
    def n_heads(self) -> int:
        return self.config.n_heads

    @property
    def compute_dtype(self) -> torch.dtype:
        return _COMPUTE_DTYPES[self.config.compute_dtype]

    def parameters(self) -> dict[str, torch.Tensor]:
        """The live parameter tensors by name (modify in place only if you know why)."""
        return dict(zip(self._names, self._params, strict=True))

    def anchors(self) -> dict[str, torch.Tensor]:
        """The frozen initial parameters the anchor term pulls towards."""
        return dict(zip(self._names, self._anchors, strict=True))

    def head_layers(self, h: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Head ``h`` as ``[(weight [out, in], bias or None), ...]`` (``nn.Linear`` convention)."""
        if not 0 <= h < self.n_heads:
            raise IndexError(f"head {h} out of range [0, {self.n_heads})")
        p = self.parameters()
        h1 = self._sizes[1]
        layers = [(p["layer0.weight"][h * h1 : (h + 1) * h1].clone(), p["layer0.bias"][h].clone())]
        for i in range(1, len(self.config.hidden)):
            layers.append((p[f"layer{i}.weight"][h].T.clone(), p[f"layer{i}.bias"][h].clone()))
        layers.append((p["out.weight"][h][None, :].clone(), None))
        return layers

    # ---------------------------------------------------------------- forward

    def _forward(
        self,
        x: torch.Tensor,
        dtype: torch.dtype,
        w0_lp: torch.Tensor | None = None,
        keep: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Rewards ``[H, B]`` of ``x [B, d]``; ``keep`` collects the post-ReLU activations."""
        p = self._params
        H = self.config.n_heads
        B = x.shape[0]
        h1 = self._sizes[1]
        if dtype == torch.float32:
            x = x.to(torch.float32)
            differentiable = torch.is_grad_enabled() and (
                x.requires_grad or p[0].requires_grad or p[1].requires_grad
            )
            if self.gemm_backend == "onednn" and not differentiable:
                z = _onednn_linear(x, p[0], p[1].reshape(-1), "relu")
            else:
                z = torch.relu(torch.addmm(p[1].reshape(-1), x, p[0].T))
        else:
            w_lp = w0_lp if w0_lp is not None else p[0].to(dtype)
            z = torch.relu(torch.mm(x.to(dtype), w_lp.T).to(torch.float32) + p[1].reshape(-1))
        a = z.view(B, H, h1).transpose(0, 1).contiguous()  # [H, B, h1], post-ReLU
        if keep is not None:
            keep.append(a)
        for i in range(1, len(self.config.hidden)):
            w, b = p[2 * i], p[2 * i + 1]
            a = torch.relu(torch.baddbmm(b.unsqueeze(1), a, w))  # [H, B, h_{i+1}]
            if keep is not None:
                keep.append(a)
        return torch.bmm(a, p[-1].unsqueeze(2)).squeeze(2)  # [H, B]

    def rewards(self, x: torch.Tensor) -> torch.Tensor:
        """Per-head rewards ``[H, B]`` of features ``x [B, d]`` (differentiable)."""
        x = _as_tensor(x)
        self._check_features(x)
        return self._forward(x, self.compute_dtype)

    def _check_features(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"features must have shape [B, {self.in_dim}], got {tuple(x.shape)}")

    @torch.no_grad()
    def _scores(self, x: np.ndarray | torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        x = _as_tensor(x)
        self._check_features(x)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        dtype = self.compute_dtype
        w_lp = self._params[0].to(dtype) if dtype != torch.float32 else None
        chunks = [
            self._forward(x[i : i + batch_size], dtype, w0_lp=w_lp)
            for i in range(0, x.shape[0], batch_size)
        ]
        if not chunks:
            return torch.zeros(self.config.n_heads, 0)
        return torch.cat(chunks, dim=1)

    def predict(
        self, features: np.ndarray | torch.Tensor, batch_size: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread of the heads' rewards: ``mu, sigma`` as float32 arrays ``[B]``.

        ``sigma`` is the population standard deviation over heads (``unbiased=False``). Accepts
        float16/32/64 numpy arrays or tensors; runs without gradients in chunks of ``batch_size``.
        """
        r = self._scores(features, batch_size)
        if r.shape[1] == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        mu = r.mean(dim=0)
        sigma = r.std(dim=0, correction=0)
        return mu.numpy().astype(np.float32), sigma.numpy().astype(np.float32)

    # ---------------------------------------------------------------- loss

    def anchor_lambda(self, n_done: int) -> float:
        cfg = self.config
        return anchor_lambda(n_done, cfg.anchor_lambda0, cfg.anchor_half_life)

    def _anchor_per_head(self) -> torch.Tensor:
        """``mean over the head's parameters of (w - w_init)^2`` for every head, ``[H]``."""
        H = self.config.n_heads
        total = torch.zeros(H)
        for p, a in zip(self._params, self._anchors, strict=True):
            total = total + (p - a).square().reshape(H, -1).sum(dim=1)
        return total / self.n_params_per_head

    def _data_terms(self, rc: torch.Tensor, rr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head BT and centering terms ``[H]`` from per-head rewards ``[H, n]``."""
        bt = torch.nn.functional.softplus(rr - rc).mean(dim=1)
        center = self.config.center_coef * (rc + rr).square().mean(dim=1)
        return bt, center

    def loss(
        self,
        chosen: np.ndarray | torch.Tensor,
        rejected: np.ndarray | torch.Tensor,
        n_done: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Training objective on a batch of pairs (spec section 2), differentiable.

        Returns ``total = mean_h(BT_h + anchor_h + center_h)`` and a dict of its parts (means over
        heads) plus ``bt_of_mean`` (BT loss of the ensemble mean), ``accuracy`` (fraction of pairs
        the mean ranks right) and ``anchor_lambda``.
        """
        xc, xr = _as_tensor(chosen), _as_tensor(rejected)
        self._check_pair(xc, xr)
        n = xc.shape[0]
        r = self._forward(torch.cat([xc, xr]), self.compute_dtype)
        rc, rr = r[:, :n], r[:, n:]
        bt, center = self._data_terms(rc, rr)
        lam = self.anchor_lambda(n_done)
        anchor = lam * self._anchor_per_head()
        total = (bt + center + anchor).mean()
        with torch.no_grad():
            margin = rc.mean(0) - rr.mean(0)
            parts = {
                "bt": float(bt.mean()),
                "center": float(center.mean()),
                "anchor": float(anchor.mean()),
                "bt_of_mean": float(torch.nn.functional.softplus(-margin).mean()),
                "accuracy": float((margin > 0).float().mean()),
                "anchor_lambda": lam,
            }
        return total, parts

    def bt_loss(
        self, chosen: np.ndarray | torch.Tensor, rejected: np.ndarray | torch.Tensor
    ) -> float:
        """Plain Bradley-Terry loss of the ensemble mean, ``mean(-log sigmoid(mu_c - mu_r))``."""
        xc, xr = _as_tensor(chosen), _as_tensor(rejected)
        self._check_pair(xc, xr)
        margin = self._scores(xc).mean(0) - self._scores(xr).mean(0)
        return float(torch.nn.functional.softplus(-margin).mean())

    def _check_pair(self, xc: torch.Tensor, xr: torch.Tensor) -> None:
        self._check_features(xc)
        self._check_features(xr)
        if xc.shape != xr.shape:
            raise ValueError(f"chosen {tuple(xc.shape)} and rejected {tuple(xr.shape)} differ")

    @torch.no_grad()
    def _evaluate(self, xc: torch.Tensor, xr: torch.Tensor, lam: float) -> tuple[float, float]:
        """(total loss, BT of the mean) on a set of pairs, without gradients."""
        rc, rr = self._scores(xc, 2048), self._scores(xr, 2048)
        bt, center = self._data_terms(rc, rr)
        total = float((bt + center).mean()) + lam * float(self._anchor_per_head().mean())
        bt_mean = float(torch.nn.functional.softplus(rr.mean(0) - rc.mean(0)).mean())
        return total, bt_mean
