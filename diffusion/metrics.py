"""Sample quality in a learned feature space: FID, KID, precision / recall / density /
coverage, memorisation and class balance.

Inception weights cannot be downloaded here, so every metric is computed on the features
phi(x) in R^d of a network trained on the dataset itself (`diffusion/features.py`: any
module with `forward(x) -> (N, d)`, `num_features` and `kind`; classifiers also `classify`).
The held-out test split is the real reference throughout; the training split is used only
for the real-data floor and for memorisation.

FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local
Nash equilibrium"): the Frechet (2-Wasserstein) distance between Gaussians fitted to the
real and generated features,

    FID = ||mu_r - mu_g||^2 + Tr(C_r + C_g - 2 (C_r^1/2 C_g C_r^1/2)^1/2).

KID (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of the squared
maximum mean discrepancy with the polynomial kernel k(x, y) = (x.y / d + 1)^3, averaged over
random subsets; reported as the mean and the standard deviation over those subsets (a spread
of subset estimates, not a standard error of the mean; it is 0 when the subsets are the
whole sets).  Unlike FID it has no finite-sample bias: its expectation is 0 for equal
distributions.

Precision and recall (Kynkaanniemi et al. 2019, "Improved precision and recall metric for
assessing generative models"): the real manifold is the union of balls around each real
feature with radius its distance to the k-th nearest real neighbour.  Precision is the
fraction of generated samples inside it (fidelity); recall the fraction of real samples
inside the same construction around generated samples (diversity).
Density and coverage (Naeem et al. 2020, "Reliable fidelity and diversity metrics for
generative models"): density counts how many real balls each generated sample falls in,
divided by k and averaged (about 1 when the two distributions match, above 1 when samples
crowd dense regions, and not capped at 1); coverage is the fraction of real balls that
contain at least one generated sample.  Computed by clovaai's `prdc`.

Memorisation: the distance from each generated sample to its nearest training feature,
compared with the same distance for fresh real data (the test split).  A median ratio
below 1, or many samples closer to the training set than almost any test sample
(below the 5th percentile of test -> train distances), means samples copy training data.

Why a floor.  FID is a plug-in estimate: with n samples the estimated means and covariances
carry noise, and the estimate is biased upwards by roughly Tr(C)(1/n_r + 1/n_g) from the means
plus a covariance term that grows with d^2 / n.  The FID of two independent real sets is
therefore not 0 and depends on n.  `real_floor` measures it: FID(random n-sample subset of
the training split, test split), i.e. what a perfect generator, producing fresh draws from
the data distribution, would score against the same test set with the same n.  FID is
reported beside it, and as `fid / floor`, so a number reads as "x times the floor" rather
than as an absolute that changes with the sample size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import types
import warnings
from typing import Callable

import joblib
import numpy as np
import prdc
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

logger = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """Bad input to an evaluation: names the problem and what was expected."""


# ----------------------------------------------------------------------------- input checks


def _validate(x, name: str, shape, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        try:
            x = torch.from_numpy(x)
        except TypeError as e:
            raise EvaluationError(f"{name}: cannot read a numpy array of dtype {x.dtype} as numbers") from e
    if not isinstance(x, torch.Tensor):
        raise EvaluationError(f"{name}: expected a tensor or numpy array, got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise EvaluationError(f"{name}: expected real numbers, got dtype {x.dtype}")
    if shape is not None:
        shape = tuple(int(s) for s in shape)
        if x.dim() != len(shape) + 1:
            raise EvaluationError(
                f"{name}: wrong number of dimensions: expected a batch of shape (N, {', '.join(map(str, shape))})"
                f" ({len(shape) + 1} dims), got {tuple(x.shape)} ({x.dim()} dims)")
    elif x.dim() < 2:
        raise EvaluationError(
            f"{name}: wrong number of dimensions: expected a batch (N, ...) with at least 2 dims, "
            f"got shape {tuple(x.shape)} ({x.dim()} dims)")
    if x.shape[0] == 0:
        raise EvaluationError(f"{name}: empty batch (0 samples, shape {tuple(x.shape)})")
    if shape is not None and tuple(x.shape[1:]) != shape:
        raise EvaluationError(
            f"{name}: wrong sample shape: expected {shape}, got {tuple(x.shape[1:])}")
    x = x.to(dtype)
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        nan = int(torch.isnan(x).sum())
        inf = int(torch.isinf(x).sum())
        bad_samples = int((~finite).flatten(1).any(1).sum())
        raise EvaluationError(
            f"{name}: {nan + inf} non-finite values (NaN: {nan}, inf: {inf}) in {bad_samples} of "
            f"{x.shape[0]} samples")
    return x


def check_batch(x, name: str = "samples", shape=None) -> torch.Tensor:
    """`x` as float32 after checking it is a non-empty, finite batch (N, *shape).

    `shape` is the expected shape of one sample (without N); None accepts any shape with
    at least one dimension after N.  Raises `EvaluationError` naming the problem."""
    return _validate(x, name, shape, torch.float32)


def _check_samples(x, name: str, shape=None, extractor: nn.Module | None = None) -> torch.Tensor:
    """`check_batch` for input to an extractor: float64 input stays float64 (an identity
    extractor keeps it exact), anything else becomes float32; the sample shape defaults to
    the extractor's `sample_shape` when it declares one."""
    if shape is None and extractor is not None and getattr(extractor, "sample_shape", None) is not None:
        shape = tuple(extractor.sample_shape)
    is64 = isinstance(x, (torch.Tensor, np.ndarray)) and x.dtype in (torch.float64, np.float64)
    return _validate(x, name, shape, torch.float64 if is64 else torch.float32)


def _check_features(f, name: str, min_n: int = 1, dim: int | None = None) -> torch.Tensor:
    """Precomputed features: float64 (N, d), finite, at least `min_n` rows, d == `dim`."""
    if isinstance(f, (np.ndarray, torch.Tensor)) and f.ndim != 2:
        raise EvaluationError(
            f"{name}: features must be a 2-D array (N, d), got shape {tuple(f.shape)}")
    f = _validate(f, name, None, torch.float64)
    if len(f) < min_n:
        raise EvaluationError(f"{name}: needs at least {min_n} samples, got {len(f)}")
    if dim is not None and f.shape[1] != dim:
        raise EvaluationError(f"{name}: feature dimension {f.shape[1]} does not match the other set's {dim}")
    return f.detach().cpu()


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    """Features come from the network in eval mode (dropout off, batch-norm statistics
    frozen); the caller's train/eval state is restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class _CheckedFeatures(nn.Module):
    """The extractor as torchmetrics sees it: output checked to be finite (N, d) float64,
    with `num_features` set so torchmetrics does not probe it with a 299x299 image."""

    def __init__(self, extractor: nn.Module, num_features: int):
        super().__init__()
        self.extractor = extractor
        self.num_features = int(num_features)

    def forward(self, x):
        f = self.extractor(x)
        if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape != (len(x), self.num_features):
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise EvaluationError(
                f"feature extractor returned {got}, expected ({len(x)}, {self.num_features})")
        if not bool(torch.isfinite(f).all()):
            bad = int((~torch.isfinite(f)).any(1).sum())
            raise EvaluationError(f"feature extractor produced non-finite features for {bad} of {len(x)} samples")
        return f.double()


class _Precomputed(nn.Module):
    """Passes features through unchanged: lets torchmetrics work on precomputed features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, f):
        return f


def _num_features(extractor: nn.Module, x: torch.Tensor) -> int:
    d = getattr(extractor, "num_features", None)
    if isinstance(d, torch.Tensor):
        d = int(d.item())
    if isinstance(d, int):
        return d
    with torch.no_grad(), _eval_mode(extractor):
        return int(extractor(x[:1].to(_device_of(extractor))).shape[-1])


def _batches(x: torch.Tensor, batch_size: int, device: torch.device):
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size].to(device)


# ----------------------------------------------------------------------------- features


def extract_features(extractor: nn.Module, x, batch_size: int = 512, *, name: str = "samples") -> torch.Tensor:
    """phi(x) as float64 (N, d) on the CPU: checked input, batches of `batch_size`, no grad,
    extractor in eval mode."""
    x = _check_samples(x, name, extractor=extractor)
    device = _device_of(extractor)
    d = _num_features(extractor, x)
    wrapped = _CheckedFeatures(extractor, d)
    with torch.no_grad(), _eval_mode(extractor):
        return torch.cat([wrapped(b).cpu() for b in _batches(x, batch_size, device)])


# ----------------------------------------------------------------------------- FID


def _as_numpy64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition;
    eigenvalues below 0 (rounding) are set to 0."""
    w, v = np.linalg.eigh((c + c.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), in float64.

    C1^1/2 C2 C1^1/2 is symmetric PSD and has the same eigenvalues as C1 C2, so the trace of
    its square root is a sum of square roots of eigenvalues from a symmetric eigensolver:
    real, and stable for singular covariances (fewer samples than dimensions).  Rounding
    below 0 is clipped, so the result is >= 0."""
    mu1, mu2 = _as_numpy64(mu1), _as_numpy64(mu2)
    cov1, cov2 = _as_numpy64(cov1), _as_numpy64(cov2)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise EvaluationError(
            f"frechet_distance: expected means (d,) and covariances (d, d) of one d, got "
            f"{mu1.shape}, {cov1.shape}, {mu2.shape}, {cov2.shape}")
    for name, a in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not np.isfinite(a).all():
            raise EvaluationError(f"frechet_distance: {name} has non-finite entries")
    s1 = _sqrtm_psd(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt
    return max(float(value), 0.0)


def _mean_cov(f: torch.Tensor):
    """Sample mean and unbiased (N - 1) covariance, from centred features."""
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (len(f) - 1)


def fid_from_features(real_f, fake_f) -> float:
    """FID from precomputed features (N, d): the same statistic as `fid`, without re-extracting."""
    real_f = _check_features(real_f, "real features", min_n=2)
    fake_f = _check_features(fake_f, "fake features", min_n=2, dim=real_f.shape[1])
    return frechet_distance(*_mean_cov(real_f), *_mean_cov(fake_f))


def fid(extractor: nn.Module, real, fake, *, batch_size: int = 512) -> float:
    """FID between two sample batches in the extractor's feature space, by torchmetrics'
    `FrechetInceptionDistance` with the extractor as its feature network."""
    real = _check_samples(real, "real", extractor=extractor)
    fake = _check_samples(fake, "fake", shape=real.shape[1:]).to(real.dtype)
    for name, x in (("real", real), ("fake", fake)):
        if len(x) < 2:
            raise EvaluationError(f"{name}: FID needs at least 2 samples, got {len(x)}")
    device = _device_of(extractor)
    metric = FrechetInceptionDistance(feature=_CheckedFeatures(extractor, _num_features(extractor, real)),
                                      reset_real_features=True).to(device)
    with _eval_mode(extractor):
        for x, is_real in ((real, True), (fake, False)):
            for b in _batches(x, batch_size, device):
                metric.update(b, real=is_real)
        return float(metric.compute())


# ----------------------------------------------------------------------------- KID


def _subset_size(subset_size: int | None, n_real: int, n_fake: int) -> int:
    if subset_size is None:
        subset_size = min(1000, n_real, n_fake)
    if subset_size < 2:
        raise EvaluationError(f"KID needs subsets of at least 2 samples, got subset_size={subset_size} "
                              f"(real: {n_real}, fake: {n_fake} samples)")
    if subset_size > min(n_real, n_fake):
        raise EvaluationError(f"KID subset_size={subset_size} exceeds the smaller set "
                              f"(real: {n_real}, fake: {n_fake} samples)")
    return int(subset_size)


def _kid_compute(metric: KernelInceptionDistance, seed: int | None) -> tuple[float, float]:
    # torchmetrics draws its subsets with torch.randperm on the global CPU generator:
    # seed it inside a fork so the caller's random state is left untouched.
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _kid_metric(feature: nn.Module, subsets: int, subset_size: int) -> KernelInceptionDistance:
    if not (isinstance(subsets, int) and subsets >= 1):
        raise EvaluationError(f"KID subsets must be an integer >= 1, got {subsets!r}")
    with warnings.catch_warnings():  # "will save all extracted features in buffer": that is the point
        warnings.simplefilter("ignore", UserWarning)
        return KernelInceptionDistance(feature=feature, subsets=subsets, subset_size=subset_size,
                                       degree=3, gamma=None, coef=1.0)


def kid(extractor: nn.Module, real, fake, subsets: int = 50, subset_size: int | None = None, *,
        seed: int | None = 0, batch_size: int = 512) -> tuple[float, float]:
    """(mean, std) of KID over `subsets` random subsets of `subset_size` (default
    min(1000, len(real), len(fake))), by torchmetrics' `KernelInceptionDistance`.
    Subsets are drawn from a generator seeded with `seed` (None: the global one)."""
    real = _check_samples(real, "real", extractor=extractor)
    fake = _check_samples(fake, "fake", shape=real.shape[1:]).to(real.dtype)
    size = _subset_size(subset_size, len(real), len(fake))
    device = _device_of(extractor)
    metric = _kid_metric(_CheckedFeatures(extractor, _num_features(extractor, real)), subsets, size).to(device)
    with _eval_mode(extractor):
        for x, is_real in ((real, True), (fake, False)):
            for b in _batches(x, batch_size, device):
                metric.update(b, real=is_real)
        return _kid_compute(metric, seed)


def kid_from_features(real_f, fake_f, subsets: int = 50, subset_size: int | None = None,
                      seed: int | None = 0) -> tuple[float, float]:
    """KID from precomputed features: torchmetrics' estimator fed through a pass-through
    feature module, so the value (and, for the same seed, the subsets) equal `kid`'s."""
    real_f = _check_features(real_f, "real features")
    fake_f = _check_features(fake_f, "fake features", dim=real_f.shape[1])
    size = _subset_size(subset_size, len(real_f), len(fake_f))
    metric = _kid_metric(_Precomputed(real_f.shape[1]), subsets, size)
    metric.update(real_f, real=True)
    metric.update(fake_f, real=False)
    return _kid_compute(metric, seed)


# ----------------------------------------------------------------------------- PRDC


def prdc_metrics(real_f, fake_f, k: int = 5, seed: int = 0) -> dict:
    """{"precision", "recall", "density", "coverage"} with k nearest neighbours, by
    `prdc.compute_prdc` (Naeem et al. 2020), real_f (N_r, d) against fake_f (N_g, d).

    More real than generated rows: a seeded subsample of N_g real rows is used.  The k-NN
    radii shrink as a set grows, so the four numbers compare two sets of equal size, as the
    paper's do; and the library holds three full float64 distance matrices (N_r^2, N_g^2,
    N_r N_g), which for a table's 10,788 test rows was 0.9 GB and 12 s per evaluated setting.
    Raises EvaluationError for k < 1 or a set of fewer than k + 2 rows."""
    if not (isinstance(k, int) and k >= 1):
        raise EvaluationError(f"PRDC: k must be an integer >= 1, got {k!r}")
    real_f = _check_features(real_f, "real features", min_n=k + 2)
    fake_f = _check_features(fake_f, "fake features", min_n=k + 2, dim=real_f.shape[1])
    if len(real_f) > len(fake_f):
        keep = np.random.default_rng(seed).choice(len(real_f), len(fake_f), replace=False)
        real_f = real_f[torch.from_numpy(np.sort(keep))]
    # prdc asks scikit-learn for its distances with n_jobs=8: joblib threads whose wrapper
    # swaps the process-wide warning filters from each thread (catch_warnings + resetwarnings,
    # not thread-safe), leaving them reordered or empty after the call; every later parallel
    # call then warns "delayed should be used with Parallel" (94 times in one `make run`).
    # The sequential backend makes joblib's effective n_jobs 1, so scikit-learn computes
    # directly in this thread (its BLAS still uses the cores).
    with joblib.parallel_config(backend="sequential"):
        out = _quiet(prdc.compute_prdc)(real_features=real_f.numpy(),
                                        fake_features=fake_f.numpy(), nearest_k=k)
    return {key: float(out[key]) for key in ("precision", "recall", "density", "coverage")}


def _quiet(function: Callable) -> Callable:
    """`function` (a library's plain Python function) with the name `print` in its module
    bound to a buffer, each call's text passed on as one debug record of this module's logger.

    compute_prdc prints "Num real: N Num fake: M" on every call.  Redirecting sys.stdout does
    not reach it inside a Prefect flow run with log_prints, which replaces builtins.print
    with a function that sends each line to the run's logs -- 35 of an evaluation's 58
    records were this line.  A copy of the function whose globals name another `print` is
    silent however `builtins.print` is patched, leaves the library's module untouched and
    is safe in threads."""
    def call(*args, **kwargs):
        text = io.StringIO()

        def to_buffer(*values, sep=" ", end="\n", file=None, flush=False):
            text.write(sep.join(map(str, values)) + end)

        globals_ = {**function.__globals__, "print": to_buffer}
        copy = types.FunctionType(function.__code__, globals_, function.__name__,
                                  function.__defaults__, function.__closure__)
        copy.__kwdefaults__ = function.__kwdefaults__
        try:
            return copy(*args, **kwargs)
        finally:
            if text.getvalue().strip():
                logger.debug("%s printed: %s", function.__qualname__, text.getvalue().strip())
    return call


# ----------------------------------------------------------------------------- memorisation


def _nn_distance(query: torch.Tensor, ref: torch.Tensor, max_elements: int = 1 << 24) -> torch.Tensor:
    """Euclidean distance from each query row to its nearest row of `ref`, in chunks of
    at most `max_elements` pairwise distances."""
    chunk = max(1, max_elements // len(ref))
    return torch.cat([torch.cdist(q, ref).min(1).values for q in query.split(chunk)])


def memorisation(train_f, test_f, fake_f) -> dict:
    """Nearest-training-neighbour distances of generated samples against those of test data.

    fake_to_train_median / test_to_train_median: median distance to the nearest training
    feature; ratio: their quotient (below 1: samples sit closer to the training data than
    fresh real data does, a memorisation warning); fraction_closer_than_test_p5: fraction of
    samples nearer the training set than the 5th percentile of test distances (about 0.05
    for a generator that does not copy; near 1 for one that does); test_to_train_p5: that
    percentile."""
    train_f = _check_features(train_f, "train features")
    d = train_f.shape[1]
    test_f = _check_features(test_f, "test features", dim=d)
    fake_f = _check_features(fake_f, "fake features", dim=d)
    fake_nn = _nn_distance(fake_f, train_f)
    test_nn = _nn_distance(test_f, train_f)
    test_median = float(test_nn.median())
    if test_median == 0.0:
        raise EvaluationError("memorisation: over half of the test features equal a training feature; "
                              "the test split overlaps the training split, so it cannot serve as the reference")
    p5 = float(torch.quantile(test_nn, 0.05))
    fake_median = float(fake_nn.median())
    return {
        "fake_to_train_median": fake_median,
        "test_to_train_median": test_median,
        "ratio": fake_median / test_median,
        "fraction_closer_than_test_p5": float((fake_nn < p5).double().mean()),
        "test_to_train_p5": p5,
    }


# ----------------------------------------------------------------------------- class balance


def _histogram(labels, num_classes: int, name: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise EvaluationError(f"{name}: expected a 1-D array of class indices, got shape {labels.shape}")
    if labels.size == 0:
        raise EvaluationError(f"{name}: no labels")
    if not np.issubdtype(labels.dtype, np.integer):
        if not (np.isfinite(labels).all() and (labels == np.round(labels)).all()):
            raise EvaluationError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise EvaluationError(f"{name}: labels must lie in [0, {num_classes - 1}], got range [{lo}, {hi}]")
    return np.bincount(labels, minlength=num_classes) / labels.size


def class_histogram(labels, num_classes: int, reference_labels=None) -> dict:
    """Class fractions p of `labels` and total-variation distances 0.5 sum |p - q| to the
    uniform distribution (0: balanced; 1 - 1/K: a single class) and to the class fractions
    of `reference_labels` (None without them)."""
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise EvaluationError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    p = _histogram(labels, num_classes, "labels")
    tv_ref = None
    if reference_labels is not None:
        q = _histogram(reference_labels, num_classes, "reference labels")
        tv_ref = 0.5 * float(np.abs(p - q).sum())
    return {
        "histogram": p.tolist(),
        "tv_to_uniform": 0.5 * float(np.abs(p - 1.0 / num_classes).sum()),
        "tv_to_reference": tv_ref,
    }


# ----------------------------------------------------------------------------- the floor


def real_floor(train_f, test_f, n: int, seed: int = 0) -> float:
    """The real-data floor: FID(random n-sample subset of the training features, test
    features), what fresh real data scores at sample size n (see the module docstring)."""
    train_f = _check_features(train_f, "train features")
    test_f = _check_features(test_f, "test features", min_n=2, dim=train_f.shape[1])
    if not (isinstance(n, int) and n >= 2):
        raise EvaluationError(f"real_floor: n must be an integer >= 2, got {n!r}")
    if n > len(train_f):
        raise EvaluationError(f"real_floor: n={n} exceeds the {len(train_f)} training samples; "
                              f"evaluate at most {len(train_f)} generated samples or use a larger training split")
    g = torch.Generator().manual_seed(seed)
    subset = train_f[torch.randperm(len(train_f), generator=g)[:n]]
    return fid_from_features(test_f, subset)


# ----------------------------------------------------------------------------- everything


def sample_quality(extractor: nn.Module, fake, *, train=None, test=None,
                   labels_of: Callable | None = None, n_classes: int | None = None,
                   k: int = 5, kid_subsets: int = 50, seed: int = 0,
                   train_f=None, test_f=None, test_labels=None, batch_size: int = 512,
                   fake_f=None) -> dict:
    """Every metric for one set of generated samples, the test split as the real reference.

    Features are extracted once per set; pass `train_f` / `test_f` (from
    `extract_features`) to reuse cached ones instead of `train` / `test`, and `fake_f` (the
    features of `fake`, e.g. kept for a bootstrap) to skip extracting them again.

    Returns fid, fid_floor (`real_floor` at n = len(fake)), fid_ratio, kid_mean, kid_std,
    precision, recall, density, coverage, fake_to_train_median, test_to_train_median,
    memorisation_ratio, fraction_closer_than_test_p5, n_fake, n_test, and, when labels are
    available (`labels_of`: a function samples -> class indices, by default the extractor's
    `classify` when its kind is 'classifier'): class_histogram, class_tv_to_uniform and
    class_tv_to_reference (against `test_labels` if given, else the labels of `test`; None
    when neither is available).  A `labels_of` that is not callable is taken as
    `test_labels`.  `n_classes` defaults to the extractor's `num_classes` (or
    `architecture["num_classes"]`), else `len(class_names)`, else the largest label + 1."""
    fake = _check_samples(fake, "fake", extractor=extractor)
    if train_f is None:
        if train is None:
            raise EvaluationError("sample_quality: pass the training samples (train=) or their features (train_f=)")
        train = _check_samples(train, "train", shape=fake.shape[1:])
        train_f = extract_features(extractor, train, batch_size, name="train")
    if test_f is None:
        if test is None:
            raise EvaluationError("sample_quality: pass the test samples (test=) or their features (test_f=)")
        test = _check_samples(test, "test", shape=fake.shape[1:])
        test_f = extract_features(extractor, test, batch_size, name="test")
    fake_f = (extract_features(extractor, fake, batch_size, name="fake") if fake_f is None
              else _check_features(fake_f, "fake features", dim=None))
    if len(fake_f) != len(fake):
        raise EvaluationError(f"sample_quality: {len(fake_f)} fake features for {len(fake)} samples")
    test_f = _check_features(test_f, "test features", min_n=2, dim=fake_f.shape[1])
    train_f = _check_features(train_f, "train features", dim=fake_f.shape[1])

    value = fid_from_features(test_f, fake_f)
    floor = real_floor(train_f, test_f, len(fake_f), seed=seed)
    kid_mean, kid_std = kid_from_features(test_f, fake_f, subsets=kid_subsets, seed=seed)
    mem = memorisation(train_f, test_f, fake_f)
    out = {
        "fid": value,
        "fid_floor": floor,
        "fid_ratio": value / floor if floor > 0 else math.inf,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        **prdc_metrics(test_f, fake_f, k=k, seed=seed),
        "fake_to_train_median": mem["fake_to_train_median"],
        "test_to_train_median": mem["test_to_train_median"],
        "memorisation_ratio": mem["ratio"],
        "fraction_closer_than_test_p5": mem["fraction_closer_than_test_p5"],
        "n_fake": len(fake_f),
        "n_test": len(test_f),
    }

    if labels_of is not None and not callable(labels_of):  # given as the test labels themselves
        if test_labels is not None:
            raise EvaluationError("sample_quality: labels_of is not callable and test_labels is also given; "
                                  "pass the test labels once (test_labels=) and a labelling function as labels_of")
        labels_of, test_labels = None, labels_of
    if labels_of is None and getattr(extractor, "kind", None) == "classifier":
        labels_of = extractor.classify
    if labels_of is not None:
        def label(x):
            device = _device_of(extractor)
            with torch.no_grad(), _eval_mode(extractor):
                return torch.cat([torch.as_tensor(labels_of(b)).reshape(-1).cpu()
                                  for b in _batches(x, batch_size, device)])

        fake_labels = label(fake)
        if test_labels is None and test is not None:
            test_labels = label(test)
        if n_classes is None:
            n_classes = getattr(extractor, "num_classes", None)
        if n_classes is None and isinstance(getattr(extractor, "architecture", None), dict):
            n_classes = extractor.architecture.get("num_classes")
        if n_classes is None and getattr(extractor, "class_names", None):
            n_classes = len(extractor.class_names)
        if n_classes is None:
            highest = int(fake_labels.max())
            if test_labels is not None:
                highest = max(highest, int(torch.as_tensor(test_labels).max()))
            n_classes = highest + 1
        hist = class_histogram(fake_labels, int(n_classes), test_labels)
        out["class_histogram"] = hist["histogram"]
        out["class_tv_to_uniform"] = hist["tv_to_uniform"]
        out["class_tv_to_reference"] = hist["tv_to_reference"]
    return out
