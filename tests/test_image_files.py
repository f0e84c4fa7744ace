"""Image folders enter unaltered, or every change is counted: alpha, formats, class folders,
EXIF orientation, frames, aspect ratio, colour, and the read/skipped record in meta.json.

Each test's input is a small folder that today's loader changed or dropped without a word."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion.config import DataConfig
from diffusion.data import DataError, load_image_folder, load_processed, save_processed
from diffusion.image_files import IMAGE_EXTENSIONS
from tasks.steps.prepare_dataset import prepare_dataset

FLAT = {"val_fraction": 0.0, "test_fraction": 0.0}


def save(image: Image.Image, path, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)


def stroke(mode: str) -> Image.Image:
    """A black vertical stroke on a fully transparent background, 8x8."""
    if mode == "RGBA":
        pixels = np.zeros((8, 8, 4), np.uint8)       # transparent black everywhere
        pixels[:, 3:5] = (0, 0, 0, 255)              # the stroke: opaque black
    else:  # LA
        pixels = np.zeros((8, 8, 2), np.uint8)
        pixels[:, 3:5] = (0, 255)
    return Image.fromarray(pixels, mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
@pytest.mark.parametrize("channels", [1, 3])
def test_black_stroke_on_transparency_stays_a_stroke(tmp_path, mode, channels):
    stroke(mode).save(tmp_path / "stroke.png")
    ds = load_image_folder(tmp_path, size=8, channels=channels, **FLAT)
    image = ds.x[0]
    assert torch.all(image[:, :, 3:5] == -1.0)                      # black stroke
    assert torch.all(image[:, :, :3] == 1.0) and torch.all(image[:, :, 5:] == 1.0)  # white ground
    assert ds.ingestion["altered"]["alpha_composited"] == 1


def test_background_is_a_setting(tmp_path):
    stroke("RGBA").save(tmp_path / "stroke.png")
    grey = load_image_folder(tmp_path, size=8, background=51, **FLAT)
    assert torch.allclose(grey.x[0, 0, :, 0], torch.full((8,), 51 / 127.5 - 1))
    red = load_image_folder(tmp_path, size=8, channels=3, background=[255, 0, 0], **FLAT)
    assert red.x[0, :, 0, 0].tolist() == [1.0, -1.0, -1.0]
    assert red.ingestion["details"]["background"] == [255, 0, 0]
    with pytest.raises(DataError, match="background"):
        load_image_folder(tmp_path, size=8, background="red", **FLAT)
    assert DataConfig(name="folder", path="x", background=[0, 0, 255]).background == [0, 0, 255]
    for bad in ("red", 256, [1, 2], True):
        with pytest.raises(ValueError, match="background"):
            DataConfig(name="folder", path="x", background=bad)


def test_palette_and_colour_key_transparency_are_composited(tmp_path):
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 0, 10, 10, 10] + [0] * 762)
    palette.paste(1, (3, 0, 5, 8))
    palette.save(tmp_path / "a.png", transparency=0)   # index 0 (black) transparent
    Image.new("L", (8, 8), 0).save(tmp_path / "b.png", transparency=0)  # tRNS colour key
    ds = load_image_folder(tmp_path, size=8, **FLAT)
    assert torch.all(ds.x[0, 0, :, 0] == 1.0) and torch.all(ds.x[0, 0, :, 3] == 10 / 127.5 - 1)
    assert torch.all(ds.x[1] == 1.0)
    assert ds.ingestion["altered"]["alpha_composited"] == 2


def test_every_format_pillow_reads_is_listed_once():
    for ext in (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm"):
        assert ext in IMAGE_EXTENSIONS
    assert len(set(IMAGE_EXTENSIONS)) == len(IMAGE_EXTENSIONS)
    # PDF: Pillow writes it only; EPS: needs Ghostscript
    assert ".pdf" not in IMAGE_EXTENSIONS and ".eps" not in IMAGE_EXTENSIONS


def test_webp_class_folder_is_read_not_dropped(tmp_path):
    """Today: class 'b' (only .webp) vanished, and nothing said so."""
    for k in range(2):
        save(Image.new("L", (8, 8), 10 * k), tmp_path / "a" / f"{k}.png")
        save(Image.new("L", (8, 8), 200), tmp_path / "b" / f"{k}.webp", lossless=True)
    ds = load_image_folder(tmp_path, size=8, **FLAT)
    assert ds.class_names == ["a", "b"] and ds.y.tolist() == [0, 0, 1, 1]
    assert torch.all(ds.x[2:] == 200 / 127.5 - 1)


@pytest.mark.parametrize("content, held", [
    (lambda d: (d / "x.heic").write_bytes(b"not read here"), "1 unsupported_extension"),
    (lambda d: None, "empty"),
    (lambda d: (d / ".DS_Store").write_bytes(b"\0"), "1 hidden"),
])
def test_class_folder_without_a_usable_image_is_an_error_naming_it(tmp_path, content, held):
    (tmp_path / "a").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "a" / "0.png")
    (tmp_path / "b").mkdir()
    content(tmp_path / "b")
    (tmp_path / "c").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "c" / "0.png")
    with pytest.raises(DataError, match=rf"\['b'\] hold no usable image \('b': {held}\)"):
        load_image_folder(tmp_path, size=8, **FLAT)


def test_skipped_files_are_counted_by_reason_and_folder(tmp_path):
    for k in range(3):
        save(Image.new("L", (8, 8), k), tmp_path / "a" / f"{k}.png")
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "README.md").write_text("x")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")  # not looked into: the folder counts once
    (tmp_path / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    ds = load_image_folder(tmp_path, size=8, labels=True, **FLAT)
    record = ds.ingestion
    assert record["files_read"] == 3 and record["files_skipped"] == 5
    skipped = record["skipped"]
    assert skipped["hidden"] == {"count": 2, "folders": {".": 1, "a": 1},
                                 "examples": [".git/", "a/.DS_Store"]}
    assert skipped["unsupported_extension"]["folders"] == {".": 1, "a": 1}
    assert skipped["not_a_file"]["examples"] == ["a/gone.png"]
    # stored with the processed dataset, and read back
    out = save_processed(ds, tmp_path.parent / "processed")
    assert json.loads((out / "meta.json").read_text())["ingestion"] == record
    assert load_processed(out).ingestion == record


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((4, 4), np.uint8)
    pixels[0, 0] = 255                       # a white pixel top left, as stored
    image = Image.fromarray(pixels, "L")
    exif = image.getexif()
    exif[0x0112] = 3                         # Orientation: rotate 180 to display
    image.save(tmp_path / "photo.png", exif=exif)
    ds = load_image_folder(tmp_path, size=4, **FLAT)
    assert ds.x[0, 0, 3, 3] == 1.0 and ds.x[0, 0, 0, 0] == -1.0  # shown bottom right
    assert ds.ingestion["altered"]["exif_transposed"] == 1


@pytest.mark.parametrize("ext", [".gif", ".tif"])
def test_multi_frame_files_are_refused_not_cut_to_frame_one(tmp_path, ext):
    frames = [Image.new("L", (8, 8), v) for v in (0, 255)]
    frames[0].save(tmp_path / f"anim{ext}", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=rf"anim\{ext}: holds 2 frames"):
        load_image_folder(tmp_path, size=8, **FLAT)


def test_non_square_images_are_counted_and_fit_is_a_setting(tmp_path):
    tall = np.zeros((8, 4), np.uint8)        # 4 wide, 8 high, black
    Image.fromarray(tall, "L").save(tmp_path / "tall.png")
    stretched = load_image_folder(tmp_path, size=8, **FLAT)
    assert torch.all(stretched.x == -1.0)
    assert stretched.ingestion["altered"] == {"non_square": 1, "resized": 1}
    padded = load_image_folder(tmp_path, size=8, fit="pad", **FLAT).x[0, 0]
    assert torch.all(padded[:, 2:6] == -1.0)                      # the picture, undistorted
    assert torch.all(padded[:, :2] == 1.0) and torch.all(padded[:, 6:] == 1.0)  # white bars
    wide = np.zeros((4, 8), np.uint8)
    wide[:, :2] = 255                         # white left quarter, cropped away
    (tmp_path / "tall.png").unlink()
    Image.fromarray(wide, "L").save(tmp_path / "wide.png")
    cropped = load_image_folder(tmp_path, size=4, fit="crop", **FLAT)
    assert torch.all(cropped.x == -1.0)
    with pytest.raises(DataError, match="fit="):
        load_image_folder(tmp_path, size=4, fit="squash", **FLAT)


def test_colour_dropped_for_one_channel_is_counted(tmp_path):
    Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "red.png")
    Image.new("RGB", (8, 8), (90, 90, 90)).save(tmp_path / "grey.png")  # RGB file, no colour
    ds = load_image_folder(tmp_path, size=8, channels=1, **FLAT)
    assert ds.ingestion["altered"] == {"colour_to_grey": 1}
    assert load_image_folder(tmp_path, size=8, channels=3, **FLAT).ingestion["altered"] == {}


def test_prepare_prints_and_stores_what_it_read_and_skipped(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for k in range(4):
        stroke("RGBA").save(images / f"{k}.png")
    (images / "notes.txt").write_text("x")
    lines = []
    data = DataConfig(name="folder", path=str(images), **FLAT)
    out = prepare_dataset(data, tmp_path / "processed", log=lines.append)
    text = "\n".join(lines)
    assert "read 4 file(s), skipped 1" in text
    assert "skipped (unsupported_extension): 1 in ./: 1; e.g. notes.txt" in text
    assert "altered (alpha_composited): 4" in text
    meta = json.loads((out / "meta.json").read_text())
    assert meta["ingestion"]["files_skipped"] == 1 and len(meta["ingestion"]["source_sha256"]) == 64


def test_processed_npz_has_no_time_stamps(tmp_path):
    """Identical inputs must give identical bytes (DVC's md5 is the dataset version)."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("L", (8, 8), 7).save(images / "a.png")
    ds = load_image_folder(images, size=8, **FLAT)
    first = (save_processed(ds, tmp_path / "one") / "data.npz").read_bytes()
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert (save_processed(ds, tmp_path / "two") / "data.npz").read_bytes() == first
