"""ADM-format reference batches: FID against an .npz written from images equals FID against the
images themselves, through arr_0 or through precomputed mu/sigma; bad files are one line."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import FormatError
from pipeline.evaluation import measures
from pipeline.formats import reference_batch
from pipeline.layout import Layout
from tests.helpers import smooth_uint8
from vfmtok import fid as fd
from vfmtok import inception
from vfmtok.images import resize_uint8


@pytest.fixture(scope="module")
def extractor(tmp_path_factory):
    return inception.InceptionFeatures(tmp_path_factory.mktemp("inception"))


def _gfid(ref: measures.Reference, feats: np.ndarray) -> float:
    return fd.frechet_distance(ref.mu, ref.sigma, *fd.feature_stats(feats))


@pytest.mark.slow
def test_fid_against_a_reference_npz_equals_fid_against_its_images(tmp_path, extractor):
    layout = Layout(tmp_path)
    val = smooth_uint8(24, 32, seed=1)
    samples = smooth_uint8(24, 32, seed=2)
    val_feats = extractor.features(val)
    sample_feats = extractor.features(samples)
    direct = measures.reference(extractor, "", 0, val_feats, layout)
    reference_batch.write(tmp_path / "images.npz", images=val)
    via_images = measures.reference(extractor, str(tmp_path / "images.npz"), 0, val_feats, layout)
    mu, sigma = fd.feature_stats(val_feats)
    reference_batch.write(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    via_stats = measures.reference(extractor, str(tmp_path / "stats.npz"), 0, val_feats, layout)
    expected = fd.fid_from_features(val_feats, sample_feats)
    for ref in (direct, via_images, via_stats):
        assert _gfid(ref, sample_feats) == pytest.approx(expected, rel=1e-6)  # two sqrtm routes
    assert via_images.features is not None and via_stats.features is None  # KID/PR need images
    # A batch at another size is resized to the evaluation resolution first.
    reference_batch.write(tmp_path / "big.npz", images=resize_uint8(val, 64))
    big = measures.reference(extractor, str(tmp_path / "big.npz"), 32, val_feats, layout)
    assert big.features.shape == (24, 2048) and _gfid(big, sample_feats) == pytest.approx(expected, rel=0.2)


def test_bad_reference_batches_are_one_line_errors(tmp_path):
    with pytest.raises(FormatError, match="not found"):
        reference_batch.read(tmp_path / "none.npz")
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(FormatError, match="float.npz: arr_0 must be"):
        reference_batch.read(tmp_path / "float.npz")
    np.savez(tmp_path / "half.npz", mu=np.zeros(2048))
    with pytest.raises(FormatError, match="mu without the other"):
        reference_batch.read(tmp_path / "half.npz")
    np.savez(tmp_path / "small.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(FormatError, match="not 2048-d"):
        reference_batch.read(tmp_path / "small.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(FormatError, match="text.npz: not an .npz"):
        reference_batch.read(tmp_path / "text.npz")
