"""Uncertainty-aware reward model: an anchored ensemble of MLP heads on frozen features.

This is the "ENN" of the active preference loop (spec section 2). Every response is encoded once by
a frozen backbone into a feature vector; this module learns ``H`` small MLP heads
(``d -> 128 -> 128 -> 1``, ReLU) on top of those features from labelled (chosen, rejected) pairs.
The ensemble gives each response a mean reward ``mu`` (mean over heads) and a spread ``sigma``
(population standard deviation over heads), from which the acquisition functions build
``mu +- beta * sigma``.

Loss on a batch of ``n`` feature pairs, for head ``h`` with rewards ``c = r_h(chosen)`` and
``r = r_h(rejected)``::

    BT_h     = mean_i softplus(-(c_i - r_i))            # = -log sigmoid(c_i - r_i)
    center_h = center_coef * mean_i (c_i + r_i)^2
    anchor_h = lambda_t * mean over the P scalar parameters of head h of (w - w_init)^2
    total    = mean_h (BT_h + center_h + anchor_h)

``lambda_t = anchor_lambda0 * 0.5 ** (n_done / anchor_half_life)`` with ``n_done`` the number of
prompts consumed so far. The reference writes the same decay as ``base ** (4308 * n_done / N)``;
see :func:`half_life_from_reference` for the conversion (base 0.99 on UltraFeedback,
``N`` about 60k prompts, is a half-life of about 1000 prompts).

Speed. All heads run as one batched computation; nothing loops over heads in Python:

* the first layer of every head is one GEMM ``[B, d] x [d, H*h1]`` (the heads see the same batch,
  so their first-layer weights are stacked into one ``[H*h1, d]`` matrix), with bias and ReLU
  fused. Where usable, the fp32 first-layer GEMMs go through oneDNN (AVX-512 on any x86 CPU)
  rather than MKL (which takes its AVX2 path on AMD CPUs), 2x faster on the development machine;
  see :func:`onednn_available` and ``RewardEnsemble.gemm_backend``;
* deeper layers are ``torch.baddbmm`` over a leading head dimension;
* training uses a hand-written backward pass (tested against autograd): no autograd bookkeeping;
* the first layer's weight gradient (``H*h1 x d``, the bulk of all parameters) is never
  materialised whole: it is computed in row chunks of a few MB, and each chunk goes straight from
  the GEMM through the anchor term into the fused Adam update while it is still in cache, which
  saves most of the memory traffic of a step;
* the anchor term's gradient ``k * (w - w_init)`` with ``k = 2 * lambda_t / (H * P)`` is
  analytic: the ``-k * w_init`` half is subtracted from the gradient chunk and the ``+k * w`` half
  is the L2 ``weight_decay`` of the fused Adam kernel while ``lambda_t`` is moderate (see
  ``_fused_anchor_ok``); otherwise, and with decoupled AdamW ``weight_decay``, it is added
  exactly as ``k * (w - w_init)``;
* ``compute_dtype="bfloat16"`` runs the first-layer GEMMs (forward and weight gradient) in bf16 with
  fp32 accumulation, keeping fp32 master weights, optimizer state and deeper layers (an option
  for CPUs with AVX512-BF16/AMX; ``float32`` is the default).

Determinism: the same seed, data and thread count give bit-identical results on CPU; a model that is
saved and loaded continues training exactly as if it had never been saved.

Settings between rounds: ``RewardEnsemble.load(path, config)`` applies the settings of ``config``
that may change between rounds (``EnsembleConfig.CHANGEABLE_FIELDS``: learning rate, decay,
anchor schedule, centering, replay size, batch, steps, compute dtype, stats pairs) and refuses,
naming them, the ones the checkpoint is bound to (``EnsembleConfig.FIXED_FIELDS``: heads, layer
widths, seed), so what is configured is what trains.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .settings import EnsembleSettings

__all__ = [
    "EnsembleConfig",
    "RewardEnsemble",
    "TrainStats",
    "anchor_lambda",
    "half_life_from_reference",
    "onednn_available",
]

_COMPUTE_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_FORMAT = "auf-reward-ensemble"
_FORMAT_VERSION = 1
_META_KEY = "auf_reward_ensemble"

# AdamW hyper-parameters that are not exposed (the reference's defaults).
_BETAS = (0.9, 0.999)
_EPS = 1e-8


def anchor_lambda(n_done: int, lambda0: float, half_life: float) -> float:
    """Anchor strength after ``n_done`` prompts: ``lambda0 * 0.5 ** (n_done / half_life)``.

    ``half_life = inf`` keeps ``lambda0`` forever.
    """
    if n_done < 0:
        raise ValueError(f"n_done must be >= 0, got {n_done}")
    if math.isinf(half_life):
        return float(lambda0)
    return float(lambda0) * 0.5 ** (n_done / half_life)


def half_life_from_reference(base: float, n_total: int, scaler: float = 4308.0) -> float:
    """Half-life in prompts of the reference schedule ``lambda0 * base ** (scaler * n_done / N)``.

    Solving ``base ** (scaler * n / N) = 1/2`` gives ``n = N * ln(2) / (scaler * -ln(base))``.
    With base 0.99 and UltraFeedback's ~60-64k prompts this is about 1000 prompts, the default of
    :class:`EnsembleConfig`; base 0.9 gives ~100 and base 0.999 ~10,000. ``base == 1`` means no
    decay (``inf``).
    """
    if not 0.0 < base <= 1.0:
        raise ValueError(f"base must be in (0, 1], got {base}")
    if n_total <= 0 or scaler <= 0:
        raise ValueError("n_total and scaler must be positive")
    if base == 1.0:
        return math.inf
    return n_total * math.log(2.0) / (scaler * -math.log(base))


# --------------------------------------------------------------------------------------------------
# configuration


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass
class EnsembleConfig(EnsembleSettings):
    """Hyper-parameters of :class:`RewardEnsemble` (defaults: the reference's, spec section 2):
    :class:`~auf_assets.core.settings.EnsembleSettings` (checked there) plus the run's own seed
    and compute options.

    Attributes:
        n_heads: number of independent MLP heads ``H``.
        hidden: hidden layer widths; ``(128, 128)`` is ``d -> 128 -> 128 -> 1`` with ReLU.
        lr: AdamW learning rate (constant; betas 0.9/0.999, eps 1e-8).
        weight_decay: decoupled AdamW weight decay (towards zero; the anchor term is separate).
        anchor_lambda0: anchor strength ``lambda_0`` at ``n_done = 0``.
        anchor_half_life: prompts after which the anchor strength halves:
            ``lambda_t = lambda_0 * 0.5 ** (n_done / anchor_half_life)``. The reference's
            ``base ** (4308 * n_done / N)`` with base 0.99 on UltraFeedback is about a 1000-prompt
            half-life (:func:`half_life_from_reference`); ``inf`` disables the decay.
        center_coef: weight of the reward-centering term ``mean((r_c + r_r)^2)``.
        replay_capacity: FIFO replay-buffer size in pairs (used by the caller's buffer).
        batch_size: pairs per optimizer step.
        max_steps: steps per round; a round samples up to ``max_steps * batch_size`` pairs of the
            buffer without replacement and makes one pass over them.
        min_steps: the fewest steps a round makes (0: no floor, the reference). A buffer smaller
            than ``min_steps * batch_size`` pairs is passed over again, each time in a fresh
            order, until the round has made ``min_steps`` steps: early rounds of a small batch
            (the demo's 8 prompts give one step of 8 pairs) learn as much per round as later
            ones instead of barely moving. It changes nothing once the buffer holds
            ``min_steps * batch_size`` pairs, and never makes more than ``max_steps`` steps.
        seed: seeds the head initialisation and the (persistent) sampling generator.
        compute_dtype: ``"float32"`` or ``"bfloat16"`` for the first-layer GEMMs (see module doc).
        stats_pairs: pairs of each round's sample on which :class:`TrainStats` measures the loss
            before and after the round (0 skips the measurement; the fields are then NaN).

    Between rounds (:meth:`RewardEnsemble.load` with a ``config``) the settings in
    :attr:`CHANGEABLE_FIELDS` may change and take effect from the next round on; the ones in
    :attr:`FIXED_FIELDS` shape the heads themselves and cannot change within a chain of rounds.
    """

    #: Settings that may differ from the checkpoint's when a model is loaded: every one of them is
    #: read when it is used (each training step, round or prediction), none is baked into the
    #: parameters or the optimizer state.
    CHANGEABLE_FIELDS: ClassVar[tuple[str, ...]] = (
        "lr",
        "weight_decay",
        "anchor_lambda0",
        "anchor_half_life",
        "center_coef",
        "replay_capacity",
        "batch_size",
        "max_steps",
        "min_steps",
        "compute_dtype",
        "stats_pairs",
    )
    #: Settings a checkpoint is bound to: the number and shape of the heads, and the seed (it only
    #: draws the initial heads, which are the anchors, and seeds the sampling generator, whose
    #: state the checkpoint carries; a new seed would change neither, so it is refused rather
    #: than silently ignored).
    FIXED_FIELDS: ClassVar[tuple[str, ...]] = ("n_heads", "hidden", "seed")

    seed: int = 0
    compute_dtype: str = "float32"
    stats_pairs: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _is_int(self.stats_pairs) or self.stats_pairs < 0:
            raise ValueError(
                f"EnsembleConfig.stats_pairs must be an integer >= 0, got {self.stats_pairs!r}"
            )
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise ValueError(
                f"EnsembleConfig.seed must be an integer in [0, 2**63), got {self.seed!r}"
            )
        if self.compute_dtype not in _COMPUTE_DTYPES:
            raise ValueError(
                f"EnsembleConfig.compute_dtype must be one of {sorted(_COMPUTE_DTYPES)}, "
                f"got {self.compute_dtype!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; an infinite ``anchor_half_life`` is written as ``None``."""
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        if math.isinf(self.anchor_half_life):
            out["anchor_half_life"] = None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnsembleConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown EnsembleConfig keys: {unknown}")
        kwargs = dict(data)
        if "hidden" in kwargs and kwargs["hidden"] is not None:
            kwargs["hidden"] = tuple(kwargs["hidden"])
        if "anchor_half_life" in kwargs and kwargs["anchor_half_life"] in (None, "inf", "Infinity"):
            kwargs["anchor_half_life"] = math.inf
        return cls(**kwargs)


@dataclass
class TrainStats:
    """What one :meth:`RewardEnsemble.train_round` did.

    ``loss_*`` is the total loss (BT + center + anchor at this round's lambda, averaged over heads)
    and ``bt_*`` the Bradley-Terry loss of the ensemble mean, both on the first ``stats_pairs``
    pairs of the round's sample, before and after the round's updates.
    """

    steps: int
    pairs_used: int
    loss_before: float
    loss_after: float
    bt_before: float
    bt_after: float
    seconds: float
    anchor_lambda: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# GEMM backend

_ONEDNN_OK: bool | None = None


def _onednn_linear(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, attr: str
) -> torch.Tensor:
    """``attr(x @ w.T + b)`` through oneDNN (attr ``"none"`` or ``"relu"``), fp32, no autograd."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, attr, [], "")


def _relu_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``grad * (out > 0)`` in one pass (``out`` is the ReLU's output)."""
    return torch.ops.aten.threshold_backward(grad, out, 0.0)


def onednn_available() -> bool:
    """Whether fp32 GEMMs can go through oneDNN (checked once, numerically, on a tiny problem).

    On x86 PyTorch runs fp32 ``mm``/``addmm`` through MKL, which on AMD CPUs takes its AVX2 path;
    oneDNN uses AVX-512 there and is 2-3x faster for the large first-layer GEMMs. Both are exact
    fp32 (oneDNN's default math mode is strict unless ``torch.backends.mkldnn`` is told otherwise).
    """
    global _ONEDNN_OK
    if _ONEDNN_OK is None:
        ok = False
        try:
            if torch.backends.mkldnn.is_available() and hasattr(
                torch.ops.mkldnn, "_linear_pointwise"
            ):
                gen = torch.Generator().manual_seed(0)
                x = torch.randn(5, 7, generator=gen)
                w = torch.randn(3, 7, generator=gen)
                b = torch.randn(3, generator=gen)
                ref = torch.relu(torch.addmm(b, x, w.T))
                got = _onednn_linear(x, w, b, "relu")
                ref2 = x.T @ torch.ones(5, 2)
                got2 = _onednn_linear(x.T.contiguous(), torch.ones(2, 5), None, "none")
                ok = bool(
                    torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
                    and torch.allclose(got2, ref2, rtol=1e-5, atol=1e-5)
                )
        except Exception:  # any failure means "not usable"
            ok = False
        _ONEDNN_OK = ok
    return _ONEDNN_OK


# --------------------------------------------------------------------------------------------------
# Adam(W)

# The first layer's weight gradient is produced and consumed in row chunks of about this size, so
# each chunk goes from the GEMM through the anchor term into the Adam update while still in cache.
_CHUNK_BYTES = 4 << 20
_FUSED_ADAM_OK: bool | None = None
_FORCE_REFERENCE_ADAM = False  # tests flip this to check the fused kernel against the formula


class _AdamState:
    """Adam moments of every parameter and the shared step count (all parameters step together)."""

    def __init__(self, params: list[torch.Tensor]):
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self.step = torch.zeros((), dtype=torch.float32)


class _Layer0Grad(NamedTuple):
    dz_t: torch.Tensor  # [H*h1, B] gradient at the first layer's pre-activations, transposed
    x: torch.Tensor  # [B, d] the batch (bf16 in low-precision mode)
    x_t: torch.Tensor | None  # [d, B] contiguous, for the oneDNN route


def _reference_adam(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    step: float,
    lr: float,
    l2: float,
    decoupled_wd: float,
) -> None:
    """Adam (L2 term ``l2``) or AdamW (decoupled decay ``decoupled_wd``) as torch.optim has it."""
    beta1, beta2 = _BETAS
    bc1 = 1.0 - beta1**step
    bc2_sqrt = math.sqrt(1.0 - beta2**step)
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs, strict=True):
        if decoupled_wd:
            p.mul_(1.0 - lr * decoupled_wd)
        if l2:
            g = g.add(p, alpha=l2)
        m.lerp_(g, 1.0 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        denom = (v.sqrt() / bc2_sqrt).add_(_EPS)
        p.addcdiv_(m, denom, value=-lr / bc1)


def _fused_adam_ok() -> bool:
    """Whether torch's fused CPU Adam/AdamW kernels are there and agree with the formula."""
    global _FUSED_ADAM_OK
    if _FUSED_ADAM_OK is None:
        ok = False
        try:
            gen = torch.Generator().manual_seed(0)
            for wd, l2 in ((0.0, 0.3), (0.2, 0.0)):
                p = torch.randn(33, generator=gen)
                g = torch.randn(33, generator=gen)
                m, v = torch.randn(33, generator=gen), torch.rand(33, generator=gen)
                ref = [t.clone() for t in (p, g, m, v)]
                step = torch.tensor(3.0)
                fn = torch._fused_adamw_ if wd else torch._fused_adam_
                fn([p], [g.clone()], [m], [v], [], [step], lr=0.01, beta1=_BETAS[0],
                   beta2=_BETAS[1], weight_decay=wd or l2, eps=_EPS, amsgrad=False,
                   maximize=False)  # fmt: skip
                _reference_adam([ref[0]], [ref[1]], [ref[2]], [ref[3]], 3.0, 0.01, l2, wd)
                ok = torch.allclose(p, ref[0], rtol=1e-5, atol=1e-7) and torch.allclose(
                    v, ref[3], rtol=1e-5, atol=1e-9
                )
                if not ok:
                    break
        except Exception:  # any failure means "use the formula"
            ok = False
        _FUSED_ADAM_OK = bool(ok)
    return _FUSED_ADAM_OK


def _adam_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    step: torch.Tensor,
    lr: float,
    l2: float,
    decoupled_wd: float,
) -> None:
    """One Adam step (already counted in ``step``) on a group of tensors, in place.

    ``l2`` adds ``l2 * w`` to the gradient (Adam's ``weight_decay``); ``decoupled_wd`` is AdamW's
    decay. Uses torch's fused CPU kernel (one pass over the tensors) where it checks out.
    """
    if decoupled_wd and l2:
        raise ValueError("use either an L2 term or decoupled weight decay, not both")
    if not _FORCE_REFERENCE_ADAM and _fused_adam_ok():
        fn = torch._fused_adamw_ if decoupled_wd else torch._fused_adam_
        fn(params, grads, exp_avgs, exp_avg_sqs, [], [step] * len(params), lr=lr,
           beta1=_BETAS[0], beta2=_BETAS[1], weight_decay=decoupled_wd or l2, eps=_EPS,
           amsgrad=False, maximize=False)  # fmt: skip
    else:
        _reference_adam(params, grads, exp_avgs, exp_avg_sqs, float(step), lr, l2, decoupled_wd)


# --------------------------------------------------------------------------------------------------
# the model


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


class RewardEnsemble:
    """An anchored ensemble of ``H`` MLP reward heads, all run as one batched computation.

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
