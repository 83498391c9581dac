"""The .npz writer of samples and reference batches: np.load reads back what was written, and
the bytes are the same on every Python (np.savez's are not: see pipeline/formats/npz.py)."""

from __future__ import annotations

import hashlib
import zipfile

import numpy as np

from pipeline.formats import npz, samples

ARRAYS = {"arr_0": np.arange(96, dtype=np.uint8).reshape(2, 4, 4, 3),
          "labels": np.array([3, 7], np.int64)}
# Written by Python 3.11.2 and 3.11.7 alike (np.savez of the same arrays differs between them).
SHA256 = "a0136dc0ef334ad7d52f18b1747eb0588436a52179d249cfdfe5446598b59c6c"


def test_the_bytes_are_fixed_for_fixed_arrays(tmp_path):
    npz.write(tmp_path / "x.npz", ARRAYS)
    assert hashlib.sha256((tmp_path / "x.npz").read_bytes()).hexdigest() == SHA256
    with zipfile.ZipFile(tmp_path / "x.npz") as zf:
        infos = zf.infolist()
    assert [i.filename for i in infos] == ["arr_0.npy", "labels.npy"]
    assert {(i.compress_type, i.date_time, i.extract_version) for i in infos} == {
        (zipfile.ZIP_STORED, (1980, 1, 1, 0, 0, 0), 20)}


def test_np_load_reads_back_every_array(tmp_path):
    npz.write(tmp_path / "x.npz", ARRAYS)
    with np.load(tmp_path / "x.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["arr_0", "labels"]
        for k, v in ARRAYS.items():
            assert f[k].dtype == v.dtype and np.array_equal(f[k], v)


def test_samples_round_trip_through_the_stable_writer(tmp_path):
    samples.write(tmp_path, ARRAYS["arr_0"], ARRAYS["labels"])
    first = (tmp_path / samples.FILE).read_bytes()
    images, labels = samples.read(tmp_path)
    assert np.array_equal(images, ARRAYS["arr_0"]) and np.array_equal(labels, ARRAYS["labels"])
    samples.write(tmp_path, images, labels)
    assert (tmp_path / samples.FILE).read_bytes() == first
