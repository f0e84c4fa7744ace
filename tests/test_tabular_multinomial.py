"""Multinomial diffusion for categorical columns (diffusion/tabular/multinomial.py): the
forward process, its posterior, the loss's zero at a perfect prediction, and a short training
run that learns a table's category shares and a number's spread."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from diffusion.nets import MLP
from diffusion.tabular.encoding import TableEncoder
from diffusion.tabular.multinomial import (Layout, MultinomialDiffusion, categorical_kl,
                                           cosine_alpha_bar, marginal, posterior,
                                           sample_categorical, train)
from diffusion.tabular.schema import TableSchema

K = 4


def _step_matrix(beta: float, k: int) -> np.ndarray:
    """Q_t[i, j] = q(x_t = j | x_{t-1} = i) of the uniform-transition step."""
    return (1 - beta) * np.eye(k) + beta / k


def test_schedule_starts_at_one_and_decreases():
    ab = cosine_alpha_bar(100).numpy()
    assert ab[0] == 1.0 and np.all(np.diff(ab) < 0) and 0 < ab[-1] < 1e-3


def test_forward_marginal_equals_the_product_of_the_steps():
    T = 20
    ab = cosine_alpha_bar(T).numpy()
    x0 = np.eye(K)[[2]]
    q = x0
    for t in range(1, T + 1):
        q = q @ _step_matrix(1 - ab[t] / ab[t - 1], K)
        closed = marginal(torch.tensor(x0), torch.tensor([ab[t]])).numpy()
        np.testing.assert_allclose(q, closed, rtol=0, atol=1e-12)


def test_posterior_is_bayes_rule_and_sums_to_one():
    T = 30
    ab = cosine_alpha_bar(T)
    rng = np.random.default_rng(0)
    for s, t in [(0, 1), (4, 5), (3, 17), (29, 30)]:
        x0 = torch.tensor(rng.dirichlet(np.ones(K))[None])  # a prediction, not only one-hot
        for j in range(K):
            xt = torch.eye(K, dtype=torch.float64)[[j]]
            got = posterior(xt, x0, ab[[t]], ab[[s]]).numpy()[0]
            # brute force: q(x_s = i | x_0) q(x_t = j | x_s = i), normalised over i
            prior = marginal(x0, ab[[s]]).numpy()[0]
            a_ts = float(ab[t] / ab[s])
            like = a_ts * (np.arange(K) == j) + (1 - a_ts) / K
            want = prior * like / (prior * like).sum()
            np.testing.assert_allclose(got, want, rtol=1e-12)
            assert got.sum() == pytest.approx(1.0, abs=1e-12)


def test_posterior_at_t1_is_x0():
    ab = cosine_alpha_bar(10)
    x0 = torch.eye(K, dtype=torch.float64)[[1]]
    for j in range(K):
        xt = torch.eye(K, dtype=torch.float64)[[j]]
        np.testing.assert_allclose(posterior(xt, x0, ab[[1]], ab[[0]]).numpy(), x0.numpy(), atol=1e-15)


def test_sample_categorical_frequencies():
    probs = torch.tensor([[0.6, 0.3, 0.1, 0.0]], dtype=torch.float64).repeat(40_000, 1)
    idx = sample_categorical(probs, torch.Generator().manual_seed(0))
    shares = np.bincount(idx.numpy(), minlength=K) / len(idx)
    # 5 standard errors of a share near 0.5 at n = 40,000: 5 * 0.5 / 200 = 0.0125
    np.testing.assert_allclose(shares, [0.6, 0.3, 0.1, 0.0], atol=0.0125)
    assert shares[3] == 0.0


def _table(n=400, seed=0):
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], n, p=[0.7, 0.2, 0.1])
    size = np.where(colour == "red", rng.normal(0, 1, n), rng.normal(3, 0.5, n))
    return pd.DataFrame({"colour": colour, "size": size.round(3), "flag": rng.choice(["no", "yes"], n)})


def _encoder(df):
    schema = TableSchema.from_dict({"columns": [
        {"name": "colour", "type": "categorical", "dtype": "object", "nullable": False,
         "categories": ["blue", "green", "red"], "ordered": False},
        {"name": "size", "type": "numerical", "dtype": "float64", "nullable": False},
        {"name": "flag", "type": "categorical", "dtype": "object", "nullable": False,
         "categories": ["no", "yes"], "ordered": False}],
        "target": None, "id": None})
    return TableEncoder(schema, "onehot").fit(df)


def test_layout_split_join_roundtrip():
    df = _table(50)
    enc = _encoder(df)
    x = torch.from_numpy(enc.transform(df))
    layout = Layout.from_encoder(enc)
    assert layout.blocks == ((0, 3), (4, 2)) and layout.numeric == (3,)
    num, cats = layout.split(x)
    assert torch.equal(layout.join(num, cats), x)


def test_layout_refuses_analog_bits():
    df = _table(20)
    schema = _encoder(df).schema
    with pytest.raises(Exception, match="one-hot layout"):
        Layout.from_encoder(TableEncoder(schema, "analog_bits"))


class _Oracle(torch.nn.Module):
    """A 'net' that knows x_0: eps is the true noise (set before the call), logits put all
    mass on the true categories."""

    def __init__(self, layout, x0):
        super().__init__()
        self.layout, self.x0, self.eps = layout, x0, None
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, c_noise):
        out = torch.zeros_like(x)
        out[:, list(self.layout.numeric)] = self.eps
        for a, k in self.layout.blocks:
            out[:, a:a + k] = (self.x0[:, a:a + k] > 0).to(x.dtype) * 80.0 - 40.0
        return out


def test_a_perfect_prediction_has_zero_loss():
    df = _table(64)
    enc = _encoder(df)
    x0 = torch.from_numpy(enc.transform(df))
    process = MultinomialDiffusion(Layout.from_encoder(enc), T=50)
    oracle = _Oracle(process.layout, x0)
    t = torch.arange(64) % 50 + 1   # every time, t = 1 (the decoder term) included
    g = torch.Generator().manual_seed(0)
    # the same generator state reproduces the noise the loss draws: read eps first
    state = g.get_state()
    num0, cats0 = process.layout.split(x0)
    _, oracle.eps, _ = process.noised(num0, cats0, t, g)
    g.set_state(state)
    mse, kl = process.loss_terms(oracle, x0, t=t, generator=g)
    assert float(mse.abs().max()) == 0.0
    assert float(kl.abs().max()) < 1e-12


def test_kl_is_positive_for_a_wrong_prediction():
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    p = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    assert float(categorical_kl(q, p)) == pytest.approx(np.log(2))


def test_training_learns_shares_and_the_conditional_number():
    torch.manual_seed(0)
    df = _table(2000)
    enc = _encoder(df)
    x = torch.from_numpy(enc.transform(df))
    process = MultinomialDiffusion(Layout.from_encoder(enc), T=100)
    net = MLP(dim=enc.dim, hidden=64, depth=2)
    ema = train(process, net, x, steps=600, batch_size=128, lr=3e-3, warmup=20, ema_decay=0.99)
    rows = enc.inverse_transform(process.sample(ema, 2000, generator=torch.Generator().manual_seed(1)).numpy())
    shares = rows["colour"].value_counts(normalize=True)
    # a short run: the shares within 0.05 (sampling noise alone is about 0.01 at n = 2,000)
    assert shares["red"] == pytest.approx(0.7, abs=0.05)
    assert shares.get("blue", 0.0) == pytest.approx(0.1, abs=0.05)
    # the number follows its category: means 0 (red) and 3 (others) within 0.4
    assert rows.loc[rows.colour == "red", "size"].mean() == pytest.approx(0.0, abs=0.4)
    assert rows.loc[rows.colour != "red", "size"].mean() == pytest.approx(3.0, abs=0.4)
    assert list(rows.columns) == ["colour", "size", "flag"] and rows.dtypes["size"] == np.float64


def test_sample_refuses_bad_steps():
    df = _table(20)
    enc = _encoder(df)
    process = MultinomialDiffusion(Layout.from_encoder(enc), T=10)
    with pytest.raises(ValueError, match="1..10"):
        process.sample(MLP(dim=enc.dim, hidden=8, depth=1), 4, steps=11)
