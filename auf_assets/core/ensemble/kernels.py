"""The fast CPU routes of the reward ensemble: the first-layer GEMMs through oneDNN and torch's
fused Adam(W) kernels, each checked once against the plain formula (the fallback).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

# AdamW hyper-parameters that are not exposed (the reference's defaults).
_BETAS = (0.9, 0.999)
_EPS = 1e-8


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
