"""The tests that need real MNIST or Fashion-MNIST find it in ../shared/data, else where
Keras' load_data() downloaded it; they skip, saying how to get it, where neither holds it."""

import numpy as np
import pytest

import data
from conftest import real_data_dir, write_idx_files


def digits(count, seed):
    """`count` random 28x28 uint8 images and labels 0 to 9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, 28, 28), np.uint8), rng.integers(0, 10, count, np.uint8)


def test_real_data_comes_from_keras_cache_without_a_shared_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    absent = tmp_path / "no-shared-data"
    for name in ("mnist", "fashion_mnist"):
        with pytest.raises(pytest.skip.Exception, match=rf"keras\.datasets\.{name}\.load_data"):
            real_data_dir(name, absent)

    # As keras.datasets.mnist.load_data() leaves it: $KERAS_HOME/datasets/mnist.npz.
    cache = tmp_path / "keras" / "datasets"
    (cache / "fashion-mnist").mkdir(parents=True)
    (x_train, y_train), (x_test, y_test) = digits(12, 0), digits(6, 1)
    np.savez(cache / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    # As keras.datasets.fashion_mnist.load_data() leaves it: the four IDX files in a folder.
    clothes = write_idx_files(cache / "fashion-mnist", *digits(8, 2), *digits(4, 3))

    mnist = data.load_dataset("mnist", real_data_dir("mnist", absent))
    for read, expected in zip(
        (array for split in mnist for array in split),
        (x_train, y_train, x_test, y_test),
        strict=True,
    ):
        np.testing.assert_array_equal(read, expected)
    fashion = data.load_dataset("fashion_mnist", real_data_dir("fashion_mnist", absent))
    for read, expected in zip(
        (array for split in fashion for array in split), clothes.values(), strict=True
    ):
        np.testing.assert_array_equal(read, expected)


def test_a_shared_copy_comes_first(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    (tmp_path / "keras" / "datasets").mkdir(parents=True)
    (tmp_path / "keras" / "datasets" / "mnist.npz").touch()
    shared = tmp_path / "shared"
    (shared / "mnist").mkdir(parents=True)
    write_idx_files(shared / "mnist", *digits(12, 0), *digits(6, 1))
    assert real_data_dir("mnist", shared) == str(shared / "mnist")
