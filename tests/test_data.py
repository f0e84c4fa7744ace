"""diffusion.data: loaders, splits, manifest, validation errors and processed folders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageFile

from diffusion import data
from diffusion.data import (DataError, Dataset, load_dataset, load_digits, load_image_folder,
                            load_npz, load_processed, load_toy, save_processed, split_indices,
                            validate)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


# --- digits and splits --------------------------------------------------------------

def test_digits_shape_range_labels(digits):
    assert digits.kind == "image" and digits.name == "digits"
    assert digits.x.shape == (1797, 1, 8, 8) and digits.x.dtype == torch.float32
    assert digits.sample_shape == (1, 8, 8)
    assert float(digits.x.min()) == -1.0 and float(digits.x.max()) == 1.0
    assert digits.y.dtype == torch.int64
    assert sorted(digits.y.unique().tolist()) == list(range(10))
    assert digits.class_names == [str(c) for c in range(10)]
    assert digits.ids[42] == "digits-00042" and len(set(digits.ids)) == 1797


def test_digits_split_fractions_and_stratification(digits):
    fractions = {s: float(np.mean(digits.split == s)) for s in ("train", "val", "test")}
    assert fractions["val"] == pytest.approx(0.1, abs=0.01)
    assert fractions["test"] == pytest.approx(0.2, abs=0.01)
    for s in ("val", "test"):
        part = digits.subset(s)
        assert set(part.split) == {s} and len(part.ids) == len(part.x) == len(part.y)
        counts = np.bincount(part.y.numpy(), minlength=10)
        assert counts.min() > 0
        # stratified: each class within one sample of its proportional share
        share = np.bincount(digits.y.numpy()) * fractions[s]
        assert np.abs(counts - share).max() <= 1.0


def test_split_is_a_function_of_the_seed(digits):
    assert np.array_equal(load_digits(seed=0).split, digits.split)
    assert not np.array_equal(load_digits(seed=1).split, digits.split)
    a = split_indices(100, 3, 0.1, 0.2)
    assert np.array_equal(a, split_indices(100, 3, 0.1, 0.2))
    assert (a == "val").sum() == 10 and (a == "test").sum() == 20


def test_split_fractions_of_zero_and_too_few_samples():
    assert set(split_indices(5, 0, 0.0, 0.0)) == {"train"}
    tiny = split_indices(3, 0, 0.1, 0.1)  # a positive fraction never yields an empty split
    assert sorted(tiny) == ["test", "train", "val"]
    with pytest.raises(DataError, match="too few"):
        split_indices(2, 0, 0.1, 0.2)
    with pytest.raises(DataError, match="moons: 2 samples are too few"):
        load_toy("moons", n=2)
    with pytest.raises(DataError, match="val_fraction"):
        split_indices(10, 0, 1.5, 0.0)


def test_subset_rejects_unknown_split(digits):
    with pytest.raises(DataError, match="'training'"):
        digits.subset("training")


# --- manifest --------------------------------------------------------------------------

def test_manifest(digits):
    m = digits.manifest()
    assert list(m.columns) == ["id", "split", "label", "shape", "min", "max", "mean", "std",
                               "nonfinite", "sha256"]
    assert len(m) == 1797 and m["id"].tolist() == digits.ids
    assert (m["shape"] == "1x8x8").all() and (m["nonfinite"] == 0).all()
    assert m["label"].tolist() == digits.y.tolist()
    assert m["min"].min() == -1.0 and m["max"].max() == 1.0
    assert m["mean"][0] == pytest.approx(float(digits.x[0].mean()), abs=1e-6)
    # sha256 identifies the sample's values: duplicates share it, others do not
    distinct = digits.x.flatten(1).unique(dim=0).shape[0]
    assert m["sha256"].nunique() == distinct
    twin = Dataset("twin", torch.cat([digits.x[:2], digits.x[:1]]), None,
                   np.array(["train"] * 3), ["a", "b", "c"], "image")
    sha = twin.manifest()["sha256"]
    assert sha[0] == sha[2] != sha[1] and len(sha[0]) == 64
    assert (twin.manifest()["label"] == -1).all()


# --- image folders ----------------------------------------------------------------------

def _png(path, mode="L", size=(12, 10), value=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) + (() if mode == "L" else (3,))
    rng = np.random.default_rng(seed)
    pixels = (np.full(shape, value) if value is not None
              else rng.integers(0, 256, shape)).astype(np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return path


@pytest.fixture
def pets(tmp_path):
    root = tmp_path / "pets"
    for k in range(3):
        _png(root / "cat" / f"c{k}.png", "L", seed=k)
        _png(root / "dog" / f"d{k}.PNG", "RGB", seed=10 + k)
    _png(root / "dog" / "white.png", "RGB", value=255)
    _png(root / ".ipynb_checkpoints" / "c0-checkpoint.png")  # hidden: skipped
    (root / "cat" / "._c0.png").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata: skipped
    return root


def test_image_folder_labels_from_subfolders(pets):
    ds = load_image_folder(pets, size=8)
    assert ds.kind == "image" and ds.name == "pets"
    assert ds.x.shape == (7, 1, 8, 8) and ds.x.dtype == torch.float32
    assert ds.x.min() >= -1.0 and ds.x.max() <= 1.0
    assert ds.ids == ["cat/c0.png", "cat/c1.png", "cat/c2.png",
                      "dog/d0.PNG", "dog/d1.PNG", "dog/d2.PNG", "dog/white.png"]
    assert ds.class_names == ["cat", "dog"] and ds.y.tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert torch.all(ds.x[ds.ids.index("dog/white.png")] == 1.0)
    assert (ds.split == "val").sum() == 1 and (ds.split == "test").sum() == 1
    rgb = load_image_folder(pets, size=5, channels=3, labels=False)
    assert rgb.x.shape == (7, 3, 5, 5) and rgb.y is None and rgb.class_names is None
    # a grey image becomes RGB with three equal channels
    assert torch.equal(rgb.x[0, 0], rgb.x[0, 1]) and torch.equal(rgb.x[0, 0], rgb.x[0, 2])
    assert torch.equal(load_image_folder(pets, size=8).x, ds.x)  # deterministic


def test_image_folder_jpeg_and_top_level(tmp_path):
    _png(tmp_path / "a.png", "RGB", size=(16, 16))
    Image.new("RGB", (20, 30), (255, 0, 0)).save(tmp_path / "b.JPG", quality=95)
    Image.new("L", (9, 9), 0).save(tmp_path / "c.jpeg")
    ds = load_image_folder(tmp_path, size=4, channels=3, val_fraction=0.0, test_fraction=0.0)
    assert ds.ids == ["a.png", "b.JPG", "c.jpeg"] and ds.y is None
    red = ds.x[1]
    assert red[0].min() > 0.95 and red[1].max() < -0.95 and red[2].max() < -0.95
    assert torch.all(ds.x[2] == -1.0)
    with pytest.raises(DataError, match="a.png"):
        load_image_folder(tmp_path, size=4, labels=True)


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "no images found"),
    (lambda root: (root / "notes.txt").write_text("hello"), ".png"),
    (lambda root: (root / "bad.png").write_bytes(np.random.default_rng(0).bytes(500)),
     "bad.png"),
])
def test_image_folder_bad_input(tmp_path, setup, message):
    root = tmp_path / "images"
    root.mkdir()
    setup(root)
    with pytest.raises(DataError, match=message.replace(".", r"\.")):
        load_image_folder(root, size=8)


def test_image_folder_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nowhere", size=8)
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="not a directory"):
        load_image_folder(tmp_path / "file.png", size=8)


def test_truncated_png_is_rejected_even_if_pil_allows_it(tmp_path, monkeypatch):
    full = _png(tmp_path / "ok.png", "RGB", size=(64, 64)).read_bytes()
    (tmp_path / "cut.png").write_bytes(full[: len(full) // 2])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DataError, match="cut.png"):
        load_image_folder(tmp_path, size=8)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global is restored


def test_sixteen_bit_images_are_rejected(tmp_path):
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(DataError, match="deep.png"):
        load_image_folder(tmp_path, size=8, val_fraction=0.0, test_fraction=0.0)


# --- npz ------------------------------------------------------------------------------

def _npz(tmp_path, name="arrays.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_npz_vectors_images_and_given_split(tmp_path):
    rng = np.random.default_rng(0)
    vec = load_npz(_npz(tmp_path, "vec.npz", x=rng.normal(size=(50, 3)),
                        y=np.arange(50) % 2))
    assert vec.kind == "vector" and vec.x.shape == (50, 3) and vec.y.dtype == torch.int64
    assert vec.name == "vec" and vec.ids[0] == "vec-00000"
    split = np.array(["train"] * 8 + ["test"] * 2)
    img = load_npz(_npz(tmp_path, "img.npz", x=rng.uniform(-1, 1, (10, 3, 4, 4)), split=split))
    assert img.kind == "image" and img.y is None and np.array_equal(img.split, split)


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.array([[0.0, np.nan], [np.nan, np.nan], [1.0, 2.0]])), "3 non-finite"),
    (dict(x=np.array([[0.0, np.inf]] + [[1.0, 2.0]] * 9)), "1 inf"),
    (dict(x=np.zeros(10)), r"\(N, C, H, W\)"),
    (dict(x=np.zeros((10, 8, 8))), "shape"),
    (dict(images=np.zeros((10, 2))), "keys found: \\['images'\\]"),
    (dict(x=np.zeros((10, 2)), y=np.zeros(9, dtype=int)), "'y' has shape"),
    (dict(x=np.zeros((10, 2)), y=np.zeros(10)), "integer"),
    (dict(x=np.zeros((0, 2))), "empty"),
    (dict(x=np.zeros((3, 2)), split=np.array(["train", "dev", "test"])), "dev"),
    (dict(x=np.zeros((3, 4, 5, 5))), "C in"),
    (dict(x=np.array([["a", "b"]])), "dtype"),
    # uint64 labels above int64 used to wrap round to negative class indices
    (dict(x=np.zeros((2, 2)), y=np.array([0, 2**63], dtype=np.uint64)), "beyond int64"),
])
def test_npz_bad_input(tmp_path, arrays, message):
    with pytest.raises(DataError, match=message) as info:
        load_npz(_npz(tmp_path, **arrays))
    assert "arrays" in str(info.value)  # names the file


def test_npz_nan_message_names_samples(tmp_path):
    x = np.zeros((20, 2))
    x[7, 0] = np.nan
    x[9, 1] = np.inf
    with pytest.raises(DataError, match="NaN/inf") as info:
        load_npz(_npz(tmp_path, x=x))
    assert "2 non-finite" in str(info.value) and "arrays-00007" in str(info.value)


def test_npz_unknown_keys_are_an_error_not_ignored(tmp_path):
    """Today: 'labels' instead of 'y' was ignored and the data silently unlabelled."""
    path = _npz(tmp_path, x=np.zeros((10, 2)), labels=np.arange(10) % 2)
    with pytest.raises(DataError, match=r"unknown array\(s\) \['labels'\].*'y'"):
        load_npz(path)


def test_npz_keeps_the_users_ids_and_class_names(tmp_path):
    ids = np.array([f"row{k}" for k in range(10)])
    ds = load_npz(_npz(tmp_path, x=np.zeros((10, 2), np.float32), y=np.arange(10) % 2, ids=ids,
                       class_names=np.array(["cat", "dog"])))
    assert ds.ids == ids.tolist() and ds.class_names == ["cat", "dog"]
    assert ds.ingestion["details"] == {"keys": ["class_names", "ids", "x", "y"],
                                       "x_dtype": "float32"}
    with pytest.raises(DataError, match="ids are not unique"):
        load_npz(_npz(tmp_path, x=np.zeros((4, 2)), ids=np.array(["a", "b", "c", "a"])))
    with pytest.raises(DataError, match="'ids' has dtype"):
        load_npz(_npz(tmp_path, x=np.zeros((4, 2)), ids=np.arange(4)))


def test_npz_cast_to_float32_is_recorded_and_overflow_refused(tmp_path):
    x = np.full((10, 2), 1.0) + 1e-12  # not representable in float32: rounded to 1.0
    ds = load_npz(_npz(tmp_path, x=x))
    cast = ds.ingestion["details"]["x_cast"]
    assert ds.ingestion["details"]["x_dtype"] == "float64" and cast["to"] == "float32"
    assert cast["max_abs_change"] == pytest.approx(1e-12, rel=1e-3)
    x[4, 1] = 1e39  # finite in float64, inf in float32: used to become a NaN/inf finding
    with pytest.raises(DataError, match="beyond float32's range.*sample 4"):
        load_npz(_npz(tmp_path, x=x), require_finite=False)


def test_npz_not_an_archive(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="junk.npz"):
        load_npz(tmp_path / "junk.npz")
    np.save(tmp_path / "single.npy", np.zeros((4, 2)))
    with pytest.raises(DataError, match="single"):
        load_npz(tmp_path / "single.npy")


# --- toy sets and dispatch ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["moons", "swiss_roll", "gmm8"])
def test_toy_sets(name):
    ds = load_toy(name, n=1000, seed=1)
    assert ds.kind == "vector" and ds.x.shape == (1000, 2) and torch.isfinite(ds.x).all()
    assert 0.5 < float(ds.x.std()) < 3.0
    assert torch.equal(load_toy(name, n=1000, seed=1).x, ds.x)
    if name == "gmm8":
        assert sorted(ds.y.unique().tolist()) == list(range(8))
    if name == "moons":
        assert ds.x.mean(0).abs().max() < 1e-5
        assert torch.allclose(ds.x.std(0), torch.ones(2), atol=1e-3)


def test_load_dataset_dispatch(pets, tmp_path):
    assert load_dataset("gmm8", n=64, seed=2).x.shape == (64, 2)
    assert load_dataset("digits", seed=1).x.shape == (1797, 1, 8, 8)
    assert load_dataset("folder", path=pets, size=6).x.shape == (7, 1, 6, 6)
    path = _npz(tmp_path, x=np.zeros((10, 2)))
    assert load_dataset("npz", path=path).x.shape == (10, 2)


@pytest.mark.parametrize("call, message", [
    (lambda: load_dataset("cifar"), "'cifar'.*digits.*moons"),
    (lambda: load_toy("spiral"), "'spiral'.*moons, swiss_roll, gmm8"),
    (lambda: load_dataset("moons", size=8), "size"),
    (lambda: load_dataset("digits", n=10), "'n'"),
    (lambda: load_dataset("folder", path="."), "'size'"),
])
def test_load_dataset_bad_names_and_options(call, message):
    with pytest.raises(DataError, match=message):
        call()


def test_validate_rejects_inconsistent_datasets(digits):
    with pytest.raises(DataError, match="y has shape"):
        validate(Dataset("d", digits.x, digits.y[:-1], digits.split, digits.ids, "image"))
    with pytest.raises(DataError, match="train split is empty"):
        validate(Dataset("d", digits.x[:2], None, np.array(["val", "test"]), ["a", "b"], "image"))
    with pytest.raises(DataError, match="float32"):
        validate(Dataset("d", digits.x.double(), None, digits.split, digits.ids, "image"))
    with pytest.raises(DataError, match="not unique"):
        validate(Dataset("d", digits.x[:2], None, np.array(["train"] * 2), ["a", "a"], "image"))


# --- processed folders -----------------------------------------------------------------------

@pytest.mark.parametrize("make", [load_digits, lambda: load_toy("swiss_roll", n=100)])
def test_processed_round_trip(tmp_path, make):
    ds = make()
    out = save_processed(ds, tmp_path / "processed")
    assert sorted(p.name for p in out.iterdir()) == ["data.npz", "manifest.csv", "meta.json"]
    back = load_processed(out)
    assert torch.equal(back.x, ds.x) and back.x.dtype == torch.float32
    assert (back.y is None and ds.y is None) or torch.equal(back.y, ds.y)
    assert np.array_equal(back.split, ds.split) and back.ids == ds.ids
    assert (back.name, back.kind, back.class_names) == (ds.name, ds.kind, ds.class_names)
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest["sha256"].tolist() == ds.manifest()["sha256"].tolist()
    # saving again replaces the folder; nothing is left beside it
    save_processed(ds, out)
    assert [p.name for p in tmp_path.iterdir()] == ["processed"]


def test_failed_save_leaves_nothing_behind(tmp_path, monkeypatch, digits):
    def broken(self):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Dataset, "manifest", broken)  # after data.npz, before the rename
    with pytest.raises(RuntimeError, match="disk full"):
        save_processed(digits, tmp_path / "processed")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_folder(tmp_path, monkeypatch, digits):
    out = save_processed(load_toy("moons", n=50), tmp_path / "processed")

    def no_space(path, payload):
        raise OSError("no space left on device")

    monkeypatch.setattr(data, "_write_synced", no_space)
    with pytest.raises(OSError, match="no space"):
        save_processed(digits, out)
    assert [p.name for p in tmp_path.iterdir()] == ["processed"]
    assert load_processed(out).name == "moons"


def test_failed_publish_restores_the_previous_folder(tmp_path, monkeypatch, digits):
    out = save_processed(load_toy("moons", n=50), tmp_path / "processed")
    real_replace = data.os.replace

    def replace(src, dst):
        if ".tmp-" in str(src):
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(data.os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"):
        save_processed(digits, out)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["processed"]
    assert load_processed(out).name == "moons"


def test_save_refuses_to_replace_unrelated_folder(tmp_path, digits):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing"):
        save_processed(digits, tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_load_processed_errors(tmp_path):
    with pytest.raises(DataError, match="meta.json"):
        load_processed(tmp_path)


def test_nonfinite_values_can_be_left_to_the_quality_gate(tmp_path):
    """The pipeline's prepare stage stores NaN/inf as they are and counts them per sample, so
    the data-quality gate reports them; everywhere else they are refused."""
    x = np.random.default_rng(0).uniform(-1, 1, (20, 1, 4, 4)).astype(np.float32)
    x[3, 0, 1, 1], x[7, 0, 0, 2] = np.nan, np.inf
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(DataError, match="non-finite"):
        data.load_npz(tmp_path / "bad.npz")
    ds = data.load_npz(tmp_path / "bad.npz", require_finite=False)
    with pytest.raises(DataError, match="non-finite"):
        data.save_processed(ds, tmp_path / "strict")
    out = data.save_processed(ds, tmp_path / "kept", require_finite=False)
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest["nonfinite"].tolist() == [1 if i in (3, 7) else 0 for i in range(20)]
    with pytest.raises(DataError, match="non-finite"):
        data.load_processed(out)  # training never reads it
