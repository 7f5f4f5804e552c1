"""The data a user points the program at: read right, or refused with a clear error."""

import gzip
import os
import re
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import data
import mnist_files
from conftest import REPO, idx_bytes, write_idx, write_idx_files
from data import DataError
from mnist_files import IMAGES_MAGIC, LABELS_MAGIC


def write_dataset(folder, train_count=12, test_count=6):
    rng = np.random.default_rng(0)
    return write_idx_files(
        folder,
        rng.integers(0, 256, (train_count, 28, 28)),
        rng.integers(0, 10, train_count),
        rng.integers(0, 256, (test_count, 28, 28)),
        rng.integers(0, 10, test_count),
    )


def test_reads_idx_files_back_exactly(tmp_path):
    arrays = write_dataset(tmp_path)
    (x_train, y_train), (x_test, y_test) = data.load_dataset("mnist", str(tmp_path))
    np.testing.assert_array_equal(x_train, arrays["train_images"])
    np.testing.assert_array_equal(y_train, arrays["train_labels"])
    np.testing.assert_array_equal(x_test, arrays["test_images"])
    np.testing.assert_array_equal(y_test, arrays["test_labels"])
    assert x_train.dtype == np.uint8


def test_reads_uncompressed_idx_and_keras_npz(tmp_path):
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    path = write_idx(tmp_path / "images-idx3-ubyte", images, IMAGES_MAGIC, compress=False)
    np.testing.assert_array_equal(mnist_files.read_idx(path, IMAGES_MAGIC), images)

    npz_dir = tmp_path / "npz"
    npz_dir.mkdir()
    labels = np.array([3, 4], dtype=np.uint8)
    np.savez(
        npz_dir / "mnist.npz",
        x_train=images.astype(np.uint8),
        y_train=labels,
        x_test=images.astype(np.uint8),
        y_test=labels,
    )
    (x_train, y_train), _ = data.load_dataset("mnist", str(npz_dir))
    np.testing.assert_array_equal(y_train, labels)


def test_limit_takes_the_first_images_and_a_sixth_for_testing(tmp_path):
    arrays = write_dataset(tmp_path, train_count=30, test_count=10)
    (x_train, _), (x_test, _) = data.load_dataset("mnist", str(tmp_path), limit=12)
    assert len(x_train) == 12 and len(x_test) == 2
    np.testing.assert_array_equal(x_test, arrays["test_images"][:2])


def test_missing_file_is_named(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / mnist_files.IDX_FILES["test_labels"]).unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: file not found"):
        data.load_dataset("mnist", str(tmp_path))


def test_wrong_magic_number_is_named(tmp_path):
    write_dataset(tmp_path)
    write_idx(
        tmp_path / mnist_files.IDX_FILES["train_images"], np.zeros((12, 28, 28)), LABELS_MAGIC
    )
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte.gz: not an IDX images file \(magic number 2049"
    ):
        data.load_dataset("mnist", str(tmp_path))


def test_truncated_gzip_is_named(tmp_path):
    write_dataset(tmp_path)
    path = tmp_path / mnist_files.IDX_FILES["train_images"]
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte.gz: (cannot read|file is truncated)"
    ):
        data.load_dataset("mnist", str(tmp_path))


def test_truncated_data_says_how_much_is_there(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 28)), IMAGES_MAGIC)[:-100]))
    with pytest.raises(
        DataError, match=r"images.gz: file is truncated \(3820 of 3920 data bytes present\)"
    ):
        mnist_files.read_idx(path, IMAGES_MAGIC)


def test_mismatched_counts_are_named(tmp_path):
    write_dataset(tmp_path)
    write_idx(tmp_path / mnist_files.IDX_FILES["train_labels"], np.zeros(11), LABELS_MAGIC)
    with pytest.raises(
        DataError,
        match=r"train-labels-idx1-ubyte.gz: 11 labels but .*train-images-idx3-ubyte.gz holds 12",
    ):
        data.load_dataset("mnist", str(tmp_path))


def test_wrong_image_size_and_bad_labels_are_refused(tmp_path):
    path = write_idx(tmp_path / "small.gz", np.zeros((3, 20, 20)), IMAGES_MAGIC)
    with pytest.raises(DataError, match="images are 20x20, expected 28x28"):
        mnist_files.read_idx(path, IMAGES_MAGIC)
    path = write_idx(tmp_path / "labels.gz", np.array([1, 12]), LABELS_MAGIC)
    with pytest.raises(DataError, match="label 12 is out of range"):
        mnist_files.read_idx(path, LABELS_MAGIC)


def test_no_download_and_no_data_dir_says_how_to_supply_data(monkeypatch):
    import keras

    def offline():
        raise Exception(
            "URL fetch failure on https://example.invalid/mnist.npz: None -- no network"
        )

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(DataError, match="could not download mnist .*pass --data-dir DIR"):
        data.load_dataset("mnist")


def test_each_data_set_is_one_entry():
    assert list(data.DATASETS) == ["mnist", "fashion_mnist", "cifar10", "folder"]
    colours = {name: entry.colour for name, entry in data.DATASETS.items()}
    assert colours == {"mnist": "grey", "fashion_mnist": "grey", "cifar10": "rgb", "folder": None}
    padded = [name for name, entry in data.DATASETS.items() if entry.original_size == 28]
    assert padded == ["mnist", "fashion_mnist"] and data.NUM_CLASSES == 10
    assert [name for name, entry in data.DATASETS.items() if entry.whole_folder] == ["folder"]
    for name, entry in data.DATASETS.items():
        assert entry.colour in ("grey", "rgb", None) and entry.keras_dataset in (name, None)
        assert entry.description and "\n" not in entry.description + entry.files
    with pytest.raises(DataError, match=r"^unknown dataset 'emnist'; choose one of mnist, "):
        data.load_images("emnist", image_size=32)
    with pytest.raises(DataError, match="load_images reads them at the size it is given"):
        data.load_dataset("folder", ".")


def test_a_new_data_set_is_an_entry_and_its_reader(monkeypatch):
    def read(data_dir, splits, options):
        images = np.full((12, options.image_size, options.image_size, 3), 51, np.uint8)
        return ((images, np.arange(12) % 2), (images[:6], np.arange(6) % 2)), None

    entry = data.Dataset(
        read=read,
        keras_dataset=None,
        files="anything",
        colour="grey",
        class_names=("odd", "even"),
        original_size=None,
        description="a test's own images",
    )
    monkeypatch.setitem(data.DATASETS, "tiny", entry)
    loaded = data.load_images("tiny", "somewhere", limit=12, image_size=8)
    assert loaded.train_images.shape == (12, 8, 8, 1) and loaded.class_names == ["odd", "even"]
    np.testing.assert_allclose(loaded.test_images, 0.2)
    assert loaded.test_labels.tolist() == [0, 1]


def test_the_readers_import_nothing_of_data_py():
    """One way: data.py imports the readers, the readers import reading.py and nothing else of
    the program, so no import goes round in a loop."""
    import ast

    program = {"data", "mnist_files", "cifar10_batches", "image_folder"}
    for module in ("reading", "mnist_files", "cifar10_batches", "image_folder"):
        tree = ast.parse((REPO / f"{module}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        assert imported.isdisjoint(program), module


def test_prepare_images_pads_with_zeros_and_scales():
    images = np.full((2, 28, 28), 255, dtype=np.uint8)
    prepared = data.prepare_images(images, 32)
    assert prepared.shape == (2, 32, 32, 1) and prepared.dtype == np.float32
    assert prepared[:, 2:30, 2:30].min() == 1.0
    assert prepared[:, :2].max() == 0.0 and prepared[:, 30:].max() == 0.0
    assert prepared[:, :, :2].max() == 0.0 and prepared[:, :, 30:].max() == 0.0


# Hostile files: whatever the bytes, the reader returns a valid array or raises DataError,
# quickly, and never allocates what a lying header declares.


@settings(
    max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payload=st.binary(max_size=3000), compress=st.booleans())
def test_random_bytes_give_data_error_or_valid_array(tmp_path, payload, compress):
    path = tmp_path / "random.gz"
    path.write_bytes(gzip.compress(payload) if compress else payload)
    for magic in (IMAGES_MAGIC, LABELS_MAGIC):
        try:
            array = mnist_files.read_idx(path, magic)
        except DataError:
            continue
        assert array.dtype == np.uint8 and len(array) > 0


@settings(
    max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    count=st.integers(-(2**31), 2**31 - 1),
    rows=st.integers(-(2**31), 2**31 - 1),
    columns=st.integers(-(2**31), 2**31 - 1),
    cut=st.integers(0, 4000),
)
@example(count=3, rows=28, columns=28, cut=4000)  # the honest file: read back whole
@example(count=3, rows=28, columns=28, cut=2367)  # one byte short
def test_lying_headers_give_data_error(tmp_path, count, rows, columns, cut):
    real = np.zeros((3, 28, 28), dtype=np.uint8).tobytes()
    path = tmp_path / "lying.gz"
    path.write_bytes(
        gzip.compress((struct.pack(">4i", IMAGES_MAGIC, count, rows, columns) + real)[:cut])
    )
    honest = (count, rows, columns) == (3, 28, 28) and cut >= 16 + len(real)
    if honest:
        assert mnist_files.read_idx(path, IMAGES_MAGIC).shape == (3, 28, 28)
    else:
        with pytest.raises(DataError):
            mnist_files.read_idx(path, IMAGES_MAGIC)


def test_huge_declared_count_does_not_allocate_it(tmp_path):
    import tracemalloc

    path = tmp_path / "huge.gz"
    path.write_bytes(
        gzip.compress(struct.pack(">4i", IMAGES_MAGIC, 2**31 - 1, 28, 28) + bytes(28 * 28 * 10))
    )
    tracemalloc.start()
    with pytest.raises(DataError, match="declares 2,147,483,647 images; this program reads 1 to"):
        mnist_files.read_idx(path, IMAGES_MAGIC)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 * 2**20  # the file holds ~8 KB; the header claims 1.6 TB
    # A count within the limit, but more than the file holds: read in pieces, then refused.
    path.write_bytes(gzip.compress(struct.pack(">4i", IMAGES_MAGIC, 250_000, 28, 28) + bytes(99)))
    with pytest.raises(DataError, match=r"truncated \(99 of 196000000 data bytes present\)"):
        mnist_files.read_idx(path, IMAGES_MAGIC)


def test_a_pipe_or_a_device_in_place_of_a_file_is_refused(tmp_path):
    write_dataset(tmp_path)
    images = tmp_path / mnist_files.IDX_FILES["train_images"]
    for make in (os.mkfifo, lambda path: os.symlink("/dev/zero", path)):
        images.unlink()
        make(images)
        with pytest.raises(DataError, match=f"^{images}: not a regular file .*own files$"):
            data.load_dataset("mnist", str(tmp_path))


def write_npz(path, **arrays):
    """A .npz of these arrays; an array given as (shape, dtype) is a header alone, with no
    data, as a zip bomb or a lying file would declare it."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                if isinstance(array, tuple):
                    shape, dtype = array
                    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
                    np.lib.format.write_array_header_1_0(member, header)
                else:
                    np.lib.format.write_array(member, np.asarray(array))
    return path


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.array([3, 200], np.uint8), "y_train must hold one label from 0 to 9 for each of the 2"),
        (np.array([3, -1], np.int8), "y_train must hold one label from 0 to 9 for each of the 2"),
        (np.array([[3], [4]]), "y_train must hold one label from 0 to 9 for each of the 2"),
        (np.array([3.0, 4.0]), "x_train must hold 1 to 250,000 images, and y_train their integer"),
    ],
)
def test_npz_labels_are_checked(tmp_path, labels, message):
    images = np.zeros((2, 28, 28), np.uint8)
    good = np.array([1, 2], np.uint8)
    path = write_npz(
        tmp_path / "mnist.npz", x_train=images, y_train=labels, x_test=images, y_test=good
    )
    with pytest.raises(DataError, match=f"^{path}: {re.escape(message)}"):
        data.load_dataset("mnist", str(tmp_path))


def test_an_npz_declaring_a_huge_shape_is_refused_before_reading(tmp_path):
    import tracemalloc

    images = np.zeros((2, 28, 28), np.uint8)
    labels = np.array([1, 2], np.uint8)
    write_npz(
        tmp_path / "mnist.npz",
        x_train=((2**40, 28, 28), np.uint8),
        y_train=((2**40,), np.uint8),
        x_test=images,
        y_test=labels,
    )
    tracemalloc.start()
    with pytest.raises(DataError, match="x_train must hold 1 to 250,000 images"):
        data.load_dataset("mnist", str(tmp_path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10 * 2**20
    (x_train, y_train), _ = mnist_files.read_npz(
        write_npz(
            tmp_path / "honest.npz",
            x_train=images,
            y_train=labels.astype(np.int64),
            x_test=images,
            y_test=labels,
        )
    )
    assert y_train.dtype == np.uint8 and y_train.tolist() == [1, 2]
