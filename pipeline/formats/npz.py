"""The ``.npz`` container of the ADM-format files (samples, reference batches), byte-stable.

``np.savez`` streams each member through ``ZipFile.open(name, "w", force_zip64=True)``, and what
that writes depends on Python's patch release: 3.11.2 marks the entries as zip version 2.0, 3.11.7
as 4.5 with zip64 sizes. The same arrays then give 22 different bytes, and DVC a new hash for an
unchanged ``samples.npz`` on a machine with another Python. Here each member's ``.npy`` bytes are
made first and stored with ``writestr`` at their known size and a fixed date, which every Python
writes alike (zip64 only past 4 GiB). ``np.load``, the ADM evaluator and torch-fidelity read it as
before: stored, not compressed, one ``NAME.npy`` per array.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from vfmtok import files

_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold (np.savez's, too)


def write(dst: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """``arrays`` as ``dst`` (atomic), the same bytes whenever the arrays are the same."""

    def save(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for name, array in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asanyarray(array), allow_pickle=False)
                info = zipfile.ZipInfo(f"{name}.npy", date_time=_DATE)
                info.external_attr = 0o600 << 16
                zf.writestr(info, buf.getvalue())

    files.write_with(dst, save)
