"""Tests of the anchored reward-head ensemble (auf_assets.core.ensemble)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from auf_assets.core.ensemble import (
    EnsembleConfig,
    RewardEnsemble,
    anchor_lambda,
    half_life_from_reference,
)

D = 24


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny problems: threads only add synchronisation, and on a shared, busy CPU OpenMP barriers
    can cost milliseconds per op. Threading is the caller's choice; here the caller is the test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pairs(n: int, d: int = D, seed: int = 0, w: np.ndarray | None = None):
    """Pairs labelled by a hidden linear reward: chosen has the larger w.x (separable)."""
    rng = np.random.default_rng(seed)
    if w is None:
        w = np.random.default_rng(1234).standard_normal(d).astype(np.float32)
    a = rng.standard_normal((n, d)).astype(np.float32)
    b = rng.standard_normal((n, d)).astype(np.float32)
    first = (a @ w) >= (b @ w)
    chosen = np.where(first[:, None], a, b)
    rejected = np.where(first[:, None], b, a)
    return chosen, rejected


def _small(**kw) -> EnsembleConfig:
    base = dict(n_heads=6, hidden=(16, 16), batch_size=16, max_steps=10, seed=3)
    base.update(kw)
    return EnsembleConfig(**base)


def _per_head_loop(model: RewardEnsemble, x: torch.Tensor) -> torch.Tensor:
    """Reference forward: one head at a time, nn.Linear convention."""
    outs = []
    for h in range(model.n_heads):
        a = x
        layers = model.head_layers(h)
        for i, (w, b) in enumerate(layers):
            a = torch.nn.functional.linear(a, w, b)
            if i < len(layers) - 1:
                a = torch.relu(a)
        outs.append(a.squeeze(-1))
    return torch.stack(outs)


# ---------------------------------------------------------------------------------------- shapes


def test_shapes_and_init():
    cfg = _small()
    m = RewardEnsemble(D, cfg)
    x = torch.randn(7, D)
    assert m.rewards(x).shape == (cfg.n_heads, 7)
    mu, sigma = m.predict(x.numpy())
    assert mu.shape == sigma.shape == (7,)
    assert mu.dtype == sigma.dtype == np.float32
    assert np.all(sigma > 0), "heads must differ at init"
    mu0, s0 = m.predict(np.zeros((0, D), np.float32))
    assert mu0.shape == s0.shape == (0,)
    with pytest.raises(ValueError):
        m.predict(np.zeros((3, D + 1), np.float32))

    # Xavier-uniform bounds, zero biases, no bias on the output layer
    params = m.parameters()
    assert "out.bias" not in params
    h1, h2 = cfg.hidden
    bounds = {
        "layer0.weight": math.sqrt(6 / (D + h1)),
        "layer1.weight": math.sqrt(6 / (h1 + h2)),
        "out.weight": math.sqrt(6 / (h2 + 1)),
    }
    for name, bound in bounds.items():
        w = params[name]
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.8 * bound  # really uniform over the range
    assert float(params["layer0.bias"].abs().max()) == 0.0
    assert float(params["layer1.bias"].abs().max()) == 0.0
    layers = m.head_layers(0)
    assert [tuple(w.shape) for w, _ in layers] == [(h1, D), (h2, h1), (1, h2)]
    assert layers[-1][1] is None
    assert not torch.equal(m.head_layers(0)[0][0], m.head_layers(1)[0][0])
    assert m.n_params_per_head == D * h1 + h1 + h1 * h2 + h2 + h2


def test_batched_equals_per_head_loop():
    for hidden in [(16, 16), (9,), (8, 5, 7)]:
        m = RewardEnsemble(D, _small(hidden=hidden))
        # move away from init so the biases are non-zero
        for p in m.parameters().values():
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(11, D)
        batched = m.rewards(x)
        ref = _per_head_loop(m, x)
        assert batched.shape == ref.shape
        torch.testing.assert_close(batched, ref, rtol=1e-5, atol=1e-5)


def test_mean_and_std_are_over_heads_and_fp16_accepted():
    m = RewardEnsemble(D, _small())
    x = torch.randn(9, D)
    r = m.rewards(x).detach()
    mu, sigma = m.predict(x)
    np.testing.assert_allclose(mu, r.mean(0).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(sigma, r.std(0, correction=0).numpy(), rtol=1e-5, atol=1e-6)
    # fp16 features (numpy and torch) are accepted and give (nearly) the same answer
    x16 = x.numpy().astype(np.float16)
    mu16, s16 = m.predict(x16)
    mu16t, _ = m.predict(torch.from_numpy(x16), batch_size=4)
    ref_mu, ref_s = m.predict(x16.astype(np.float32))
    np.testing.assert_array_equal(mu16, ref_mu)
    np.testing.assert_array_equal(s16, ref_s)
    np.testing.assert_allclose(mu16t, ref_mu, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------- loss


def test_anchor_term_and_schedule():
    cfg = _small(anchor_lambda0=2.0, anchor_half_life=500.0)
    m = RewardEnsemble(D, cfg)
    c, r = _pairs(32)
    _, parts = m.loss(c, r, n_done=0)
    assert parts["anchor"] == 0.0
    assert parts["anchor_lambda"] == 2.0
    assert m.anchor_lambda(500) == pytest.approx(1.0)
    assert m.anchor_lambda(1000) == pytest.approx(0.5)
    assert anchor_lambda(123, 1.5, math.inf) == 1.5
    # the reference's base**(4308 * n / N) with base 0.99 on UltraFeedback is ~1000 prompts
    hl = half_life_from_reference(0.99, 60_829)
    assert 950 < hl < 1050
    assert 0.99 ** (4308 * hl / 60_829) == pytest.approx(0.5)
    # after moving one parameter, the anchor is lambda * mean over that head's parameters
    m.parameters()["out.weight"][0, 0] += 3.0
    _, parts = m.loss(c, r, n_done=500)
    expected = 1.0 * 9.0 / m.n_params_per_head / cfg.n_heads  # only head 0 moved
    assert parts["anchor"] == pytest.approx(expected, rel=1e-5)


def test_loss_total_matches_definition():
    cfg = _small(center_coef=0.3)
    m = RewardEnsemble(D, cfg)
    for p in m.parameters().values():
        p.add_(0.05 * torch.randn_like(p))
    c, r = _pairs(20)
    total, parts = m.loss(c, r, n_done=100)
    rc = _per_head_loop(m, torch.from_numpy(c))
    rr = _per_head_loop(m, torch.from_numpy(r))
    bt = -torch.nn.functional.logsigmoid(rc - rr).mean(1)
    center = 0.3 * ((rc + rr) ** 2).mean(1)
    n_head_params = sum(w.numel() + (0 if b is None else b.numel()) for w, b in m.head_layers(0))
    assert n_head_params == m.n_params_per_head
    lam = m.anchor_lambda(100)
    assert parts["bt"] == pytest.approx(float(bt.mean()), rel=1e-5)
    assert parts["center"] == pytest.approx(float(center.mean()), rel=1e-5)
    assert float(total) == pytest.approx(parts["bt"] + parts["center"] + parts["anchor"], rel=1e-5)
    assert parts["anchor"] > 0 and parts["anchor_lambda"] == lam
    bt_mean = -torch.nn.functional.logsigmoid(rc.mean(0) - rr.mean(0)).mean()
    assert m.bt_loss(c, r) == pytest.approx(float(bt_mean), rel=1e-5)


def test_manual_gradients_match_autograd():
    """The hand-written backward pass (plus the optimizer's L2 half of the anchor) is exact."""
    for hidden in [(16, 16), (10,), (6, 8, 5)]:
        cfg = _small(hidden=hidden, center_coef=0.2, anchor_lambda0=30.0)
        m = RewardEnsemble(D, cfg)
        for p in m.parameters().values():
            p.add_(0.05 * torch.randn_like(p))
        c, r = (torch.from_numpy(a) for a in _pairs(13))
        params = list(m.parameters().values())
        for p in params:
            p.requires_grad_(True)
        total, _ = m.loss(c, r, n_done=250)
        auto = torch.autograd.grad(total, params)
        for p in params:
            p.requires_grad_(False)
        lam = m.anchor_lambda(250)
        k = 2 * lam / (cfg.n_heads * m.n_params_per_head)
        grads = m._gradients(torch.cat([c, r]), 13, k)
        for p, g, a in zip(params, grads, auto, strict=True):
            torch.testing.assert_close(g + k * p, a, rtol=1e-4, atol=1e-7)
        # the first layer's weight gradient assembled from row chunks is the same
        _, ctx = m._backward(torch.cat([c, r]), 13, k, torch.float32, want_loss=False)
        rows = params[0].shape[0]
        chunked = torch.cat(
            [m._layer0_grad(ctx, r0, min(rows, r0 + 5), k) for r0 in range(0, rows, 5)]
        )
        torch.testing.assert_close(chunked, grads[0], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("weight_decay", [0.0, 1.0])
def test_train_round_equals_autograd_adamw(weight_decay):
    """Full-batch rounds equal torch.optim.AdamW on the autograd loss (strong anchor, decay)."""
    probe = RewardEnsemble(D, _small())
    lam0 = 0.5 * probe.n_heads * probe.n_params_per_head  # anchor gradient = 1.0 * (w - w_init)
    cfg = _small(
        lr=1e-2,
        weight_decay=weight_decay,
        batch_size=40,
        max_steps=1,
        stats_pairs=0,
        anchor_lambda0=lam0,
        anchor_half_life=100.0,
    )
    m = RewardEnsemble(D, cfg)
    ref = [p.clone().requires_grad_(True) for p in m.parameters().values()]
    opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=weight_decay, eps=1e-8)
    shadow = RewardEnsemble(D, cfg)  # evaluates the loss at the reference parameters
    shadow._params = ref
    c, r = _pairs(40)
    for rnd in range(4):
        m.train_round(c, r, n_done=64 * rnd)
        total, _ = shadow.loss(c, r, n_done=64 * rnd)
        opt.zero_grad()
        total.backward()
        opt.step()
    diff = torch.cat(
        [
            (p - q.detach()).abs().flatten()
            for p, q in zip(m.parameters().values(), ref, strict=True)
        ]
    )
    # float rounding only; a wrong anchor or decay term moves most elements by ~lr = 1e-2
    assert float(diff.max()) < 1e-5
    assert float(diff.mean()) < 1e-7


def test_anchor_gradient_split_only_when_harmless():
    """Moderate lambda: the anchor rides on Adam's L2 term; huge lambda: it is computed exactly.

    A ReLU unit that is dead for every input gets no data gradient; its incoming weights sit at
    their anchor, so the exact anchor gradient is 0 and they must not move at all.
    """
    big = RewardEnsemble(2560)  # the reference shape with the default lambda_0 = 1
    assert big._fused_anchor_ok(2 * big.anchor_lambda(0) / (20 * big.n_params_per_head))
    c, r = _pairs(256)
    for lam0, fused in ((0.01, True), (1e5, False)):
        m = RewardEnsemble(D, _small(anchor_lambda0=lam0, hidden=(16,)))
        k = 2 * m.anchor_lambda(0) / (m.n_heads * m.n_params_per_head)
        assert m._fused_anchor_ok(k) is fused
        for t in (m.parameters(), m.anchors()):
            t["layer0.bias"][0, 0] = -1e3  # unit 0 of head 0 never fires
        for rnd in range(3):
            m.train_round(c, r, n_done=64 * rnd)
        row, anchor = m.parameters()["layer0.weight"][0], m.anchors()["layer0.weight"][0]
        assert not torch.equal(m.parameters()["layer0.weight"][1], m.anchors()["layer0.weight"][1])
        if fused:
            assert float((row - anchor).abs().max()) < 1e-9
        else:
            assert torch.equal(row, anchor)


def test_fused_adam_matches_formula(monkeypatch):
    """torch's fused Adam/AdamW kernels and the written-out formula train identically."""
    from auf_assets.core.ensemble import kernels

    c, r = _pairs(200)
    for wd in (0.0, 0.1):
        out = []
        for force in (False, True):
            monkeypatch.setattr(kernels, "_FORCE_REFERENCE_ADAM", force)
            m = RewardEnsemble(D, _small(lr=1e-2, weight_decay=wd))
            m.train_round(c, r, n_done=0)
            m.train_round(c, r, n_done=64)
            out.append(m.parameters())
        for name, p in out[0].items():
            torch.testing.assert_close(p, out[1][name], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- training


def test_training_lowers_loss_and_generalises():
    cfg = _small(lr=3e-3, batch_size=64, max_steps=40, anchor_lambda0=1.0)
    m = RewardEnsemble(D, cfg)
    c, r = _pairs(2560, seed=0)
    hc, hr = _pairs(1000, seed=99)
    acc0 = float(np.mean(m.predict(hc)[0] > m.predict(hr)[0]))
    bt0 = m.bt_loss(c, r)
    calls = []
    first = None
    for rnd in range(4):
        st = m.train_round(c, r, n_done=64 * rnd, progress=lambda s, n, lo: calls.append((s, n)))
        first = first or st
        assert st.steps == 40 and st.pairs_used == 2560
        assert st.loss_after < st.loss_before
        assert st.bt_after < st.bt_before
    assert calls[:2] == [(1, 40), (2, 40)] and len(calls) == 160
    assert m.rounds_trained == 4
    assert m.bt_loss(c, r) < 0.5 * bt0
    acc = float(np.mean(m.predict(hc)[0] > m.predict(hr)[0]))
    assert acc > 0.9 and acc > acc0 + 0.2
    assert first.anchor_lambda == 1.0


def test_partial_and_empty_rounds():
    m = RewardEnsemble(D, _small(batch_size=16, max_steps=10))
    c, r = _pairs(40)
    st = m.train_round(c, r, n_done=0)
    assert (st.steps, st.pairs_used) == (3, 40)  # 16 + 16 + 8
    st = m.train_round(c[:0], r[:0], n_done=0)
    assert st.steps == 0 and math.isnan(st.loss_before)
    c, r = _pairs(500)
    st = m.train_round(c.astype(np.float16), r.astype(np.float16), n_done=0)
    assert (st.steps, st.pairs_used) == (10, 160)
    with pytest.raises(ValueError):
        m.train_round(c, r[:-1], n_done=0)


def test_min_steps_passes_over_a_small_buffer_again():
    c, r = _pairs(40)
    # 40 pairs, batch 16: 3 steps; a floor of 7 makes 7 full steps over fresh orders.
    m = RewardEnsemble(D, _small(batch_size=16, max_steps=10, min_steps=7))
    seen = []
    st = m.train_round(c, r, n_done=0, progress=lambda s, n, lo: seen.append(n))
    assert (st.steps, st.pairs_used) == (7, 40) and seen == [7] * 7
    # A buffer below one batch: every step is the whole buffer.
    st = m.train_round(c[:5], r[:5], n_done=0)
    assert (st.steps, st.pairs_used) == (7, 5)
    # A buffer of min_steps batches or more: no change.
    m0 = RewardEnsemble(D, _small(batch_size=16, max_steps=10, min_steps=0))
    m7 = RewardEnsemble(D, _small(batch_size=16, max_steps=10, min_steps=7))
    c, r = _pairs(200)
    a, b = m0.train_round(c, r, n_done=0), m7.train_round(c, r, n_done=0)
    assert a.steps == b.steps == 10
    assert np.array_equal(m0.predict(c)[0], m7.predict(c)[0])
    # More steps on a small buffer learn more than one step does.
    c, r = _pairs(8)
    few = RewardEnsemble(D, _small(lr=1e-2, batch_size=64, min_steps=0))
    many = RewardEnsemble(D, _small(lr=1e-2, batch_size=64, min_steps=10))
    drop_few = few.train_round(c, r, n_done=0)
    drop_many = many.train_round(c, r, n_done=0)
    assert drop_few.steps == 1 and drop_many.steps == 10
    assert drop_many.loss_before - drop_many.loss_after > 3 * (
        drop_few.loss_before - drop_few.loss_after
    )
    # max_steps stays the cap.
    capped = RewardEnsemble(D, _small(batch_size=16, max_steps=2, min_steps=7))
    assert capped.train_round(c, r, n_done=0).steps == 2
    with pytest.raises(ValueError, match="min_steps"):
        EnsembleConfig(min_steps=-1)


def test_bf16_compute_trains_like_fp32():
    c, r = _pairs(1024, seed=5)
    out = {}
    for dt in ("float32", "bfloat16"):
        m = RewardEnsemble(D, _small(lr=3e-3, batch_size=64, max_steps=16, compute_dtype=dt))
        stats = [m.train_round(c, r, n_done=0) for _ in range(3)]
        out[dt] = (stats[0].bt_before, stats[-1].bt_after, m.predict(c)[0])
    assert out["bfloat16"][1] < 0.8 * out["bfloat16"][0]
    assert out["bfloat16"][1] == pytest.approx(out["float32"][1], abs=0.02)
    assert np.corrcoef(out["bfloat16"][2], out["float32"][2])[0, 1] > 0.99


def test_determinism_under_seed():
    c, r = _pairs(300)

    def run(seed):
        m = RewardEnsemble(D, _small(seed=seed))
        m.train_round(c, r, n_done=0)
        m.train_round(c, r, n_done=64)
        return m

    a, b, other = run(7), run(7), run(8)
    for name, p in a.parameters().items():
        assert torch.equal(p, b.parameters()[name]), name
    assert not torch.equal(a.parameters()["layer0.weight"], other.parameters()["layer0.weight"])


@pytest.mark.parametrize(
    "kw",
    [
        dict(anchor_half_life=math.inf, weight_decay=0.01),  # exact anchor term, AdamW decay
        dict(anchor_lambda0=0.01, compute_dtype="bfloat16"),  # anchor split over Adam's L2 term
    ],
)
def test_save_load_continues_identically(tmp_path, kw):
    c, r = _pairs(400)
    c2, r2 = _pairs(400, seed=11)
    cfg = _small(**kw)

    straight = RewardEnsemble(D, cfg)
    straight.train_round(c, r, n_done=0)
    straight.train_round(c2, r2, n_done=64)

    first = RewardEnsemble(D, cfg)
    first.train_round(c, r, n_done=0)
    path = tmp_path / "sub" / "ens.safetensors"
    first.save(path)
    loaded = RewardEnsemble.load(path)
    assert loaded.config == cfg and loaded.in_dim == D and loaded.rounds_trained == 1
    for name, p in first.anchors().items():
        assert torch.equal(p, loaded.anchors()[name])
    loaded.train_round(c2, r2, n_done=64)
    assert loaded.rounds_trained == 2
    for name, p in straight.parameters().items():
        assert torch.equal(p, loaded.parameters()[name]), name

    # a never-trained model round-trips too, and foreign files are refused
    fresh = RewardEnsemble(D, cfg)
    fresh.save(tmp_path / "fresh.safetensors")
    again = RewardEnsemble.load(tmp_path / "fresh.safetensors")
    assert torch.equal(again.parameters()["out.weight"], fresh.parameters()["out.weight"])
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError):
        RewardEnsemble.load(tmp_path / "foreign.safetensors")


# ------------------------------------------------------------------------- settings between rounds


def test_fixed_and_changeable_fields_cover_the_config():
    fixed, changeable = EnsembleConfig.FIXED_FIELDS, EnsembleConfig.CHANGEABLE_FIELDS
    assert set(fixed) == {"n_heads", "hidden", "seed"}
    assert not set(fixed) & set(changeable)
    assert sorted(fixed + changeable) == sorted(f.name for f in dataclasses.fields(EnsembleConfig))
    assert "FIXED_FIELDS" not in EnsembleConfig().to_dict()  # class constants, not settings


# One changed value per changeable setting, each of which changes what a round does.
_CHANGED = {
    "lr": 3e-2,
    "weight_decay": 0.5,
    "anchor_lambda0": 5e4,
    "anchor_half_life": 10.0,
    "center_coef": 0.7,
    "replay_capacity": 17,
    "batch_size": 5,
    "max_steps": 3,
    "min_steps": 5,
    "compute_dtype": "bfloat16",
    "stats_pairs": 0,
}


def _stats_tuple(st):
    """TrainStats without the wall time, NaN-safe for comparison."""
    d = st.to_dict()
    d.pop("seconds")
    return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


def test_changed_values_cover_every_changeable_field():
    assert set(_CHANGED) == set(EnsembleConfig.CHANGEABLE_FIELDS)


@pytest.mark.parametrize("name", EnsembleConfig.CHANGEABLE_FIELDS)
def test_load_with_config_applies_each_changeable_setting(tmp_path, name):
    """A checkpoint loaded with a changed setting trains exactly as a model built with it."""
    old = _small(lr=1e-3, max_steps=6, anchor_half_life=1000.0, anchor_lambda0=2.0)
    new = dataclasses.replace(old, **{name: _CHANGED[name]})
    assert new != old
    c, r = _pairs(120)
    if name == "min_steps":  # a floor only matters on a buffer below min_steps batches
        c, r = c[:20], r[:20]
    path = tmp_path / "round0.safetensors"
    RewardEnsemble(D, old).save(path)  # an untrained checkpoint: no optimizer state yet

    def run(model):
        st = model.train_round(c, r, n_done=50)
        return st, model.parameters()

    loaded = RewardEnsemble.load(path, new)
    assert loaded.config == new
    st_loaded, p_loaded = run(loaded)
    st_fresh, p_fresh = run(RewardEnsemble(D, new))  # never went through a file
    st_stale, p_stale = run(RewardEnsemble.load(path))  # the stored settings
    assert _stats_tuple(st_loaded) == _stats_tuple(st_fresh)
    for key, p in p_fresh.items():
        assert torch.equal(p, p_loaded[key]), key

    # and the setting matters, so the comparison above could have failed
    if name == "replay_capacity":  # read by the caller's buffer, not by a round
        assert loaded.config.replay_capacity == 17
    elif name == "stats_pairs":
        assert math.isnan(st_loaded.loss_before) and not math.isnan(st_stale.loss_before)
    else:
        assert any(not torch.equal(p, p_stale[k]) for k, p in p_loaded.items())
    if name in ("batch_size", "max_steps"):
        expected = (3, 48) if name == "max_steps" else (6, 30)  # max_steps * batch_size pairs
        assert (st_loaded.steps, st_loaded.pairs_used) == expected
        assert (st_stale.steps, st_stale.pairs_used) == (6, 96)

    # the next checkpoint carries the new settings
    loaded.save(tmp_path / "round1.safetensors")
    assert RewardEnsemble.load(tmp_path / "round1.safetensors").config == new


def test_load_with_new_lr_and_steps_continues_training_with_them(tmp_path):
    """After a trained round (Adam state in the file), a new lr and step count really apply."""
    old = _small(lr=1e-3, batch_size=16, max_steps=8, stats_pairs=0)
    c, r = _pairs(400)
    c2, r2 = _pairs(400, seed=11)
    first = RewardEnsemble(D, old)
    first.train_round(c, r, n_done=0)
    path = tmp_path / "ens.safetensors"
    first.save(path)
    start = {k: p.clone() for k, p in first.parameters().items()}

    def moved(model):
        st = model.train_round(c2, r2, n_done=64)
        delta = torch.cat([(p - start[k]).flatten() for k, p in model.parameters().items()])
        return st, delta

    st_same, d_same = moved(RewardEnsemble.load(path, old))
    st_plain, d_plain = moved(RewardEnsemble.load(path))
    st_fast, d_fast = moved(RewardEnsemble.load(path, dataclasses.replace(old, lr=1e-2)))
    st_short, _ = moved(RewardEnsemble.load(path, dataclasses.replace(old, max_steps=3)))

    assert torch.equal(d_same, d_plain)  # the stored settings, given or not, train the same
    assert st_same.steps == st_fast.steps == 8 and st_same.pairs_used == 128
    assert (st_short.steps, st_short.pairs_used) == (3, 48)
    # Adam's steps are about lr in size: ten times the lr moves the parameters ~ten times as far
    ratio = float(d_fast.abs().mean() / d_same.abs().mean())
    assert 5.0 < ratio < 15.0

    # the same as changing the setting of a model that was never saved
    straight = RewardEnsemble(D, old)
    straight.train_round(c, r, n_done=0)
    straight.config = dataclasses.replace(old, lr=1e-2)
    straight.train_round(c2, r2, n_done=64)
    got = torch.cat([(p - start[k]).flatten() for k, p in straight.parameters().items()])
    assert torch.equal(got, d_fast)


@pytest.mark.parametrize(
    ("name", "value"), [("n_heads", 4), ("hidden", (16, 8)), ("hidden", (16,)), ("seed", 4)]
)
def test_load_refuses_a_changed_fixed_setting(tmp_path, name, value):
    cfg = _small()
    path = tmp_path / "ens.safetensors"
    RewardEnsemble(D, cfg).save(path)
    requested = dataclasses.replace(cfg, **{name: value}, lr=1e-2)  # lr alone would be fine
    with pytest.raises(ValueError, match=name) as info:
        RewardEnsemble.load(path, requested)
    msg = str(info.value)
    assert f"stored {getattr(cfg, name)!r}" in msg and f"requested {value!r}" in msg
    assert "new home" in msg and "Keep the stored" in msg
    assert "lr:" not in msg and "requested 0.01" not in msg  # changeable ones are not named


def test_load_names_every_changed_fixed_setting(tmp_path):
    cfg = _small()
    path = tmp_path / "ens.safetensors"
    RewardEnsemble(D, cfg).save(path)
    with pytest.raises(ValueError) as info:
        RewardEnsemble.load(path, dataclasses.replace(cfg, n_heads=3, hidden=(4, 4), seed=9))
    msg = str(info.value)
    for part in ("n_heads: stored 6, requested 3", "hidden: stored (16, 16), requested (4, 4)",
                 "seed: stored 3, requested 9"):  # fmt: skip
        assert part in msg
    with pytest.raises(TypeError):
        RewardEnsemble.load(path, cfg.to_dict())
    # equal fixed settings given in another form (a list for hidden) are accepted
    again = RewardEnsemble.load(path, EnsembleConfig(**{**cfg.to_dict(), "hidden": [16, 16]}))
    assert again.config == cfg


# ------------------------------------------------------------------ plain-GEMM / formula fallbacks


def _train_both_ways(monkeypatch, onednn: bool, fused_adam: bool, kw: dict):
    """Train a few rounds with the GEMM route and the Adam kernel forced as given."""
    from auf_assets.core.ensemble import heads, kernels, reward_ensemble

    def refuse(*_a, **_k):
        raise AssertionError("a disabled fast path was used")

    with monkeypatch.context() as mp:
        mp.setattr(kernels, "_ONEDNN_OK", onednn)
        mp.setattr(kernels, "_FUSED_ADAM_OK", fused_adam)
        if not onednn:
            for module in (kernels, heads, reward_ensemble):  # every caller of the oneDNN route
                mp.setattr(module, "_onednn_linear", refuse)
        if not fused_adam:
            mp.setattr(torch, "_fused_adam_", refuse)
            mp.setattr(torch, "_fused_adamw_", refuse)
        m = RewardEnsemble(D, _small(lr=1e-2, **kw))
        assert m.gemm_backend == ("onednn" if onednn else "blas")
        c, r = _pairs(300)
        stats = [m.train_round(c, r, n_done=64 * rnd) for rnd in range(3)]
        hc, _ = _pairs(200, seed=42)
        mu, sigma = m.predict(hc)
        grads = m._gradients(torch.from_numpy(np.concatenate([c[:20], r[:20]])), 20, 1e-3)
    return m.parameters(), stats, mu, sigma, grads


@pytest.mark.parametrize(
    "kw",
    [
        dict(),  # anchor folded into Adam's L2 term
        dict(weight_decay=0.1, anchor_lambda0=1e5),  # AdamW decay, exact anchor term
    ],
)
def test_fallbacks_match_fast_paths(monkeypatch, kw):
    """Without oneDNN (plain torch GEMMs) and without torch's fused Adam (the written-out
    formula) training gives the fast paths' results to float rounding."""
    from auf_assets.core.ensemble import kernels

    if not (kernels.onednn_available() and kernels._fused_adam_ok()):
        pytest.skip("the fast paths are not available here, so there is nothing to compare")
    fast = _train_both_ways(monkeypatch, True, True, kw)
    for onednn, fused in ((False, True), (True, False), (False, False)):
        slow = _train_both_ways(monkeypatch, onednn, fused, kw)
        for name, p in fast[0].items():
            torch.testing.assert_close(slow[0][name], p, rtol=1e-4, atol=1e-5, msg=name)
        for a, b in zip(fast[1], slow[1], strict=True):
            assert a.steps == b.steps
            assert a.loss_after == pytest.approx(b.loss_after, rel=1e-4)
            assert a.bt_after == pytest.approx(b.bt_after, rel=1e-4)
        np.testing.assert_allclose(slow[2], fast[2], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(slow[3], fast[3], rtol=1e-3, atol=1e-5)
        for g_fast, g_slow in zip(fast[4], slow[4], strict=True):
            torch.testing.assert_close(g_slow, g_fast, rtol=1e-4, atol=1e-7)


def test_blas_fallback_is_deterministic(monkeypatch):
    first = _train_both_ways(monkeypatch, False, False, {})
    second = _train_both_ways(monkeypatch, False, False, {})
    for name, p in first[0].items():
        assert torch.equal(p, second[0][name]), name


def test_fast_path_probes_fall_back_on_failure(monkeypatch):
    """The one-time checks answer "not usable" when the kernels are missing, fail or are wrong,
    and new models then take the plain route."""
    from auf_assets.core.ensemble import kernels

    def broken(*_a, **_k):
        raise RuntimeError("no kernel here")

    with monkeypatch.context() as mp:
        mp.setattr(kernels, "_ONEDNN_OK", None)
        mp.setattr(torch.backends.mkldnn, "is_available", lambda: False)
        assert kernels.onednn_available() is False
        assert kernels._ONEDNN_OK is False  # cached
        assert RewardEnsemble(D, _small()).gemm_backend == "blas"
    with monkeypatch.context() as mp:
        mp.setattr(kernels, "_ONEDNN_OK", None)
        mp.setattr(kernels, "_onednn_linear", broken)
        assert kernels.onednn_available() is False
    with monkeypatch.context() as mp:
        mp.setattr(kernels, "_ONEDNN_OK", None)
        # a kernel that runs but computes something else (no ReLU) is refused too
        mp.setattr(kernels, "_onednn_linear", lambda x, w, b, attr: torch.addmm(b, x, w.T))
        assert kernels.onednn_available() is False
    with monkeypatch.context() as mp:
        mp.setattr(kernels, "_FUSED_ADAM_OK", None)
        mp.setattr(torch, "_fused_adam_", broken)
        assert kernels._fused_adam_ok() is False
    with monkeypatch.context() as mp:
        mp.setattr(kernels, "_FUSED_ADAM_OK", None)
        mp.setattr(torch, "_fused_adamw_", lambda *a, **k: None)  # does nothing: wrong result
        assert kernels._fused_adam_ok() is False
    # with oneDNN switched off in torch the model takes the plain route even where it works
    with monkeypatch.context() as mp:
        mp.setattr(torch.backends.mkldnn, "enabled", False)
        assert RewardEnsemble(D, _small()).gemm_backend == "blas"


# ---------------------------------------------------------------------------------------- config


def test_config_roundtrip_and_validation():
    cfg = EnsembleConfig(anchor_half_life=math.inf, hidden=[32, 8])
    assert cfg.hidden == (32, 8)
    d = cfg.to_dict()
    assert d["anchor_half_life"] is None
    assert EnsembleConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert EnsembleConfig.from_dict(EnsembleConfig().to_dict()) == EnsembleConfig()
    bad = [
        dict(n_heads=0),
        dict(n_heads=2.5),
        dict(hidden=()),
        dict(hidden=(128, 0)),
        dict(lr=0.0),
        dict(lr=float("nan")),
        dict(weight_decay=-1.0),
        dict(anchor_lambda0=-0.1),
        dict(anchor_half_life=0.0),
        dict(center_coef=-1.0),
        dict(replay_capacity=0),
        dict(batch_size=0),
        dict(max_steps=True),
        dict(seed=-1),
        dict(compute_dtype="float16"),
        dict(stats_pairs=-1),
    ]
    for kwargs in bad:
        with pytest.raises(ValueError):
            EnsembleConfig(**kwargs)
    with pytest.raises(ValueError, match="unknown"):
        EnsembleConfig.from_dict({"n_head": 3})
    with pytest.raises(ValueError):
        RewardEnsemble(0)
