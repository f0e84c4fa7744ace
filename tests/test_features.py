"""The feature extractor for sample-quality metrics: accurate on digits, trained on the train
split only, reproducible bit for bit, cached by the fingerprint of its training data, usable
as torchmetrics' FID feature network, and explicit about files it cannot read."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from diffusion.data import load_digits, load_toy
from diffusion.features import (ConvAutoencoder, FeatureError, FeatureExtractor,
                                dataset_fingerprint, load_feature_extractor,
                                load_or_train_feature_extractor, save_feature_extractor,
                                train_feature_extractor)

FEW_STEPS = 20  # enough to test determinism and plumbing; accuracy is tested once, below


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits):
    """The default digits classifier (400 steps, a few seconds)."""
    return train_feature_extractor(digits, seed=0)


def _with_rows(ds, split, new_x=None, new_y=None):
    """A copy of ds with the first row of `split` given a new image and/or label."""
    row = int(np.flatnonzero(ds.split == split)[0])
    x, y = ds.x.clone(), ds.y.clone()
    if new_x is not None:
        x[row] = new_x
    if new_y is not None:
        y[row] = new_y
    return dataclasses.replace(ds, x=x, y=y)


def _state(extractor):
    return {k: v.clone() for k, v in extractor.state_dict().items()}


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the classifier ---------------------------------------------------------------------

def test_digits_classifier_is_accurate_and_fast(digits, trained):
    extractor, report = trained
    # The bar: >= 97 % test accuracy on digits (typically 98-99 %).
    assert report["test_accuracy"] >= 0.97
    assert report["val_accuracy"] >= 0.95
    assert report["kind"] == extractor.kind == "classifier"
    assert report["num_features"] == extractor.num_features == 64
    assert report["seconds"] < 60
    assert report["fingerprint"] == dataset_fingerprint(digits)
    test = digits.subset("test")
    predicted = extractor.classify(test.x)
    assert predicted.dtype == torch.int64
    assert (predicted == test.y).double().mean().item() == pytest.approx(report["test_accuracy"])


def test_fingerprint_is_the_training_split_only(digits):
    base = dataset_fingerprint(digits)
    noise = torch.rand(1, 8, 8) * 2 - 1
    # val and test rows never reach training: changing them keeps the fingerprint
    assert dataset_fingerprint(_with_rows(digits, "test", new_x=noise)) == base
    assert dataset_fingerprint(_with_rows(digits, "val", new_x=noise, new_y=3)) == base
    # a train image or a train label changes it
    assert dataset_fingerprint(_with_rows(digits, "train", new_x=noise)) != base
    label = int(digits.y[np.flatnonzero(digits.split == "train")[0]])
    assert dataset_fingerprint(_with_rows(digits, "train", new_y=(label + 1) % 10)) != base
    # rows are taken in id order: shuffling the storage order changes nothing
    perm = torch.randperm(len(digits.x), generator=torch.Generator().manual_seed(1))
    shuffled = dataclasses.replace(digits, x=digits.x[perm], y=digits.y[perm],
                                   split=digits.split[perm.numpy()],
                                   ids=[digits.ids[i] for i in perm.tolist()])
    assert dataset_fingerprint(shuffled) == base


def test_training_is_reproducible_and_sees_only_the_train_split(digits):
    a, report_a = train_feature_extractor(digits, seed=0, steps=FEW_STEPS)
    b, _ = train_feature_extractor(digits, seed=0, steps=FEW_STEPS)
    assert report_a["steps"] == FEW_STEPS
    assert _same_weights(_state(a), _state(b))
    assert torch.equal(a(digits.x), b(digits.x))

    # val and test replaced by noise: bit-identical weights, so they were never used
    g = torch.Generator().manual_seed(2)
    held_out = torch.from_numpy(digits.split != "train")
    x = digits.x.clone()
    x[held_out] = torch.rand(x[held_out].shape, generator=g) * 2 - 1
    c, report_c = train_feature_extractor(dataclasses.replace(digits, x=x), seed=0,
                                          steps=FEW_STEPS)
    assert _same_weights(_state(a), _state(c))
    assert report_c["fingerprint"] == report_a["fingerprint"]

    d, _ = train_feature_extractor(digits, seed=1, steps=FEW_STEPS)
    assert not _same_weights(_state(a), _state(d))


# --- as a metric's feature network ------------------------------------------------------

def test_features_work_as_torchmetrics_fid_network(digits, trained):
    extractor, _ = trained
    test, train = digits.subset("test"), digits.subset("train")
    features = extractor(test.x)
    assert features.shape == (len(test.x), 64)
    assert features.dtype == torch.float64
    assert torch.isfinite(features).all()
    # standardised on the training split: mean 0, RMS 1 (one scalar, so geometry is kept)
    train_features = extractor(train.x)
    assert train_features.mean(0).abs().max() < 1e-5
    assert train_features.pow(2).mean().sqrt().item() == pytest.approx(1.0, abs=1e-5)

    fid = FrechetInceptionDistance(feature=extractor)
    fid.train()  # a metric switching modes must not change the extractor
    assert not extractor.training
    fid.update(test.x, real=True)
    fid.update(test.x, real=False)
    same = float(fid.compute())
    fid.reset()
    fid.update(train.x, real=True)
    fid.update(test.x, real=False)
    floor = float(fid.compute())  # real-data floor: train vs test split
    assert abs(same) < 1e-6
    assert floor > 1e-3


def test_forward_refuses_input_it_was_not_trained_for(trained):
    extractor, _ = trained
    with pytest.raises(FeatureError, match="uint8"):
        extractor(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(FeatureError, match=r"\(1, 8, 8\)"):
        extractor(torch.zeros(2, 3, 8, 8))
    assert extractor(torch.zeros(0, 1, 8, 8)).shape == (0, 64)


# --- files and the cache ---------------------------------------------------------------

def test_save_and_load_round_trip(tmp_path, digits, trained):
    extractor, report = trained
    folder = save_feature_extractor(extractor, report, tmp_path / "fx")
    loaded, loaded_report = load_feature_extractor(folder)
    assert loaded_report == report
    assert loaded.kind == "classifier" and loaded.num_features == 64
    assert torch.equal(loaded(digits.x), extractor(digits.x))
    assert not list(tmp_path.glob(".*"))  # no temporary folders left behind


def test_cache_reuses_by_fingerprint_and_retrains_on_new_data(tmp_path, digits, capsys):
    first, report, reused = load_or_train_feature_extractor(digits, tmp_path, steps=FEW_STEPS)
    assert not reused
    assert "trained" in capsys.readouterr().out
    folder = tmp_path / report["fingerprint"][:16]
    assert (folder / "extractor.json").is_file() and (folder / "weights.safetensors").is_file()

    second, report2, reused = load_or_train_feature_extractor(digits, tmp_path, steps=FEW_STEPS)
    assert reused and report2 == report
    assert "reused" in capsys.readouterr().out
    assert torch.equal(first(digits.x), second(digits.x))

    _, _, reused = load_or_train_feature_extractor(digits, tmp_path, steps=FEW_STEPS,
                                                   retrain=True)
    assert not reused
    _, seed_report, reused = load_or_train_feature_extractor(digits, tmp_path, seed=1,
                                                             steps=FEW_STEPS)
    assert not reused and seed_report["seed"] == 1

    changed = _with_rows(digits, "train", new_x=torch.zeros(1, 8, 8))
    _, new_report, reused = load_or_train_feature_extractor(changed, tmp_path, steps=FEW_STEPS)
    assert not reused
    assert new_report["fingerprint"] != report["fingerprint"]
    assert (tmp_path / new_report["fingerprint"][:16] / "extractor.json").is_file()


def test_corrupt_cache_is_retrained(tmp_path, digits, capsys):
    _, report, _ = load_or_train_feature_extractor(digits, tmp_path, steps=FEW_STEPS)
    (tmp_path / report["fingerprint"][:16] / "weights.safetensors").write_bytes(b"garbage")
    _, _, reused = load_or_train_feature_extractor(digits, tmp_path, steps=FEW_STEPS)
    assert not reused
    assert "unusable" in capsys.readouterr().out


def test_load_errors_name_the_file(tmp_path, digits, trained):
    with pytest.raises(FeatureError, match="does not exist"):
        load_feature_extractor(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FeatureError, match="extractor.json"):
        load_feature_extractor(empty)

    folder = save_feature_extractor(*trained, tmp_path / "fx")
    config = folder / "extractor.json"
    good = config.read_text()
    config.write_text(good[: len(good) // 2])
    with pytest.raises(FeatureError, match="extractor.json: unreadable"):
        load_feature_extractor(folder)
    config.write_text(json.dumps({**json.loads(good), "format": "something-else/9"}))
    with pytest.raises(FeatureError, match="format"):
        load_feature_extractor(folder)
    config.write_text(good)

    weights = folder / "weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:-10])
    with pytest.raises(FeatureError, match="weights.safetensors: sha256"):
        load_feature_extractor(folder)
    weights.unlink()
    with pytest.raises(FeatureError, match="weights.safetensors: missing"):
        load_feature_extractor(folder)


# --- unlabelled images and vectors ------------------------------------------------------

def test_autoencoder_for_unlabelled_images(tmp_path, digits):
    unlabelled = dataclasses.replace(digits, y=None, class_names=None)
    extractor, report = train_feature_extractor(unlabelled, steps=30)
    assert extractor.kind == report["kind"] == "autoencoder"
    assert report["fingerprint"] != dataset_fingerprint(digits)  # labels are part of the data
    assert 0 < report["test_reconstruction_mse"] < float(digits.x.var())
    features = extractor(digits.x[:100])
    assert features.shape == (100, 64) and features.dtype == torch.float64
    with pytest.raises(FeatureError, match="no classes"):
        extractor.classify(digits.x[:5])
    loaded, _ = load_feature_extractor(save_feature_extractor(extractor, report, tmp_path / "ae"))
    assert torch.equal(loaded(digits.x[:100]), features)


@pytest.mark.parametrize("shape", [(3, 10, 12), (1, 17, 9), (1, 3, 3)])
def test_autoencoder_rebuilds_any_image_size(shape):
    net = ConvAutoencoder(shape[0], shape[1:])
    x = torch.zeros(2, *shape)
    assert net(x).shape == x.shape
    assert net.features(x).shape == (2, 64)


def test_vectors_get_the_identity(tmp_path):
    moons = load_toy("moons", n=200)
    extractor, report = train_feature_extractor(moons)
    assert extractor.kind == report["kind"] == "identity"
    assert extractor.num_features == report["num_features"] == 2
    assert torch.equal(extractor(moons.x), moons.x.double())
    with pytest.raises(FeatureError):
        extractor.classify(moons.x)
    assert isinstance(extractor, FeatureExtractor)
    loaded, _ = load_feature_extractor(save_feature_extractor(extractor, report, tmp_path / "id"))
    assert torch.equal(loaded(moons.x), moons.x.double())


def test_cache_made_by_other_code_is_retrained(tmp_path, digits):
    """The lineage rule: an extractor is reused only when the code that trains it is the same
    (its code_sha256 is recorded; here it is rewritten as if diffusion/features.py changed)."""
    _, report, _ = load_or_train_feature_extractor(digits, tmp_path, steps=FEW_STEPS)
    assert len(report["code_sha256"]) == 64
    config_path = tmp_path / report["fingerprint"][:16] / "extractor.json"
    config = json.loads(config_path.read_text())
    config["report"]["code_sha256"] = "0" * 64
    config_path.write_text(json.dumps(config))
    _, again, reused = load_or_train_feature_extractor(digits, tmp_path, steps=FEW_STEPS)
    assert not reused and again["code_sha256"] == report["code_sha256"]
