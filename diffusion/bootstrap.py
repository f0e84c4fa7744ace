"""Bootstrap confidence intervals for FID and KID, and for the paired difference of two models.

FID and KID are computed from two finite samples, the generated features and the real (test)
features, so each is a random number: another draw of the same model's samples, or another
test split of the same size, gives another value.  The bootstrap estimates that spread by
resampling both sets (rows with replacement, from a seeded generator) and recomputing the
metric on each replicate (Efron & Tibshirani 1993, "An Introduction to the Bootstrap").

Which interval.  The percentile interval of the replicates, recentred on the estimate:
[t + q_lo - q_50, t + q_hi - q_50], where t is the statistic on the full sets and q_p the
p-quantile of the replicates (q_lo, q_hi at (1 -/+ level) / 2).  It is an interval of the
ESTIMATOR AT THIS n, i.e. of E[FID_n], not of the population FID: FID's plug-in bias
(roughly Tr(C)(1/n_r + 1/n_g) plus a covariance term growing with d^2 / n, see
diffusion/metrics.py "Why a floor") is not removed.  Why recentred: a resample holds about
63 % distinct rows, so the replicates carry that bias about twice; with 64-D features and
359 real rows the plain percentile interval sat entirely above the estimate (estimate 4.2,
interval [7.5, 8.8]) and covered E[FID_n] in 0 of 100 trials, the recentred one in 98.
Why not the basic (reverse) interval 2t - q: it targets the population FID by assuming the
bootstrap bias equals the estimator's, and gave negative lower ends there.  Measured on
Gaussian features (tests/test_bootstrap.py): where the bias is small next to the noise
(FID well above the floor, d << n) the interval covers the population FID at about its
level; with d comparable to n (the digits evaluation: d = 64, 359 test rows) the bootstrap
spread overstates the estimator's (0.37 against 0.26), so the interval is conservative:
wider than needed, which errs toward `tie` in promotions.  Compare two models with
`paired_difference`, where the bias terms of the two largely cancel.  Near FID = 0 both
statistics are degenerate, whose naive bootstrap is not first-order correct; there the
intervals are a guide to the noise, not an exact coverage statement, and a FID interval's
lower end is raised to 0 (recentring a wide interval can move it below; on the quick digits
teacher iPNDM at 16 NFE gave FID 0.457 with [-0.043, 1.075] before).

KID's interval is of the unbiased MMD^2 estimate on the whole sets (every real x generated
pair), the quantity the subset mean of metrics.kid_from_features estimates too (the same
expectation, less spread), so the interval describes the table's KID up to the subsets' own
extra noise.

Cost.  A replicate never copies rows: it is a vector of counts w (how often each row was
drawn), so a weighted mean and covariance give FID (n d^2 + d^3 per replicate) and
quadratic forms w^T K w of kernel matrices computed once give KID (n^2 per replicate), or,
when KID's cubic kernel has under a quarter as many explicit features as there are rows
(C(d + 3, 3): 969 for a table's 16-D features), |w phi|^2 of those features (n C(d + 3, 3) per replicate: with
10,788 rows of 16-D features 200 replicates took 45 s through the n^2 kernel matrices, 0.9 GB
each, on one thread).
Measured on one thread of a loaded 2-core machine (`replicate_seconds`;
benchmarks/promotion_noise.py prints it): with 64-D features and n = 1000 a FID replicate
costs about 5 ms and a KID replicate about 2.5 ms, so B = 200 adds about 1.5 s per evaluated
setting (the evaluate section's default) and B = 1000 about 15 s for the one paired
comparison of a promotion (two models).  With 2048-D (Inception-sized) features a FID
replicate costs about 20 s there (two 2048 x 2048 eigendecompositions per replicate): on a
CPU that is not affordable per setting; it needs a GPU's batched eigh or fewer replicates.

Pairing.  `paired_difference` compares two models on one real set: each replicate draws ONE
real resample used for both models, so the noise of the shared test split cancels in the
difference.  When the two generated sets have the same size (same n and seed: sample i of
each model starts from the same noise), the pairs (i-th sample of A, i-th of B) are i.i.d.
and one index resample is used for both, which keeps their correlation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .metrics import EvaluationError, _check_features

DEFAULT_REPLICATES = 200
DEFAULT_LEVEL = 0.95
METRICS = ("fid", "kid")
_CHUNK = 64    # replicates per batched linear-algebra call: memory (chunk x d x d), not speed


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval: `estimate` (the statistic on the full sets), `lo` and `hi` (the
    replicates' quantiles recentred on the estimate), `level` (e.g. 0.95), `replicates` (B)."""
    estimate: float
    lo: float
    hi: float
    level: float
    replicates: int

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self, digits: int = 3) -> str:
        """e.g. '0.412 [0.385, 0.447] (95 %, 500 replicates)'."""
        f = f"{{:.{digits}g}}"
        return (f"{f.format(self.estimate)} [{f.format(self.lo)}, {f.format(self.hi)}] "
                f"({self.level * 100:g} %, {self.replicates} replicates)")


def _check_options(replicates: int, level: float) -> None:
    if not (isinstance(replicates, int) and replicates >= 2):
        raise EvaluationError(f"bootstrap replicates must be an integer >= 2, got {replicates!r}")
    if not (isinstance(level, float | int) and 0 < level < 1):
        raise EvaluationError(f"bootstrap level must lie strictly between 0 and 1, got {level!r}")


def resample_counts(n: int, replicates: int, generator: np.random.Generator) -> torch.Tensor:
    """(replicates, n) float64 counts: row b says how often each of n rows was drawn in
    replicate b (n draws with replacement; each row sums to n)."""
    idx = generator.integers(0, n, size=(replicates, n))
    counts = np.zeros((replicates, n))
    np.add.at(counts, (np.arange(replicates)[:, None], idx), 1.0)
    return torch.from_numpy(counts)


def _percentile(values: torch.Tensor, estimate: float, level: float,
                floor: float = -math.inf) -> Interval:
    """The percentile interval of the replicates recentred on `estimate` (module docstring),
    its lower end raised to `floor` where the statistic cannot go below it (FID >= 0:
    recentring can move a wide interval of a FID near 0 below 0)."""
    v = values.numpy()
    lo, mid, hi = np.quantile(v, [(1 - level) / 2, 0.5, (1 + level) / 2])
    return Interval(float(estimate), float(max(estimate + lo - mid, floor)),
                    float(estimate + hi - mid), float(level), len(v))


# the lowest value each statistic can take: FID is a squared distance; KID's unbiased
# estimate of MMD^2 can be negative
LOWEST = {"fid": 0.0, "kid": -math.inf}


# ----------------------------------------------------------------------------- FID


def _weighted_moments(f: torch.Tensor, w: torch.Tensor):
    """Means (B, d) and unbiased covariances (B, d, d) of the resamples that counts w (B, n)
    describe (the same numbers as the plain formulas on the repeated rows)."""
    n = f.shape[0]
    mu = w @ f / n
    second = (f.T[None] * w[:, None, :]) @ f / n
    cov = (second - mu[:, :, None] * mu[:, None, :]) * (n / (n - 1))
    return mu, cov


def _sqrtm_psd(c: torch.Tensor) -> torch.Tensor:
    """Batched square root of symmetric PSD matrices (eigenvalues below 0 from rounding -> 0),
    as metrics._sqrtm_psd."""
    w, v = torch.linalg.eigh((c + c.transpose(-1, -2)) / 2)
    return (v * w.clamp(min=0).sqrt()[..., None, :]) @ v.transpose(-1, -2)


def _frechet(mu1, cov1, sqrt1, mu2, cov2) -> torch.Tensor:
    """Batched metrics.frechet_distance given C1^1/2 (shared by a paired comparison)."""
    m = sqrt1 @ cov2 @ sqrt1
    tr_sqrt = torch.linalg.eigvalsh((m + m.transpose(-1, -2)) / 2).clamp(min=0).sqrt().sum(-1)
    diff = mu1 - mu2
    value = (diff * diff).sum(-1) + _trace(cov1) + _trace(cov2) - 2 * tr_sqrt
    return value.clamp(min=0)


def _trace(c: torch.Tensor) -> torch.Tensor:
    return c.diagonal(dim1=-2, dim2=-1).sum(-1)


def _fid_full(real_f: torch.Tensor, fakes: list[torch.Tensor]) -> list[float]:
    ones = torch.ones(1, len(real_f), dtype=torch.float64)
    mu_r, cov_r = _weighted_moments(real_f, ones)
    sqrt_r = _sqrtm_psd(cov_r)
    out = []
    for f in fakes:
        mu, cov = _weighted_moments(f, torch.ones(1, len(f), dtype=torch.float64))
        out.append(float(_frechet(mu_r, cov_r, sqrt_r, mu, cov)[0]))
    return out


def _fid_replicates(real_f, fakes, w_real, w_fakes) -> list[torch.Tensor]:
    """FID of each fake set against the real set, per replicate: (B,) per fake set."""
    out = [[] for _ in fakes]
    for start in range(0, len(w_real), _CHUNK):
        stop = start + _CHUNK
        mu_r, cov_r = _weighted_moments(real_f, w_real[start:stop])
        sqrt_r = _sqrtm_psd(cov_r)
        for k, (f, w) in enumerate(zip(fakes, w_fakes)):
            mu, cov = _weighted_moments(f, w[start:stop])
            out[k].append(_frechet(mu_r, cov_r, sqrt_r, mu, cov))
    return [torch.cat(chunks) for chunks in out]


# ----------------------------------------------------------------------------- KID


def _kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """torchmetrics' KID kernel (x.y / d + 1)^3."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _quadratic(w: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Sum over ordered pairs of distinct draws, per replicate: w^T K w - w . diag(K)."""
    return ((w @ k) * w).sum(-1) - w @ k.diagonal()


def kid_feature_map(x: torch.Tensor) -> torch.Tensor:
    """The explicit features of KID's kernel: phi (n, C(d + 3, 3)) with phi(x) . phi(y) =
    (x . y / d + 1)^3 exactly, for x (n, d) float64.

    By the binomial and multinomial theorems, with u = x / sqrt(d) and s = u . v,
    (s + 1)^3 = sum_k C(3, k) s^k and s^k = sum_{|a| = k} (k! / a!) u^a v^a over multi-indices
    a, so phi holds every monomial u^a of degree 0..3 once, scaled by sqrt(C(3, k) k! / a!)."""
    n, d = x.shape
    u = x / math.sqrt(d)
    columns = [torch.ones(n, 1, dtype=x.dtype)]
    for k in (1, 2, 3):
        index = torch.combinations(torch.arange(d), k, with_replacement=True).reshape(-1, k)
        multiplicities = [np.unique(row, return_counts=True)[1] for row in index.numpy()]
        coef = torch.tensor([math.comb(3, k) * math.factorial(k)
                             / math.prod(math.factorial(int(c)) for c in counts)
                             for counts in multiplicities], dtype=x.dtype)
        columns.append(u[:, index].prod(-1) * coef.sqrt())
    return torch.cat(columns, 1)


def _quadratic_features(w: torch.Tensor, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w^T K w - w . diag(K), w phi) for K = phi phi^T, per replicate, in n x dim(phi) per row
    of w instead of n^2."""
    s = w @ phi
    return (s * s).sum(-1) - w @ (phi * phi).sum(-1), s


def _self_term(f: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One set's term of the unbiased MMD^2, sum over ordered pairs of distinct draws of
    k / (n (n - 1)), per replicate; plus w phi when it went through the kernel's explicit
    features (`kid_feature_map`: when they are under a quarter of the rows, where a feature
    costs about as much as four kernel entries), else None (the kernel matrix)."""
    n = len(f)
    if 4 * math.comb(f.shape[1] + 3, 3) < n:
        quadratic, sums = _quadratic_features(w, kid_feature_map(f))
        return quadratic / (n * (n - 1)), sums
    return _quadratic(w, _kernel(f, f)) / (n * (n - 1)), None


def _kid_replicates(real_f, fakes, w_real, w_fakes) -> list[torch.Tensor]:
    """Unbiased MMD^2 with KID's kernel of each fake set against the real set, per replicate
    (a weights row of all ones gives the full-set estimate).  A large set's terms go through
    the kernel's explicit features (`_self_term`): a table's 10,788 test rows then cost
    seconds instead of minutes, and n x 969 numbers (16-D features) instead of n^2."""
    m = len(real_f)
    real_term, real_sums = _self_term(real_f, w_real)
    out = []
    for f, w in zip(fakes, w_fakes):
        n = len(f)
        fake_term, fake_sums = _self_term(f, w)
        if real_sums is not None and fake_sums is not None:
            cross = (real_sums * fake_sums).sum(-1) / (m * n)
        else:   # m x n kernel entries: the cheaper of the two whenever one set is small
            cross = ((w_real @ _kernel(real_f, f)) * w).sum(-1) / (m * n)
        out.append(real_term + fake_term - 2 * cross)
    return out


# ----------------------------------------------------------------------------- public


def _inputs(real_f, fakes, min_n: int = 2):
    real_f = _check_features(real_f, "real features", min_n=min_n)
    fakes = [_check_features(f, f"fake features {i}" if len(fakes) > 1 else "fake features",
                             min_n=min_n, dim=real_f.shape[1]) for i, f in enumerate(fakes)]
    return real_f, fakes


def _weights(real_f, fakes, replicates: int, seed: int, pair_fakes: bool):
    g = np.random.default_rng(seed)
    w_real = resample_counts(len(real_f), replicates, g)
    if pair_fakes and len({len(f) for f in fakes}) == 1:
        w = resample_counts(len(fakes[0]), replicates, g)
        return w_real, [w] * len(fakes)
    return w_real, [resample_counts(len(f), replicates, g) for f in fakes]


def _replicates(metric: str, real_f, fakes, w_real, w_fakes) -> tuple[list[float], list[torch.Tensor]]:
    """(full-set estimates, replicates) of `metric` for each fake set."""
    if metric == "fid":
        return _fid_full(real_f, fakes), _fid_replicates(real_f, fakes, w_real, w_fakes)
    if metric == "kid":
        full = _kid_replicates(real_f, fakes, torch.ones(1, len(real_f), dtype=torch.float64),
                               [torch.ones(1, len(f), dtype=torch.float64) for f in fakes])
        return [float(v[0]) for v in full], _kid_replicates(real_f, fakes, w_real, w_fakes)
    raise EvaluationError(f"bootstrap: unknown metric {metric!r}; expected one of {METRICS}")


def metric_interval(metric: str, real_f, fake_f, *, replicates: int = DEFAULT_REPLICATES,
                    level: float = DEFAULT_LEVEL, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of `metric` ('fid' or 'kid') between real features
    (N_r, d) and generated features (N_g, d), both resampled (rows with replacement, seeded).

    The estimate is FID on the full sets (as metrics.fid_from_features) or, for 'kid', the
    unbiased MMD^2 with KID's kernel on the full sets (dimensionless, like KID).  Raises
    EvaluationError for bad features, fewer than 2 rows, or bad options.  See the module
    docstring for what the interval covers."""
    _check_options(replicates, level)
    real_f, (fake_f,) = _inputs(real_f, [fake_f])
    w_real, w_fakes = _weights(real_f, [fake_f], replicates, seed, pair_fakes=False)
    (estimate,), (values,) = _replicates(metric, real_f, [fake_f], w_real, w_fakes)
    return _percentile(values, estimate, level, LOWEST[metric])


def quality_intervals(real_f, fake_f, *, replicates: int = DEFAULT_REPLICATES,
                      level: float = DEFAULT_LEVEL, seed: int = 0,
                      centres: dict | None = None) -> dict:
    """{fid_lo, fid_hi, kid_lo, kid_hi}: the intervals of FID and KID for one evaluated
    setting (the columns of the evaluation table); features as `metric_interval`.  Both
    metrics use the same resamples.  `centres` ({"kid": value}, optional) places a metric's
    interval around the table's own estimate instead of the full-set one (the table's KID is
    a mean over random subsets, whose expectation is the same)."""
    _check_options(replicates, level)
    real_f, (fake_f,) = _inputs(real_f, [fake_f])
    w_real, w_fakes = _weights(real_f, [fake_f], replicates, seed, pair_fakes=False)
    out = {}
    for metric in METRICS:
        (estimate,), (values,) = _replicates(metric, real_f, [fake_f], w_real, w_fakes)
        interval = _percentile(values, (centres or {}).get(metric, estimate), level,
                               LOWEST[metric])
        out[f"{metric}_lo"], out[f"{metric}_hi"] = interval.lo, interval.hi
    return out


def paired_difference(real_f, champion_f, challenger_f, metric: str = "fid", *,
                      replicates: int = DEFAULT_REPLICATES, level: float = DEFAULT_LEVEL,
                      seed: int = 0) -> Interval:
    """Percentile interval of metric(challenger) - metric(champion) on one real set, by a
    paired bootstrap: every replicate uses one real resample for both models, and one index
    resample for both generated sets when they have the same size (see the module docstring).

    real_f (N_r, d), champion_f and challenger_f (N_g, d) or of other sizes; metric 'fid' or
    'kid'.  Negative: the challenger scores lower (better for both metrics).  The estimate is
    the difference on the full sets.  Raises EvaluationError for bad features or options."""
    _check_options(replicates, level)
    real_f, fakes = _inputs(real_f, [champion_f, challenger_f])
    w_real, w_fakes = _weights(real_f, fakes, replicates, seed, pair_fakes=True)
    (old, new), (old_b, new_b) = _replicates(metric, real_f, fakes, w_real, w_fakes)
    return _percentile(new_b - old_b, new - old, level)


def replicate_seconds(dim: int, n: int = 1000, metric: str = "fid", replicates: int = 64,
                      seed: int = 0) -> float:
    """Measured seconds per replicate of `metric_interval` for Gaussian features of `dim`
    dimensions and n rows each (what picking B costs, on this machine and thread count)."""
    import time

    g = torch.Generator().manual_seed(seed)
    real = torch.randn(n, dim, generator=g, dtype=torch.float64)
    fake = torch.randn(n, dim, generator=g, dtype=torch.float64) + 0.1
    t0 = time.perf_counter()
    metric_interval(metric, real, fake, replicates=replicates, seed=seed)
    return (time.perf_counter() - t0) / replicates
