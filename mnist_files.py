"""MNIST's and Fashion-MNIST's own files: the four IDX files of the original distribution
(gzip-compressed or not), or Keras' mnist.npz. Both data sets are stored alike: 28x28 grey
images as unsigned bytes, and labels 0 to 9.

Every array is checked against what its file declares, before the data is read, so a
missing, truncated or corrupt file is one line that names it, and a lying header cannot make
the program set aside more memory than MNIST-style data takes.
"""

import gzip
import os
import struct
import zipfile
import zlib

import numpy as np

from reading import DataError, empty_split, first_line, open_regular_file, read_exactly

# The original distribution's file names, which `--data-dir` expects.
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
IMAGES_MAGIC = 2051  # unsigned bytes, three dimensions (count, rows, columns)
LABELS_MAGIC = 2049  # unsigned bytes, one dimension (count)
ORIGINAL_SIZE = 28  # MNIST and Fashion-MNIST images are 28x28
NUM_CLASSES = 10  # MNIST's digits 0 to 9; Fashion-MNIST's ten kinds of clothing
# MNIST has 60,000 training images and EMNIST's splits up to 240,000 (its two largest aside):
# more is not read, so that a small gzip bomb that declares 2**31 images is refused at once
# rather than after 0.5 GB, and the float32 images of an honest file take at most 1 GB.
MAX_IDX_IMAGES = 250_000
# The arrays of Keras' mnist.npz.
NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def read(data_dir, splits=("train", "test"), options=None):
    """(((x_train, y_train), (x_test, y_test)), None) from the IDX files or the Keras .npz in
    `data_dir`: uint8 images (N, 28, 28) and uint8 labels. A split left out of `splits` is not
    read from IDX files and comes back empty. The class names (None) are the data set's own;
    `options` are not needed, as these files fix their images' size."""
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: --data-dir is not a directory")
    npz_path = os.path.join(data_dir, "mnist.npz")
    if not os.path.exists(_find_file(data_dir, IDX_FILES["train_images"])) and os.path.exists(
        npz_path
    ):
        return read_npz(npz_path), None
    read_splits = []
    for split in ("train", "test"):
        if split not in splits:
            read_splits.append(empty_split(ORIGINAL_SIZE, ORIGINAL_SIZE))
            continue
        images_path = _find_file(data_dir, IDX_FILES[f"{split}_images"])
        labels_path = _find_file(data_dir, IDX_FILES[f"{split}_labels"])
        images = read_idx(images_path, IMAGES_MAGIC)
        labels = read_idx(labels_path, LABELS_MAGIC)
        _check_pair(images, labels, images_path, labels_path)
        read_splits.append((images, labels))
    return tuple(read_splits), None


def read_idx(path, expected_magic):
    """Return the uint8 array stored in an IDX file (gzip-compressed or not)."""
    path = os.fspath(path)
    kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
    try:
        with open_regular_file(path) as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if compressed else raw
            shape = _idx_shape(stream, path, kind, expected_magic)
            data = read_exactly(stream, int(np.prod(shape, dtype=np.int64)), path)
            if stream.read(1):
                raise DataError(
                    f"{path}: file has data past the {shape[0]} {kind} its header declares"
                )
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, zlib.error) as error:  # bad gzip stream, unreadable file
        raise DataError(f"{path}: cannot read file ({error})") from None
    array = np.frombuffer(data, dtype=np.uint8).reshape(shape)
    if kind == "labels" and array.max() >= NUM_CLASSES:
        raise DataError(f"{path}: label {array.max()} is out of range 0-{NUM_CLASSES - 1}")
    return array


def _idx_shape(stream, path, kind, expected_magic):
    """The shape an IDX file's header declares, checked: the magic number of `kind`, 28x28
    images, and 1 to MAX_IDX_IMAGES of them."""
    magic = struct.unpack(">i", read_exactly(stream, 4, path))[0]
    if magic != expected_magic:
        raise DataError(
            f"{path}: not an IDX {kind} file (magic number {magic}, expected {expected_magic})"
        )
    num_dimensions = 3 if kind == "images" else 1
    shape = struct.unpack(f">{num_dimensions}i", read_exactly(stream, 4 * num_dimensions, path))
    if kind == "images" and shape[1:] != (ORIGINAL_SIZE, ORIGINAL_SIZE):
        raise DataError(
            f"{path}: images are {shape[1]}x{shape[2]}, expected {ORIGINAL_SIZE}x{ORIGINAL_SIZE}"
        )
    if not 0 < shape[0] <= MAX_IDX_IMAGES:
        raise DataError(
            f"{path}: header declares {shape[0]:,} {kind}; this program reads 1 to "
            f"{MAX_IDX_IMAGES:,}"
        )
    return shape


def _find_file(data_dir, name):
    """The file as distributed (`.gz`), or already uncompressed."""
    for candidate in (name, name.removesuffix(".gz")):
        path = os.path.join(data_dir, candidate)
        if os.path.exists(path):
            return path
    return os.path.join(data_dir, name)  # reported as missing by read_idx


def _check_pair(images, labels, images_path, labels_path):
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels but {images_path} holds "
            f"{len(images)} images; the files do not belong together"
        )


def read_npz(path):
    """Keras' mnist.npz: each array's header is checked before its data is read, so a
    declared shape (or a zip bomb) cannot make numpy allocate more than MNIST-style data."""
    with open_regular_file(path) as file:
        try:
            _check_npz_headers(path, _npz_headers(file))
            file.seek(0)
            with np.load(file, allow_pickle=False) as arrays:
                loaded = {name: arrays[name] for name in NPZ_ARRAYS}
        except DataError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as error:
            raise DataError(
                f"{path}: not a readable Keras MNIST .npz ({first_line(error)})"
            ) from None
    for split in ("train", "test"):
        labels = loaded[f"y_{split}"]
        if labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise DataError(
                f"{path}: y_{split} must hold one label from 0 to {NUM_CLASSES - 1} for each "
                f"of the {len(labels):,} images"
            )
    return tuple(
        (loaded[f"x_{split}"], loaded[f"y_{split}"].astype(np.uint8)) for split in ("train", "test")
    )


def _check_npz_headers(path, headers):
    """MNIST-style arrays: uint8 images (N, 28, 28), N up to MAX_IDX_IMAGES, and N integer
    labels in a row."""
    for split in ("train", "test"):
        images_shape, images_dtype = headers[f"x_{split}"]
        labels_shape, labels_dtype = headers[f"y_{split}"]
        if images_dtype != np.uint8 or images_shape[1:] != (ORIGINAL_SIZE, ORIGINAL_SIZE):
            raise DataError(f"{path}: x_{split} must be uint8 images of shape (N, 28, 28)")
        count = images_shape[0]
        if not 0 < count <= MAX_IDX_IMAGES or labels_dtype.kind not in "iu":
            raise DataError(
                f"{path}: x_{split} must hold 1 to {MAX_IDX_IMAGES:,} images, and y_{split} "
                "their integer labels"
            )
        if labels_shape != (count,):
            raise DataError(
                f"{path}: y_{split} must hold one label from 0 to {NUM_CLASSES - 1} for each "
                f"of the {count:,} images"
            )


def _npz_headers(file):
    """{name: (shape, dtype)} of the arrays NPZ_ARRAYS, from their headers alone."""
    headers = {}
    with zipfile.ZipFile(file) as archive:
        for name in NPZ_ARRAYS:
            with archive.open(f"{name}.npy") as member:
                version = np.lib.format.read_magic(member)
                read_header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                if read_header is None:
                    raise ValueError(f"{name}: .npy format {version} is not read")
                shape, _, dtype = read_header(member)
            headers[name] = (tuple(shape), dtype)
    return headers
