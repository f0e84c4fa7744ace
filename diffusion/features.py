"""A feature space for sample quality, learned from the dataset's own training split.

FID, KID, precision / recall and the memorisation distance compare samples with real data
in the feature space of some network.  The usual network, Inception-v3, cannot be
downloaded here and knows nothing about 8x8 digits anyway, so each dataset gets its own
small extractor, trained on its TRAINING split only (val and test rows never reach the
optimiser; they are used for the report), stored as a versioned artefact and found again
by the hash of the data it was trained on (`dataset_fingerprint`).

Which network depends on what the data offer:

- labelled images -> a small CNN classifier (conv 32 -> conv 64 -> max-pool -> fc 128 ->
  fc 64 -> logits).  The features are the 64-d penultimate layer, taken before its ReLU so no
  dimension is dead and the distribution is closer to the Gaussian FID assumes, centred on
  the training mean and divided by one scalar (`FeatureExtractor.standardise`).  A classifier
  is what Inception is to ImageNet: its features are organised by what the images show, so a
  sample that looks like no digit, or digits of the wrong proportions, moves far in this space.
  On digits it reaches about 98-99 % test accuracy in a few seconds of CPU time.
- unlabelled images -> a small convolutional denoising autoencoder; the features are its
  64-d bottleneck.  Without labels nothing says which differences matter, but the bottleneck
  must keep whatever distinguishes one training image from another, or the decoder could not
  rebuild them, so distances between codes are meaningful for this data.  The alternative, a
  randomly initialised network, needs no training but its features are not fitted to the
  data: it is weaker at telling good samples from bad.
- vectors (2-D points, mixtures) -> the identity: such data are evaluated in their own
  coordinates, where the true density is often known; no network is needed.  A table's rows
  too, in the encoding the model sees (each number quantile-normalised, each category +-1):
  a Frechet distance there compares every column's shape and the columns' pairwise
  correlations at once (the table-specific scores are diffusion/tabular/metrics.py's).

Everything here is deterministic: the same seed and the same training rows give bit-identical
weights (weights initialised under a seeded, forked RNG; batches and augmentation drawn
from a private torch.Generator; no nondeterministic ops; cuDNN held deterministic on CUDA).
Bit-identity holds within one device and thread count, as for any float computation: CPU and
CUDA runs reach the same accuracy with different weights, so numbers to be compared must
come from one saved extractor (which the cache provides), not from retraining elsewhere.

An extractor folder, written atomically:

    extractor.json          {"format", "kind", "architecture", "num_features", "class_names",
                             "weights_sha256", "report"}; the report holds the fingerprint
    weights.safetensors     the extractor's state dict: "net.*" weights, "shift", "scale"
                            (empty for the identity)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .atomic import atomic_folder
from .data import Dataset
from .loop import TrainingError, optimise
from .provenance import code_sha256

FORMAT = "dmops-feature-extractor/1"
KINDS = ("classifier", "autoencoder", "identity")
CONFIG_FILE = "extractor.json"
WEIGHTS_FILE = "weights.safetensors"
NUM_FEATURES = 64
WIDTHS = (32, 64)
HIDDEN = 128
BATCH_SIZE = 128
LR = 2e-3
WEIGHT_DECAY = 1e-2
DENOISE_SIGMA = 0.1    # the autoencoder sees x + 0.1 eps and rebuilds x
CHUNK = 1024           # rows per forward pass at inference

logger = logging.getLogger(__name__)


class FeatureError(ValueError):
    """An extractor that cannot be trained, loaded or applied; the message says why and what
    is accepted."""


# --- networks ---------------------------------------------------------------------

def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]


def _pool_plan(height: int, width: int) -> list[tuple[int, int]]:
    """The (H, W) before each 2x2 max-pool: pool while both sides are >= 8, so 8x8 digits are
    pooled once to 4x4 and 32x32 images three times."""
    sizes = []
    while min(height, width) >= 8:
        sizes.append((height, width))
        height, width = height // 2, width // 2
    return sizes


def _encoder(in_channels: int, image_size, widths, hidden: int, num_features: int) -> nn.Sequential:
    """convs at full resolution, then pool (+ conv) stages, then fc hidden -> fc num_features
    (linear: the features are pre-activation)."""
    layers = _conv(in_channels, widths[0])
    for a, b in zip(widths, widths[1:]):
        layers += _conv(a, b)
    sizes = _pool_plan(*image_size)
    for k in range(len(sizes)):
        layers.append(nn.MaxPool2d(2))
        if k + 1 < len(sizes):
            layers += _conv(widths[-1], widths[-1])
    h, w = image_size
    for _ in sizes:
        h, w = h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(widths[-1] * h * w, hidden), nn.ReLU(),
               nn.Linear(hidden, num_features)]
    return nn.Sequential(*layers)


class ConvClassifier(nn.Module):
    """features(x): the 64-d penultimate layer; forward(x): class logits."""

    def __init__(self, in_channels: int, image_size, num_classes: int,
                 num_features: int = NUM_FEATURES, widths=WIDTHS, hidden: int = HIDDEN):
        super().__init__()
        self.encoder = _encoder(in_channels, image_size, widths, hidden, num_features)
        self.head = nn.Linear(num_features, num_classes)

    def features(self, x):
        return self.encoder(x)

    def forward(self, x):
        return self.head(F.relu(self.encoder(x)))


class ConvAutoencoder(nn.Module):
    """features(x): the 64-d bottleneck; forward(x): the reconstruction.  The decoder mirrors
    the encoder with stride-2 transposed convolutions (deterministic, unlike upsampling's
    backward on CUDA)."""

    def __init__(self, in_channels: int, image_size, num_features: int = NUM_FEATURES,
                 widths=WIDTHS, hidden: int = HIDDEN):
        super().__init__()
        self.encoder = _encoder(in_channels, image_size, widths, hidden, num_features)
        sizes = _pool_plan(*image_size)
        h, w = image_size
        for _ in sizes:
            h, w = h // 2, w // 2
        c = widths[-1]
        layers = [nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, c * h * w),
                  nn.ReLU(), nn.Unflatten(1, (c, h, w))]
        for k, size in enumerate(reversed(sizes)):
            layers += [nn.ConvTranspose2d(c, c, 2, stride=2,
                                          output_padding=(size[0] % 2, size[1] % 2)), nn.ReLU()]
            if k + 1 < len(sizes):
                layers += _conv(c, c)
        layers += _conv(c, widths[0]) + [nn.Conv2d(widths[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*layers)

    def features(self, x):
        return self.encoder(x)

    def forward(self, x):
        return self.decoder(self.encoder(x))


def _build_net(kind: str, architecture: dict) -> nn.Module | None:
    a = dict(architecture)
    if kind == "identity":
        return None
    common = dict(in_channels=int(a["in_channels"]), image_size=tuple(a["image_size"]),
                  num_features=int(a["num_features"]), widths=tuple(a["widths"]),
                  hidden=int(a["hidden"]))
    if kind == "classifier":
        return ConvClassifier(num_classes=int(a["num_classes"]), **common)
    if kind == "autoencoder":
        return ConvAutoencoder(**common)
    raise FeatureError(f"unknown extractor kind {kind!r}; accepted: {', '.join(KINDS)}")


class FeatureExtractor(nn.Module):
    """A frozen feature map x -> (N, num_features) float64, for torchmetrics' FID/KID
    (`FrechetInceptionDistance(feature=extractor)`) and the other sample-quality metrics.

    Input is in the data's own scale (images in [-1, 1], shape (N, *sample_shape)); it is
    moved to the extractor's device.  The module stays in eval mode (`train()` is a no-op, as
    for torchmetrics' own Inception) and its parameters need no gradients.
    """

    def __init__(self, kind: str, architecture: dict, net: nn.Module | None = None,
                 class_names: list[str] | None = None):
        super().__init__()
        if kind not in KINDS:
            raise FeatureError(f"unknown extractor kind {kind!r}; accepted: {', '.join(KINDS)}")
        self.kind = kind
        self.architecture = dict(architecture)
        self.num_features = int(architecture["num_features"])
        self.sample_shape = tuple(int(s) for s in architecture["sample_shape"])
        self.class_names = class_names
        self.net = _build_net(kind, architecture) if net is None else net
        self.register_buffer("_anchor", torch.empty(0), persistent=False)  # follows .to(device)
        if self.net is not None:  # set from the training split by `standardise`
            self.register_buffer("shift", torch.zeros(self.num_features))
            self.register_buffer("scale", torch.ones(()))
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):
        """Always eval: a metric module that switches to train mode must not change features."""
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def _check(self, x) -> torch.Tensor:
        if not torch.is_tensor(x):
            raise FeatureError(f"expected a torch.Tensor of shape (N, {self._shape_text()}), "
                               f"got {type(x).__name__}")
        if not x.is_floating_point():
            raise FeatureError(f"expected float input in the data's own scale (images in "
                               f"[-1, 1]), got dtype {x.dtype}; convert uint8 images with "
                               "x / 127.5 - 1")
        if tuple(x.shape[1:]) != self.sample_shape or x.dim() != len(self.sample_shape) + 1:
            raise FeatureError(f"input has shape {tuple(x.shape)}; this extractor was trained on "
                               f"samples of shape {self.sample_shape}: accepted (N, "
                               f"{self._shape_text()})")
        if self.net is None:                     # identity: keep float64 input exact
            return x.to(self.device)
        return x.to(self.device, next(self.net.parameters()).dtype)

    def _shape_text(self) -> str:
        return ", ".join(map(str, self.sample_shape))

    @torch.no_grad()
    def forward(self, x) -> torch.Tensor:
        x = self._check(x)
        if self.net is None:
            return x.double()
        if len(x) == 0:
            return torch.empty(0, self.num_features, dtype=torch.float64, device=self.device)
        z = torch.cat([self.net.features(c) for c in x.split(CHUNK)]).double()
        return (z - self.shift.double()) / self.scale.double()

    @torch.no_grad()
    def standardise(self, x_train: torch.Tensor) -> FeatureExtractor:
        """Centre the features on their training mean and divide them by one scalar, their RMS
        about it.  One scalar keeps the geometry (no dimension is stretched) while a unit of
        distance means the same for every dataset, and KID's polynomial kernel
        (x.y / d + 1)^3 works at the scale it was designed for instead of at norms near 50."""
        self.shift.zero_()
        self.scale.fill_(1.0)
        z = self(x_train)
        shift = z.mean(0)
        self.shift.copy_(shift)
        self.scale.fill_(float((z - shift).pow(2).mean().sqrt().clamp_min(1e-12)))
        return self

    @torch.no_grad()
    def classify(self, x) -> torch.Tensor:
        """Predicted class indices (int64); only a classifier has them."""
        if self.kind != "classifier":
            raise FeatureError(f"a {self.kind} extractor has no classes: it was trained without "
                               "labels; classify needs one trained on a labelled dataset")
        x = self._check(x)
        if len(x) == 0:
            return torch.empty(0, dtype=torch.int64, device=self.device)
        return torch.cat([self.net(c).argmax(1) for c in x.split(CHUNK)])


# --- which data it was trained on -------------------------------------------------------

def _train_rows(ds: Dataset) -> Dataset:
    """The training split in id order: the exact input of training and of the fingerprint."""
    train = ds.subset("train")
    order = sorted(range(len(train.ids)), key=train.ids.__getitem__)
    index = torch.tensor(order, dtype=torch.long)
    return Dataset(train.name, train.x[index], None if train.y is None else train.y[index],
                   train.split[order], [train.ids[i] for i in order], train.kind,
                   train.class_names)


def dataset_fingerprint(ds: Dataset) -> str:
    """sha256 over the training split: per-sample hashes (the manifest's sha256 column, train
    rows in id order), their labels, the sample shape and the data kind.  Val and test rows do
    not enter it: they never reach training.  Training reads exactly these rows in this order,
    so equal fingerprints (and seed and steps) mean equal extractors."""
    train = _train_rows(ds)
    labels = ["-" for _ in train.ids] if train.y is None else [str(v) for v in train.y.tolist()]
    h = hashlib.sha256()
    h.update(f"{FORMAT}\nkind={ds.kind}\nshape={'x'.join(map(str, ds.sample_shape))}\n"
             f"labelled={ds.y is not None}\nn={len(train.ids)}\n".encode())
    for sha, label in zip(train.manifest()["sha256"], labels):
        h.update(f"{sha} {label}\n".encode())
    return h.hexdigest()


# --- training ---------------------------------------------------------------------------

def _kind_of(ds: Dataset) -> str:
    # vectors, and a table's rows as the model sees them (quantile-normal numbers, +-1
    # categories), are compared in their own coordinates
    if ds.kind in ("vector", "table"):
        return "identity"
    if ds.kind != "image":
        raise FeatureError(f"{ds.name}: unknown data kind {ds.kind!r}; accepted: 'image', 'vector', "
                           "'table'")
    return "autoencoder" if ds.y is None else "classifier"


def default_architecture(ds: Dataset) -> tuple[str, dict]:
    """(kind, architecture) that `train_feature_extractor` builds for this dataset."""
    kind = _kind_of(ds)
    shape = list(ds.sample_shape)
    if kind == "identity":
        return kind, {"sample_shape": shape, "num_features": shape[0]}
    arch = {"sample_shape": shape, "in_channels": shape[0], "image_size": shape[1:],
            "widths": list(WIDTHS), "hidden": HIDDEN, "num_features": NUM_FEATURES}
    if kind == "classifier":
        arch["num_classes"] = ds.n_classes
    return kind, arch


def default_steps(kind: str, n_train: int) -> int:
    """Classifier: about 40 epochs of batch 128, at least 400 steps (digits: 400, ~7 s on one
    CPU core, ~99 % test accuracy).  Autoencoder: twice that (digits: 800 steps, ~25 s, test
    reconstruction MSE ~0.03 against a pixel variance of 0.57).  At most 10 000."""
    if kind == "identity":
        return 0
    epochs, floor = (40, 400) if kind == "classifier" else (80, 800)
    return min(10_000, max(floor, math.ceil(epochs * n_train / BATCH_SIZE)))


@contextmanager
def _deterministic_cudnn():
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by its own random (dy, dx) in [-max_shift, max_shift], edges replicated
    (for digits: background)."""
    b, c, h, w = x.shape
    m = max_shift
    padded = F.pad(x, (m, m, m, m), mode="replicate")
    d = torch.randint(0, 2 * m + 1, (b, 2), generator=generator).to(x.device)
    rows = d[:, 0, None] + torch.arange(h, device=x.device)
    cols = d[:, 1, None] + torch.arange(w, device=x.device)
    return padded[torch.arange(b, device=x.device)[:, None, None, None],
                  torch.arange(c, device=x.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def _evaluate(extractor: FeatureExtractor, split: Dataset) -> dict:
    if len(split.ids) == 0:
        return {"accuracy": None, "mse": None}
    if extractor.kind == "classifier":
        predicted = extractor.classify(split.x).cpu()
        return {"accuracy": float((predicted == split.y).double().mean())}
    with torch.no_grad():
        x = split.x.to(extractor.device)
        recon = torch.cat([extractor.net(c) for c in x.split(CHUNK)])
        return {"mse": float(F.mse_loss(recon.double(), x.double()))}


def train_feature_extractor(ds: Dataset, *, seed: int = 0, steps: int | None = None,
                            device="cpu", progress: bool = False,
                            on_log: Callable[[int, dict], None] | None = None
                            ) -> tuple[FeatureExtractor, dict]:
    """Train the extractor for `ds` on its training split (see the module docstring for which
    kind) through diffusion.loop.optimise, and report how good it is on val and test.
    `progress` shows a progress bar; `on_log(step, metrics)` gets the loop's numbers ten times
    per run.  Returns (extractor, report).  Raises FeatureError for a bad seed or step count,
    an empty or single-class train split, or a loss that stops being finite."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise FeatureError(f"seed={seed!r}; accepted: an integer")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise FeatureError(f"steps={steps!r}; accepted: a positive integer or None (default)")
    kind, arch = default_architecture(ds)
    train = _train_rows(ds)
    if len(train.ids) == 0:
        raise FeatureError(f"{ds.name}: the train split is empty; the extractor is trained on "
                           "train rows only, so give the dataset a train split")
    report = {"kind": kind, "dataset": ds.name, "fingerprint": dataset_fingerprint(ds),
              "code_sha256": code_sha256([__name__]),
              "seed": seed, "num_features": arch["num_features"], "train_samples": len(train.ids)}
    if kind == "identity":
        extractor = FeatureExtractor(kind, arch).to(device)
        return extractor, {**report, "steps": 0, "seconds": 0.0}
    if kind == "classifier" and len(torch.unique(train.y)) < 2:
        raise FeatureError(f"{ds.name}: the train split holds a single class; a classifier "
                           "cannot learn features from it. Drop the labels (y=None) to train "
                           "an autoencoder instead")
    steps = default_steps(kind, len(train.ids)) if steps is None else steps
    device = torch.device(device)

    with torch.random.fork_rng(devices=[]):       # seeded init, global RNG left untouched
        torch.manual_seed(seed)
        net = _build_net(kind, arch)
    net = net.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    x, y = train.x.to(device), None if train.y is None else train.y.to(device)
    n, batch = len(x), min(BATCH_SIZE, len(x))
    max_shift = max(1, min(arch["image_size"]) // 8)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    # epochs of shuffled batches from one generator drawn in step order: deterministic, as
    # this training is never resumed (the extractor is retrained, not continued)
    epoch = {"order": torch.randperm(n, generator=generator), "pos": 0}

    def loss_at(step: int) -> torch.Tensor:
        if epoch["pos"] + batch > n:
            epoch.update(order=torch.randperm(n, generator=generator), pos=0)
        index = epoch["order"][epoch["pos"]:epoch["pos"] + batch].to(device)
        epoch["pos"] += batch
        xb = _shift(x[index], max_shift, generator)
        if kind == "classifier":
            return F.cross_entropy(net(xb), y[index])
        noise = torch.randn(xb.shape, generator=generator).to(device)
        return F.mse_loss(net(xb + DENOISE_SIGMA * noise), xb)

    start = time.perf_counter()
    try:
        with _deterministic_cudnn():
            optimise(net, optimizer, None, step=0, total=steps, loss_at=loss_at, lr=LR,
                     lr_warmup_steps=max(1, steps // 20),
                     lr_decay=lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)),
                     grad_clip=0.0, log_every=max(1, steps // 10), checkpoint_every=steps,
                     samples_per_step=batch, on_log=on_log, progress=progress,
                     desc=f"feature extractor ({kind})",
                     what=f"{ds.name}: the feature extractor ({kind})")
    except TrainingError as exc:
        raise FeatureError(f"{exc} Images are accepted in [-1, 1].") from None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    extractor = FeatureExtractor(kind, arch, net=net.eval(), class_names=ds.class_names).to(device)
    extractor.standardise(x)
    report.update(steps=steps, seconds=round(seconds, 3))
    val, test = _evaluate(extractor, ds.subset("val")), _evaluate(extractor, ds.subset("test"))
    if kind == "classifier":
        report.update(val_accuracy=val["accuracy"], test_accuracy=test["accuracy"])
    else:
        report.update(val_reconstruction_mse=val["mse"], test_reconstruction_mse=test["mse"])
    return extractor, report


# --- files ------------------------------------------------------------------------------

def _write_synced(path: Path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_feature_extractor(extractor: FeatureExtractor, report: dict, folder) -> Path:
    """Write weights.safetensors and extractor.json to `folder`, atomically; raises
    diffusion.atomic.WriteError (path and cause) when the disk refuses a write, with the
    previous folder left as it was."""
    target = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in extractor.state_dict().items()}
    with atomic_folder(target, "feature extractor") as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        weights = (tmp / WEIGHTS_FILE).read_bytes()
        _write_synced(tmp / WEIGHTS_FILE, weights)
        config = {"format": FORMAT, "kind": extractor.kind,
                  "architecture": extractor.architecture, "num_features": extractor.num_features,
                  "class_names": extractor.class_names,
                  "weights_sha256": hashlib.sha256(weights).hexdigest(), "report": report}
        _write_synced(tmp / CONFIG_FILE, json.dumps(config, indent=2).encode())
    return target


def load_feature_extractor(folder, device="cpu") -> tuple[FeatureExtractor, dict]:
    """Read a folder written by `save_feature_extractor`; returns (extractor, report)."""
    folder = Path(folder)
    accepted = "accepted: a folder written by save_feature_extractor"
    if not folder.is_dir():
        raise FeatureError(f"{folder}: {'is not a directory' if folder.exists() else 'does not exist'}"
                           f"; {accepted}")
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file():
        raise FeatureError(f"{config_path}: missing; {accepted}")
    try:
        config = json.loads(config_path.read_text())
        if config.get("format") != FORMAT:
            raise FeatureError(f"{config_path}: format {config.get('format')!r}; accepted: "
                               f"{FORMAT!r} (retrain to refresh an old extractor)")
        kind, arch, report = config["kind"], config["architecture"], config["report"]
        extractor = FeatureExtractor(kind, arch, class_names=config.get("class_names"))
        expected_sha = config["weights_sha256"]
    except FeatureError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FeatureError(f"{config_path}: unreadable ({exc!r}); {accepted}") from None
    if not weights_path.is_file():
        raise FeatureError(f"{weights_path}: missing; {accepted}")
    weights = weights_path.read_bytes()
    if hashlib.sha256(weights).hexdigest() != expected_sha:
        raise FeatureError(f"{weights_path}: sha256 does not match {CONFIG_FILE} (corrupt or "
                           "replaced); retrain the extractor")
    try:
        state = load_file(str(weights_path))
        extractor.load_state_dict(state, strict=True)
    except Exception as exc:  # safetensors raises its own error type on a damaged file
        raise FeatureError(f"{weights_path}: does not fit the network in {CONFIG_FILE} "
                           f"({exc}); {accepted}") from None
    return extractor.to(device), report


def load_or_train_feature_extractor(ds: Dataset, cache_dir, *, seed: int = 0, device="cpu",
                                    retrain: bool = False, steps: int | None = None,
                                    progress: bool = True
                                    ) -> tuple[FeatureExtractor, dict, bool]:
    """The extractor for `ds` from cache_dir/<fingerprint[:16]>/ when one trained on the same
    training rows with the same seed, steps, architecture and code (this module and what it
    imports) is there; otherwise train it and save it there.  Returns (extractor, report,
    reused) and logs one info record saying which (and one when a cached copy is unusable).
    Training takes minutes on a CPU: `progress` shows it (diffusion/progress.py)."""
    fingerprint = dataset_fingerprint(ds)
    folder = Path(cache_dir) / fingerprint[:16]
    kind, arch = default_architecture(ds)
    n_train = int((ds.split == "train").sum())
    want_steps = default_steps(kind, n_train) if steps is None else steps
    if not retrain and (folder / CONFIG_FILE).exists():
        try:
            extractor, report = load_feature_extractor(folder, device=device)
        except FeatureError as exc:
            logger.info("feature extractor: cached copy unusable (%s); retraining", exc)
        else:
            if (report.get("fingerprint") == fingerprint and report.get("seed") == seed
                    and report.get("steps") == want_steps and extractor.kind == kind
                    and report.get("code_sha256") == code_sha256([__name__])
                    and extractor.architecture == arch):
                logger.info("feature extractor: reused %s (%s)", folder, _summary(report))
                return extractor, report, True
    extractor, report = train_feature_extractor(ds, seed=seed, steps=steps, device=device,
                                                progress=progress)
    save_feature_extractor(extractor, report, folder)
    logger.info("feature extractor: trained in %.1f s, saved to %s (%s)", report["seconds"],
                folder, _summary(report))
    return extractor, report, False


def _summary(report: dict) -> str:
    kind = report["kind"]
    if kind == "classifier" and report.get("test_accuracy") is not None:
        return f"{kind}, test accuracy {100 * report['test_accuracy']:.1f} %"
    if kind == "autoencoder" and report.get("test_reconstruction_mse") is not None:
        return f"{kind}, test reconstruction MSE {report['test_reconstruction_mse']:.4f}"
    return kind
