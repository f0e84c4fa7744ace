"""A table model is scored on the rows a user receives (diffusion/tabular/vectors.py
received_vectors): generated vectors that decode to the same rows score the same."""

from __future__ import annotations

import torch

from diffusion.evaluation import quality_vs_nfe
from diffusion.features import train_feature_extractor
from diffusion.tabular.vectors import received_vectors
from tasks.steps.prepare_dataset import load_data, prepare_dataset
from test_table_data_step import small_table, table_settings


def _dataset(tmp_path, categorical):
    tmp_path.mkdir(parents=True, exist_ok=True)
    small_table(400).to_csv(tmp_path / "rows.csv", index=False)
    data = table_settings(tmp_path / "rows.csv", categorical=categorical)
    return load_data(data, prepare_dataset(data, root=tmp_path / "processed", log=lambda _: None))


def _softened(ds) -> torch.Tensor:
    """The dataset's vectors with every category dimension shrunk towards 0 (same argmax and
    signs, so the same decoded labels) and every number moved by far less than its decimals."""
    x = ds.x.clone()
    categorical = x.abs().eq(1.0).all(0)        # +-1 in every row: a category dimension
    x[:, categorical] *= 0.3
    x[:, ~categorical] += 1e-7
    return x


def test_received_vectors_are_those_of_the_decoded_rows(tmp_path):
    for categorical in ("onehot", "analog_bits"):
        ds = _dataset(tmp_path / categorical, categorical)
        soft = _softened(ds)
        assert not torch.equal(soft, ds.x)
        received = received_vectors(ds.table, soft)
        assert received.dtype == torch.float32 and received.shape == ds.x.shape
        # the real rows' vectors are what their decoded rows encode to, so the softened
        # ones come back to them: categories exactly, numbers through the same rounding
        assert torch.allclose(received, ds.x, atol=1e-5), categorical


class _Returns(torch.nn.Module):
    """A 'denoiser' whose every sample is row i of `rows` (the sampler's output is its last
    denoised value), to score fixed vectors through quality_vs_nfe."""

    def __init__(self, rows):
        super().__init__()
        self.rows = rows

    def forward(self, x, sigma):
        return self.rows[: len(x)].to(x.dtype)


def test_soft_categories_score_like_the_rows_they_decode_to(tmp_path):
    ds = _dataset(tmp_path, "analog_bits")
    train, test = ds.subset("train"), ds.subset("test")
    extractor, _ = train_feature_extractor(ds)      # a table: the identity

    def fid(rows, received=None):
        table = quality_vs_nfe(_Returns(rows), tuple(ds.x.shape[1:]), extractor, train_x=train.x,
                               test_x=test.x, samplers=["ddim"], nfes=[1], n=len(rows), seed=0,
                               replicates=0, received=received)
        return float(table["fid"].iloc[0])

    hard = train.x[:200]
    soft = _softened(train)[:200]
    assert fid(soft) > fid(hard) + 0.1          # as generated, the soft bits are far off
    receive = lambda x: received_vectors(ds.table, x)   # noqa: E731
    assert abs(fid(soft, receive) - fid(hard)) < 1e-4
