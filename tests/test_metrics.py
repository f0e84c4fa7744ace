"""Feature-space metrics against exact values: closed-form Frechet distances of Gaussians,
the KID estimator written out, PRDC and memorisation in their limiting cases, and
torchmetrics' and our precomputed-feature paths agreeing on the same data."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from diffusion.metrics import (
    EvaluationError,
    check_batch,
    class_histogram,
    extract_features,
    fid,
    fid_from_features,
    frechet_distance,
    kid,
    kid_from_features,
    memorisation,
    prdc_metrics,
    real_floor,
    sample_quality,
)

SHAPE = (1, 4, 4)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LinearExtractor(nn.Module):
    """A fixed random linear map of the flattened sample: the interface of
    diffusion.features.FeatureExtractor without training anything."""

    kind = "autoencoder"

    def __init__(self, shape=SHAPE, num_features=6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(math.prod(shape), num_features, generator=g, dtype=torch.float64),
                                   requires_grad=False)
        self.num_features = num_features

    def forward(self, x):
        return x.flatten(1).double() @ self.weight


class FakeClassifier(LinearExtractor):
    kind = "classifier"
    num_classes = 3

    def classify(self, x):
        return self(x)[:, : self.num_classes].argmax(1)


class IdentityExtractor(nn.Module):
    """kind 'identity' (2-D data): features are the samples themselves, declared sample_shape."""

    kind = "identity"

    def __init__(self, dim=2):
        super().__init__()
        self.num_features = dim
        self.sample_shape = (dim,)

    def forward(self, x):
        return x.double()


def _gauss(n, mean, cov, seed):
    g = torch.Generator().manual_seed(seed)
    mean = torch.as_tensor(mean, dtype=torch.float64)
    chol = torch.linalg.cholesky(torch.as_tensor(cov, dtype=torch.float64))
    return mean + torch.randn(n, len(mean), generator=g, dtype=torch.float64) @ chol.T


def _images(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g) + shift


def _exact_fid(m1, c1, m2, c2):
    """Heusel et al.'s formula, written independently with scipy's general sqrtm."""
    s1 = scipy.linalg.sqrtm(c1)
    cross = scipy.linalg.sqrtm(s1 @ c2 @ s1)
    return float(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * np.real(cross)))


def _spd(d, seed, jitter=0.5):
    a = np.random.default_rng(seed).normal(size=(d, d))
    return a @ a.T / d + jitter * np.eye(d)


# ----------------------------------------------------------------------------- FID


def test_frechet_distance_matches_the_closed_form():
    d = 4
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    # commuting covariances (a shared rotation): FID = ||dm||^2 + sum (sqrt a_i - sqrt b_i)^2
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = np.array([0.5, 1.0, 2.0, 4.0]), np.array([3.0, 0.2, 1.0, 0.7])
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(m1, q @ np.diag(a) @ q.T, m2, q @ np.diag(b) @ q.T) == pytest.approx(expected, rel=1e-10)
    # non-commuting covariances against scipy's general matrix square root
    c1, c2 = _spd(d, 1), _spd(d, 2)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(_exact_fid(m1, c1, m2, c2), rel=1e-10)
    assert frechet_distance(torch.tensor(m1), torch.tensor(c1), torch.tensor(m1), torch.tensor(c1)) < 1e-12
    # singular covariances (fewer samples than dimensions) stay real, finite and >= 0
    low_rank = np.outer(m1, m1)
    assert 0.0 <= frechet_distance(m1, low_rank, m2, c2) < np.inf


def test_fid_of_a_set_with_itself_is_zero():
    f = _gauss(500, np.zeros(8), _spd(8, 3), seed=0)
    assert abs(fid_from_features(f, f)) < 1e-6
    x = _images(300, seed=0)
    assert abs(fid(LinearExtractor(), x, x)) < 1e-6


def test_sample_fid_of_two_gaussians_matches_the_exact_value():
    """n = 20 000 draws of N(m1, C1) and N(m2, C2) in d = 4, C non-diagonal.  The plug-in
    estimate is biased by O(d Tr C / n) (Tr(C1)/n + Tr(C2)/n from the means alone, similar
    from the covariances) and fluctuates by O(1/sqrt(n)).  The fluctuation sigma is measured
    from 20 independent repeats of the whole experiment; tolerance 4 sigma + d (Tr C1 + Tr C2)/n."""
    d, n = 4, 20_000
    m1, m2 = np.array([0.0, 0.5, -0.3, 1.0]), np.array([0.4, -0.2, 0.1, 0.6])
    c1, c2 = _spd(d, 11), _spd(d, 12, jitter=1.0)
    exact = _exact_fid(m1, c1, m2, c2)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(exact, rel=1e-10)

    estimates = np.array([fid_from_features(_gauss(n, m1, c1, seed=2 * r), _gauss(n, m2, c2, seed=2 * r + 1))
                          for r in range(20)])
    sigma = estimates[1:].std(ddof=1)
    bias = d * (np.trace(c1) + np.trace(c2)) / n
    assert sigma < (np.trace(c1) + np.trace(c2)) / math.sqrt(n), sigma  # O(1/sqrt(n)) noise
    assert abs(estimates[0] - exact) < 4 * sigma + bias, (estimates[0], exact, sigma, bias)
    assert abs(estimates.mean() - exact) < 4 * sigma / math.sqrt(len(estimates)) + bias


def test_torchmetrics_fid_and_fid_from_features_agree():
    ext = LinearExtractor()
    real, fake = _images(400, seed=1), _images(300, seed=2, shift=0.3)
    via_torchmetrics = fid(ext, real, fake, batch_size=128)
    via_features = fid_from_features(extract_features(ext, real), extract_features(ext, fake, batch_size=70))
    assert via_features > 0.1
    assert via_torchmetrics == pytest.approx(via_features, rel=1e-6)
    # exact input -> same features, whatever the batching
    assert torch.equal(extract_features(ext, real, batch_size=7), extract_features(ext, real))


# ----------------------------------------------------------------------------- KID


def test_kid_estimator_is_the_unbiased_polynomial_mmd():
    """With one subset holding both whole sets, KID is permutation-free: compare with the
    unbiased MMD^2 of k(x, y) = (x.y / d + 1)^3 written out."""
    x = _gauss(200, np.zeros(5), np.eye(5), seed=0).numpy()
    y = _gauss(200, 0.3 * np.ones(5), _spd(5, 4), seed=1).numpy()
    m, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    expected = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    mean, std = kid_from_features(x, y, subsets=1, subset_size=m)
    assert mean == pytest.approx(expected, rel=1e-10)
    assert std == 0.0


def test_kid_through_torchmetrics_equals_kid_from_features_for_the_same_seed():
    ext = LinearExtractor()
    real, fake = _images(300, seed=3), _images(250, seed=4, shift=0.2)
    a = kid(ext, real, fake, subsets=10, subset_size=100, seed=7)
    b = kid_from_features(extract_features(ext, real), extract_features(ext, fake), subsets=10, subset_size=100,
                          seed=7)
    assert a == pytest.approx(b, rel=1e-10)
    assert kid_from_features(extract_features(ext, real), extract_features(ext, fake), seed=1)[0] > 0
    # global random state untouched; default subset size = min(1000, n_real, n_fake) must be valid
    state = torch.random.get_rng_state()
    kid(ext, real, fake, subsets=3)
    assert torch.equal(state, torch.random.get_rng_state())
    with pytest.raises(EvaluationError, match="subset_size=251 exceeds"):
        kid(ext, real, fake, subset_size=251)


def test_kid_separates_equal_from_different_distributions():
    f = _gauss(2000, np.zeros(8), _spd(8, 5), seed=0)
    same_mean, same_std = kid_from_features(f[:1000], f[1000:], subsets=50, subset_size=500)
    assert same_std > 0
    assert abs(same_mean) < 3 * same_std, (same_mean, same_std)
    other = _gauss(1000, np.ones(8), _spd(8, 5), seed=1)  # a mean shift of 1 per dimension
    diff_mean, diff_std = kid_from_features(f[:1000], other, subsets=50, subset_size=500)
    assert diff_mean > 10 * diff_std, (diff_mean, diff_std)


# ----------------------------------------------------------------------------- PRDC


def test_prdc_of_identical_sets():
    """real == fake.  Every real ball (radius: distance to the k-th other real point) holds
    its own centre, so precision = recall = coverage = 1.  Density: ball i strictly contains
    the twins of its centre and of its k - 1 nearest neighbours; the twin of the k-th
    neighbour lies exactly on its boundary, and whether that tie counts (the comparison is
    strict) is decided by rounding: the real-real and real-fake distances come from
    different BLAS calls.  So each ball holds k or k + 1 fake points, and
    density = sum / (k N) lies in [1, 1 + 1/k]."""
    f = _gauss(300, np.zeros(6), _spd(6, 6), seed=0)
    for k in (1, 3, 5):
        out = prdc_metrics(f, f.clone(), k=k)
        assert {key: out[key] for key in ("precision", "recall", "coverage")} == \
            {"precision": 1.0, "recall": 1.0, "coverage": 1.0}, (k, out)
        assert 1.0 <= out["density"] <= 1.0 + 1.0 / k, (k, out)


def test_prdc_compares_sets_of_equal_size_when_real_rows_outnumber_generated_ones():
    """Two samples of one distribution: with equal sizes the expected coverage is
    1 - 2^-k (Naeem et al. 2020, sec. 3.3: 1 - prod_i (N - i) / (N + M - i), i = 1..k) and the
    expected density 1.  Scored against ten times as many real rows, the real k-NN balls would
    shrink and coverage fall to about 1 - (10/11)^5 = 0.38; the seeded equal-size subsample
    keeps 0.97 (the tolerance spans the five seeds' spread, 0.947-0.973, with room)."""
    for seed in range(3):
        real = _gauss(3000, np.zeros(6), np.eye(6), seed=seed)
        fake = _gauss(300, np.zeros(6), np.eye(6), seed=10 + seed)
        out = prdc_metrics(real, fake, k=5, seed=seed)
        assert abs(out["coverage"] - (1 - 0.5 ** 5)) < 0.06, out
        assert 0.85 < out["density"] < 1.15, out


def test_prdc_of_far_apart_sets_is_zero():
    real = _gauss(200, np.zeros(6), np.eye(6), seed=0)
    fake = _gauss(150, 100 * np.ones(6), np.eye(6), seed=1)
    assert prdc_metrics(real, fake, k=5) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    with pytest.raises(EvaluationError, match="at least 7 samples"):
        prdc_metrics(real, fake[:6], k=5)


# ----------------------------------------------------------------------------- memorisation


def test_memorisation_flags_copies_and_not_fresh_draws():
    cov = _spd(8, 7)
    train = _gauss(2000, np.zeros(8), cov, seed=0)
    test = _gauss(500, np.zeros(8), cov, seed=1)
    copies = memorisation(train, test, train[torch.randperm(2000, generator=torch.Generator().manual_seed(0))[:500]])
    assert copies["ratio"] < 1e-3 and copies["fraction_closer_than_test_p5"] == 1.0, copies
    fresh = memorisation(train, test, _gauss(500, np.zeros(8), cov, seed=2))
    assert 0.9 < fresh["ratio"] < 1.1, fresh
    assert fresh["fraction_closer_than_test_p5"] < 0.12, fresh
    assert fresh["test_to_train_median"] == copies["test_to_train_median"] > 0


# ----------------------------------------------------------------------------- class balance


def test_class_histogram():
    k = 4
    uniform = class_histogram(torch.arange(400) % k, k)
    assert uniform["histogram"] == [0.25] * 4 and uniform["tv_to_uniform"] == 0.0
    assert uniform["tv_to_reference"] is None
    single = class_histogram(np.zeros(50, dtype=int), k, reference_labels=np.arange(8) % k)
    assert single["tv_to_uniform"] == pytest.approx(1 - 1 / k)
    assert single["tv_to_reference"] == pytest.approx(1 - 1 / k)
    assert class_histogram([0, 1, 1, 3], k, reference_labels=[0, 1, 1, 3])["tv_to_reference"] == 0.0
    with pytest.raises(EvaluationError, match=r"labels must lie in \[0, 3\], got range \[0, 4\]"):
        class_histogram([0, 4], k)


# ----------------------------------------------------------------------------- the floor


def test_real_floor_is_positive_and_shrinks_with_n():
    cov = _spd(4, 8)
    train = _gauss(20_000, np.zeros(4), cov, seed=0)
    test = _gauss(2_000, np.zeros(4), cov, seed=1)
    floors = [real_floor(train, test, n, seed=0) for n in (50, 500, 5_000)]
    assert all(f > 0 for f in floors)
    assert floors[0] > floors[1] > floors[2], floors
    assert real_floor(train, test, 500, seed=0) == floors[1]  # seeded subset
    with pytest.raises(EvaluationError, match="n=20001 exceeds the 20000 training samples"):
        real_floor(train, test, 20_001)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("x,match", [
    (torch.zeros(0, *SHAPE), "empty batch"),
    (torch.ones(5, *SHAPE).index_put_((torch.tensor([1, 3]), torch.tensor([0, 0])), torch.tensor(float("nan"))),
     r"32 non-finite values \(NaN: 32, inf: 0\) in 2 of 5 samples"),
    (torch.ones(5, *SHAPE).index_fill_(0, torch.tensor([2]), float("inf")),
     r"16 non-finite values \(NaN: 0, inf: 16\) in 1 of 5 samples"),
    (torch.ones(5, 1, 5, 5), r"wrong sample shape: expected \(1, 4, 4\), got \(1, 5, 5\)"),
    (torch.ones(*SHAPE), r"wrong number of dimensions: expected a batch of shape \(N, 1, 4, 4\)"),
], ids=["empty", "nan", "inf", "shape", "ndim"])
def test_bad_batches_are_named(x, match):
    with pytest.raises(EvaluationError, match=match):
        check_batch(x, "fake", shape=SHAPE)


def test_bad_input_reaches_the_metrics_as_evaluation_errors():
    ext = LinearExtractor()
    good = _images(20, seed=0)
    with pytest.raises(EvaluationError, match="wrong number of dimensions"):
        check_batch(torch.ones(3))
    assert check_batch(np.ones((2, 3), dtype=np.int64)).dtype == torch.float32
    with pytest.raises(EvaluationError, match=r"fake: wrong sample shape: expected \(1, 4, 4\), got \(1, 2, 8\)"):
        fid(ext, good, torch.ones(20, 1, 2, 8))
    with pytest.raises(EvaluationError, match="real: 1 non-finite"):
        kid(ext, good.clone().index_put_((torch.tensor([0]),) * 4, torch.tensor(float("nan"))), good)
    with pytest.raises(EvaluationError, match="feature dimension 5 does not match"):
        fid_from_features(torch.ones(10, 6), torch.ones(10, 5))
    with pytest.raises(EvaluationError, match="samples: empty batch"):
        extract_features(ext, torch.zeros(0, *SHAPE))
    # an extractor that declares its sample shape is checked against it
    with pytest.raises(EvaluationError, match=r"fake: wrong sample shape: expected \(2,\), got \(3,\)"):
        extract_features(IdentityExtractor(2), torch.ones(4, 3), name="fake")


def test_float64_samples_stay_exact_through_an_identity_extractor():
    x = _gauss(50, np.zeros(2), np.eye(2), seed=0) / 3
    assert torch.equal(extract_features(IdentityExtractor(2), x), x)
    assert check_batch(x).dtype == torch.float32


# ----------------------------------------------------------------------------- one call


def test_sample_quality_returns_every_metric():
    ext = FakeClassifier()
    train, test, fake = _images(300, seed=0), _images(200, seed=1), _images(100, seed=2, shift=0.2)
    test_labels = torch.arange(200) % 3
    out = sample_quality(ext, fake, train=train, test=test, test_labels=test_labels, kid_subsets=10)
    keys = {"fid", "fid_floor", "fid_ratio", "kid_mean", "kid_std", "precision", "recall", "density",
            "coverage", "fake_to_train_median", "test_to_train_median", "memorisation_ratio",
            "fraction_closer_than_test_p5", "n_fake", "n_test",
            "class_histogram", "class_tv_to_uniform", "class_tv_to_reference"}
    assert set(out) == keys
    for key in keys - {"class_histogram"}:
        assert math.isfinite(out[key]), (key, out[key])
    assert len(out["class_histogram"]) == 3 and sum(out["class_histogram"]) == pytest.approx(1)
    assert out["fid_ratio"] == pytest.approx(out["fid"] / out["fid_floor"])
    assert out["fid"] == pytest.approx(fid(ext, test, fake), rel=1e-6)

    # cached features give the same numbers; without labels for test there is no reference
    cached = sample_quality(ext, fake, train_f=extract_features(ext, train), test_f=extract_features(ext, test),
                            test_labels=test_labels, kid_subsets=10)
    assert cached == out
    # the test labels may also come as labels_of (a non-callable): same result
    assert sample_quality(ext, fake, train=train, test=test, labels_of=test_labels, kid_subsets=10) == out
    plain = sample_quality(LinearExtractor(), fake, train=train, test=test, kid_subsets=10)
    assert "class_histogram" not in plain and math.isfinite(plain["fid"])
    with pytest.raises(EvaluationError, match="n=301 exceeds the 300 training samples"):
        sample_quality(ext, _images(301, seed=3), train=train, test=test, kid_subsets=2)
