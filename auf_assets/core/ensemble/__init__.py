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

from .config import EnsembleConfig, TrainStats, anchor_lambda, half_life_from_reference
from .kernels import onednn_available
from .reward_ensemble import RewardEnsemble

__all__ = [
    "EnsembleConfig",
    "RewardEnsemble",
    "TrainStats",
    "anchor_lambda",
    "half_life_from_reference",
    "onednn_available",
]
