"""Token files: schema, metadata, validation errors that name the file and row, streaming."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.formats.tokens import TokenFile, TokenFileError, TokenWriter
from pipeline.training_inputs.token_stream import TokenStream, iter_batches
from tests.helpers import random_tokens, write_token_file


def write(path, n=50, codebook=1024, n_tokens=16, row_group=16, seed=0):
    """A file written 7 rows a call (the writer regroups them), and the ids and labels in it."""
    write_token_file(path, n, codebook, n_tokens, row_group, classes=10, seed=seed,
                     meta={"tokenizer_sha256": "abc"}, chunk=7)
    return random_tokens(n, codebook, n_tokens, classes=10, seed=seed)


def test_round_trip_pandas_and_dataset(tmp_path):
    path = tmp_path / "train.parquet"
    tokens, labels = write(path)
    df = pd.read_parquet(path)
    assert list(df.columns) == ["image_id", "split", "label", "tokens", "flipped"]
    np.testing.assert_array_equal(np.stack(df["tokens"].to_numpy()), tokens)
    table = ds.dataset(path).to_table()
    assert table.schema.field("tokens").type == pa.list_(pa.uint16())
    assert table.schema.field("label").type == pa.int32()
    pf = pq.ParquetFile(path)
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    assert pf.num_row_groups == 4 and pf.metadata.row_group(0).num_rows == 16
    f = TokenFile(path)
    assert f.codebook_size == 1024 and f.meta["tokenizer_sha256"] == "abc" and f.n_tokens == 16
    got = np.concatenate([t for t, _ in f.iter_row_groups()])
    np.testing.assert_array_equal(got, tokens)


def test_large_codebook_uses_int32(tmp_path):
    path = tmp_path / "big.parquet"
    write(path, codebook=70000)
    assert TokenFile(path)._pf.schema_arrow.field("tokens").type == pa.list_(pa.int32())


def test_writer_refuses_out_of_range_and_leaves_no_file(tmp_path):
    path = tmp_path / "t.parquet"
    w = TokenWriter(path, 10, {"n_tokens": 2}, 8)
    with pytest.raises(TokenFileError, match="out of"):
        w.write(["a"], "train", [0], np.array([[3, 10]]), False)
    w.abort()
    assert not path.exists() and not list(tmp_path.iterdir())


def _rewrite(path, out, fn):
    table = fn(pq.read_table(path))
    pq.write_table(table, out, row_group_size=16)
    return out


def test_id_out_of_range_names_file_and_row(tmp_path):
    src = tmp_path / "ok.parquet"
    write(src, codebook=1024)
    bad = tmp_path / "bad.parquet"

    def shrink(t):  # claim a smaller codebook than the ids use
        meta = dict(t.schema.metadata)
        meta[b"vfmtok.codebook_size"] = b"100"
        return t.replace_schema_metadata(meta)

    _rewrite(src, bad, shrink)
    with pytest.raises(TokenFileError) as info:
        TokenFile(bad).validate()
    assert str(bad) in str(info.value) and "row 0" in str(info.value)


def test_missing_column_and_wrong_dtype(tmp_path):
    src = tmp_path / "ok.parquet"
    write(src)
    no_label = _rewrite(src, tmp_path / "nolabel.parquet", lambda t: t.drop(["label"]))
    with pytest.raises(TokenFileError, match="missing column 'label'") as info:
        TokenFile(no_label)
    assert str(no_label) in str(info.value)

    def as_int64(t):
        i = t.schema.get_field_index("label")
        return t.set_column(i, pa.field("label", pa.int64()), t.column("label").cast(pa.int64()))

    wrong = _rewrite(src, tmp_path / "wrong.parquet", as_int64)
    with pytest.raises(TokenFileError, match="'label' has type int64"):
        TokenFile(wrong)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1]}), plain)
    with pytest.raises(TokenFileError, match="codebook_size"):
        TokenFile(plain)


def test_stream_is_a_function_of_step_and_covers_each_epoch(tmp_path):
    path = tmp_path / "t.parquet"
    tokens, _ = write(path, n=50)
    f = TokenFile(path)
    a = TokenStream(f, batch_size=10, seed=3)
    seen = np.concatenate([a.batch(s)[0].numpy() for s in range(5)])  # exactly one epoch
    assert sorted(map(tuple, seen)) == sorted(map(tuple, tokens))
    b = TokenStream(TokenFile(path), batch_size=10, seed=3)
    for s in (7, 2, 12):  # any order, same batches
        torch.testing.assert_close(b.batch(s)[0], TokenStream(f, 10, 3).batch(s)[0])
    assert not torch.equal(TokenStream(f, 10, 4).batch(0)[0], a.batch(0)[0])


def test_stream_shards_row_groups_across_ranks(tmp_path):
    path = tmp_path / "t.parquet"
    write(path, n=64)
    f = TokenFile(path)
    r0, r1 = TokenStream(f, 8, 0, rank=0, world=2), TokenStream(f, 8, 0, rank=1, world=2)
    assert set(r0.groups).isdisjoint(r1.groups) and len(r0.groups) + len(r1.groups) == 4
    assert sum(len(t) for t, _ in iter_batches(f, 10, limit=25)) == 25
