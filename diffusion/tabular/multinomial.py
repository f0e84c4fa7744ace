"""Multinomial diffusion for a table's categorical columns beside Gaussian diffusion for its
numbers, one MLP predicting both (TabDDPM: Kotelnikov et al. 2023, after Hoogeboom et al.
2021, "Argmax flows and multinomial diffusion").

A row is split by a `Layout` taken from a one-hot TableEncoder (diffusion/tabular/
encoding.py): its numeric dimensions (quantile-normal values and missing-indicators) and, per
categorical column i, a category index in 0..K_i-1.  Over discrete times t = 1..T with one
cosine schedule alpha_bar_t (Nichol & Dhariwal 2021; alpha_bar_0 = 1):

- numbers: q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), the net predicts eps;
- a category: q(x_t | x_0) = Cat(alpha_bar_t x_0 + (1 - alpha_bar_t) / K), x_0 one-hot, from
  the uniform-transition steps q(x_t | x_{t-1}) = Cat((1 - beta_t) x_{t-1} + beta_t / K);
  between any s < t the same holds with alpha_{t|s} = alpha_bar_t / alpha_bar_s, so the
  posterior is, per category,
      q(x_s | x_t, x_0) ∝ [alpha_{t|s} x_t + (1 - alpha_{t|s}) / K] ⊙ [alpha_bar_s x_0 + (1 - alpha_bar_s) / K],
  and p(x_s | x_t) is the same with x_0 replaced by the net's softmax prediction.

The net sees [numbers at t, each category at t as a +-1 one-hot] (the encoder's layout, width
D) and the time t (its noise-level embedding, on DDPM's 0..1000 scale) and returns D values:
eps for the numeric dimensions, logits of x_0 for each categorical block.  The loss per row
is the numbers' mean squared eps error plus, per categorical column, KL(q(x_{t-1} | x_t, x_0)
|| p(x_{t-1} | x_t)) averaged over the columns (at t = 1 this is -log p(x_0 | x_1), the
decoder term); t is uniform over 1..T.  Sampling (`sample`) runs ancestral steps over a
stride of the T times (all T by default): DDPM's Gaussian posterior for the numbers, the
posterior above for the categories (at the last step, s = 0, a draw from p(x_0 | x_1)) and
the Gaussian posterior mean at the last step.  The output is in the encoder's layout (+-1 one-hot), so
TableEncoder.inverse_transform decodes it.

Nothing here imports orchestration; the training loop is `train` (Adam, warm-up, EMA).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..data_errors import DataError

T_DEFAULT = 1000
_EPS = 1e-30   # floor inside logarithms of probabilities


def cosine_alpha_bar(T: int, s: float = 0.008) -> torch.Tensor:
    """(T + 1,) float64 alpha_bar_t for t = 0..T of the cosine schedule, alpha_bar_0 = 1 and
    each step's beta_t = 1 - alpha_bar_t / alpha_bar_{t-1} clipped to at most 0.999."""
    if T < 1:
        raise ValueError(f"T={T}; accepted: at least 1")
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


@dataclass(frozen=True)
class Layout:
    """Where a row's parts lie in the encoder's one-hot layout: `numeric` (list of dimension
    indices, Gaussian), `blocks` (one (start, K) per categorical column, in schema order)."""
    numeric: tuple[int, ...]
    blocks: tuple[tuple[int, int], ...]
    dim: int

    @classmethod
    def from_encoder(cls, encoder) -> Layout:
        """From a fitted or unfitted TableEncoder with categorical="onehot"; DataError for
        analog bits (their dimensions are not one per category)."""
        if encoder.categorical != "onehot":
            raise DataError(f"multinomial diffusion reads a one-hot layout; the encoder's is "
                            f"{encoder.categorical!r}")
        numeric, blocks = [], []
        for c in encoder.schema.columns:
            s = encoder.column_slices[c.name]
            if c.type == "categorical":
                blocks.append((s.start, s.stop - s.start))
            else:
                numeric.extend(range(s.start, s.stop))
        return cls(tuple(numeric), tuple(blocks), encoder.dim)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(N, D) vectors -> (numbers (N, len(numeric)), [category index (N,) per block])."""
        num = x[:, list(self.numeric)]
        cats = [x[:, a:a + k].argmax(1) for a, k in self.blocks]
        return num, cats

    def join(self, num: torch.Tensor, cats: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of split: (N, D) with each block a +-1 one-hot."""
        out = torch.empty(num.shape[0], self.dim, dtype=num.dtype, device=num.device)
        out[:, list(self.numeric)] = num
        for (a, k), idx in zip(self.blocks, cats):
            out[:, a:a + k] = F.one_hot(idx, k).to(num.dtype) * 2 - 1
        return out


# --- the categorical process ------------------------------------------------------------------

def marginal(x0: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0): x0 (N, K) probabilities (one-hot, or a prediction), alpha_bar (N,) ->
    (N, K) alpha_bar x0 + (1 - alpha_bar) / K."""
    k = x0.shape[1]
    a = alpha_bar.to(x0.dtype)[:, None]
    return a * x0 + (1 - a) / k


def posterior(xt: torch.Tensor, x0: torch.Tensor, alpha_bar_t: torch.Tensor,
              alpha_bar_s: torch.Tensor) -> torch.Tensor:
    """q(x_s | x_t, x_0) for s < t: xt (N, K) one-hot, x0 (N, K) probabilities, alpha_bar_t
    and alpha_bar_s (N,) -> (N, K) probabilities, each row summing to 1 (module docstring)."""
    k = xt.shape[1]
    a_ts = (alpha_bar_t / alpha_bar_s).to(xt.dtype)[:, None]
    likelihood = a_ts * xt + (1 - a_ts) / k          # q(x_t | x_s) as a function of x_s
    theta = likelihood * marginal(x0, alpha_bar_s)
    return theta / theta.sum(1, keepdim=True)


def sample_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, K) probabilities -> (N,) int64 indices drawn from each row (Gumbel-max)."""
    u = torch.rand(probs.shape, generator=generator, dtype=probs.dtype, device=probs.device)
    gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
    return (probs.clamp_min(_EPS).log() + gumbel).argmax(1)


def categorical_kl(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(N, K) probabilities -> (N,) KL(q || p), 0 log 0 = 0."""
    return (q * (q.clamp_min(_EPS).log() - p.clamp_min(_EPS).log())).sum(1)


# --- the model's two parts together ------------------------------------------------------------

class MultinomialDiffusion:
    """TabDDPM's joint process over a `Layout` with T steps of the cosine schedule.

    `loss(net, x0)` -> scalar training loss; `sample(net, n, steps, generator)` -> (n, D)
    vectors in the encoder's layout.  `net(x (N, D), c_noise (N,))` -> (N, D): eps for the
    numeric dimensions, x_0 logits for each categorical block (module docstring)."""

    def __init__(self, layout: Layout, T: int = T_DEFAULT):
        self.layout = layout
        self.T = T
        self.alpha_bar = cosine_alpha_bar(T)

    def _c_noise(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(torch.float32) * (1000.0 / self.T)

    def _ab(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.alpha_bar.to(like.device)[t].to(like.dtype)

    def noised(self, num0, cats0, t, generator=None):
        """x_t from x_0 at times t (N,) int64 in 1..T: (numbers at t, eps, category indices
        at t)."""
        ab = self._ab(t, num0)
        eps = torch.randn(num0.shape, generator=generator, dtype=num0.dtype, device=num0.device)
        num_t = ab.sqrt()[:, None] * num0 + (1 - ab).sqrt()[:, None] * eps
        cats_t = []
        for (_, k), idx in zip(self.layout.blocks, cats0):
            probs = marginal(F.one_hot(idx, k).to(num0.dtype), ab)
            cats_t.append(sample_categorical(probs, generator))
        return num_t, eps, cats_t

    def predict(self, net, num_t, cats_t, t):
        """The net's (eps prediction (N, numbers), [x_0 probabilities (N, K) per block])."""
        out = net(self.layout.join(num_t, cats_t), self._c_noise(t))
        eps = out[:, list(self.layout.numeric)]
        probs = [torch.softmax(out[:, a:a + k], 1) for a, k in self.layout.blocks]
        return eps, probs

    def loss_terms(self, net, x0: torch.Tensor, t: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row (Gaussian MSE (N,), categorical KL averaged over columns (N,)) at times t
        (N,) in 1..T (default: uniform draws).  x0: (N, D) encoder vectors."""
        num0, cats0 = self.layout.split(x0)
        n = x0.shape[0]
        if t is None:
            t = torch.randint(1, self.T + 1, (n,), generator=generator, device=x0.device)
        num_t, eps, cats_t = self.noised(num0, cats0, t, generator)
        eps_hat, probs = self.predict(net, num_t, cats_t, t)
        mse = ((eps_hat - eps) ** 2).mean(1) if num0.shape[1] else torch.zeros(n, device=x0.device)
        kl = torch.zeros(n, dtype=x0.dtype, device=x0.device)
        if self.layout.blocks:
            ab_t, ab_s = self._ab(t, kl), self._ab(t - 1, kl)
            for (_, k), idx0, idxt, p0 in zip(self.layout.blocks, cats0, cats_t, probs):
                xt = F.one_hot(idxt, k).to(x0.dtype)
                true = posterior(xt, F.one_hot(idx0, k).to(x0.dtype), ab_t, ab_s)
                model = posterior(xt, p0, ab_t, ab_s)
                kl = kl + categorical_kl(true, model)
            kl = kl / len(self.layout.blocks)
        return mse, kl

    def loss(self, net, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The scalar training loss: mean over rows of MSE + categorical KL."""
        mse, kl = self.loss_terms(net, x0, generator=generator)
        return (mse + kl).mean()

    @torch.no_grad()
    def sample(self, net, n: int, steps: int | None = None,
               generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """(n, D) float32 rows in the encoder's layout, by `steps` ancestral steps (default T)
        over evenly strided times T = t_0 > ... > t_steps = 0 (the net is called `steps`
        times).  ValueError for steps outside 1..T."""
        steps = self.T if steps is None else steps
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps={steps}; accepted: 1..{self.T}")
        device = device or next(net.parameters()).device
        times = np.unique(np.round(np.linspace(self.T, 0, steps + 1)).astype(np.int64))[::-1]
        num = torch.randn(n, len(self.layout.numeric), generator=generator, device=device)
        cats = [torch.randint(0, k, (n,), generator=generator, device=device)
                for _, k in self.layout.blocks]
        ab_all = self.alpha_bar.to(device)
        for t_now, s_now in zip(times[:-1], times[1:]):
            t = torch.full((n,), int(t_now), dtype=torch.int64, device=device)
            eps_hat, probs = self.predict(net, num, cats, t)
            ab_t, ab_s = ab_all[t_now], ab_all[s_now]
            # numbers: x0 from eps, then DDPM's posterior q(x_s | x_t, x0) (mean, variance)
            x0 = ((num.double() - (1 - ab_t).sqrt() * eps_hat.double()) / ab_t.sqrt()).clamp(-10, 10)
            a_ts = ab_t / ab_s
            mean = (ab_s.sqrt() * (1 - a_ts) * x0 + a_ts.sqrt() * (1 - ab_s) * num.double()) / (1 - ab_t)
            var = (1 - ab_s) / (1 - ab_t) * (1 - a_ts)
            noise = torch.randn(num.shape, generator=generator, device=device, dtype=torch.float64)
            num = (mean + var.sqrt() * noise if s_now > 0 else mean).to(torch.float32)
            new = []
            for (_, k), idx, p0 in zip(self.layout.blocks, cats, probs):
                xt = F.one_hot(idx, k).to(torch.float64)
                abt = torch.full((n,), float(ab_t), dtype=torch.float64, device=device)
                abs_ = torch.full((n,), float(ab_s), dtype=torch.float64, device=device)
                new.append(sample_categorical(posterior(xt, p0.double(), abt, abs_), generator))
            cats = new
        return self.layout.join(num, cats)


def train(process: MultinomialDiffusion, net, x: torch.Tensor, *, steps: int, batch_size: int,
          lr: float = 2e-3, warmup: int = 100, ema_decay: float = 0.999, seed: int = 0,
          grad_clip: float = 1.0, on_log=None):
    """Train `net` on rows x (N, D) (encoder vectors) for `steps` Adam steps of `batch_size`
    rows drawn with replacement; linear warm-up over `warmup` steps; returns the EMA copy of
    the net (decay `ema_decay`, warm-started as (1 + k) / (10 + k)) in eval mode.
    `on_log(step, {"loss": float})` is called every steps // 5 steps when given."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    net.train()
    for k in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (k + 1) / max(1, warmup))
        batch = x[torch.randint(0, len(x), (batch_size,), generator=g)]
        loss = process.loss(net, batch, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
        decay = min(ema_decay, (1 + k) / (10 + k))
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.lerp_(pn, 1 - decay)
        if on_log is not None and (k + 1) % max(1, steps // 5) == 0:
            on_log(k + 1, {"loss": float(loss)})
    return ema
