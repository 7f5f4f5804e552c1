"""Data: MNIST-style images from Keras' download cache or from the original IDX files.

The IDX reader checks every header field against the file it reads, so a missing,
truncated or corrupt file stops the program with one line that names the file,
instead of a traceback or, worse, a silently wrong array.
"""

import gzip
import os
import struct
import zlib

import numpy as np

# Class names label the plots; the order is the label value.
CLASS_NAMES = {
    "mnist": [str(digit) for digit in range(10)],
    "fashion_mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
}

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
NUM_CLASSES = 10
READ_CHUNK_BYTES = 1 << 20  # read in pieces so a lying header cannot make us allocate


class DataError(ValueError):
    """A data file is missing or is not what it claims to be."""


def _read_exactly(stream, size, path):
    """Read `size` bytes, never allocating more than the stream really holds."""
    chunks, remaining = [], size
    while remaining > 0:
        chunk = stream.read(min(remaining, READ_CHUNK_BYTES))
        if not chunk:
            raise DataError(
                f"{path}: file is truncated ({size - remaining} of {size} data bytes "
                "present); download it again"
            )
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_idx(path, expected_magic):
    """Return the uint8 array stored in an IDX file (gzip-compressed or not)."""
    path = os.fspath(path)
    kind = "images" if expected_magic == IMAGES_MAGIC else "labels"
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if compressed else raw
            header = _read_exactly(stream, 4, path)
            magic = struct.unpack(">i", header)[0]
            if magic != expected_magic:
                raise DataError(
                    f"{path}: not an IDX {kind} file (magic number {magic}, "
                    f"expected {expected_magic})"
                )
            num_dimensions = 3 if kind == "images" else 1
            shape = struct.unpack(
                f">{num_dimensions}i", _read_exactly(stream, 4 * num_dimensions, path)
            )
            if kind == "images" and shape[1:] != (ORIGINAL_SIZE, ORIGINAL_SIZE):
                raise DataError(
                    f"{path}: images are {shape[1]}x{shape[2]}, "
                    f"expected {ORIGINAL_SIZE}x{ORIGINAL_SIZE}"
                )
            if shape[0] <= 0:
                raise DataError(f"{path}: header declares {shape[0]} {kind}")
            data = _read_exactly(stream, int(np.prod(shape, dtype=np.int64)), path)
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


def load_from_directory(data_dir):
    """Read ((x_train, y_train), (x_test, y_test)) from IDX files or a Keras `.npz`."""
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: --data-dir is not a directory")
    npz_path = os.path.join(data_dir, "mnist.npz")
    if not os.path.exists(_find_file(data_dir, IDX_FILES["train_images"])) and os.path.exists(
        npz_path
    ):
        return _load_npz(npz_path)
    splits = []
    for split in ("train", "test"):
        images_path = _find_file(data_dir, IDX_FILES[f"{split}_images"])
        labels_path = _find_file(data_dir, IDX_FILES[f"{split}_labels"])
        images = read_idx(images_path, IMAGES_MAGIC)
        labels = read_idx(labels_path, LABELS_MAGIC)
        _check_pair(images, labels, images_path, labels_path)
        splits.append((images, labels))
    return tuple(splits)


def _load_npz(path):
    try:
        with np.load(path, allow_pickle=False) as arrays:
            splits = ((arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"]))
    except (OSError, ValueError, KeyError, zlib.error) as error:
        raise DataError(f"{path}: not a readable Keras MNIST .npz ({error})") from None
    for images, labels in splits:
        if images.dtype != np.uint8 or images.shape[1:] != (ORIGINAL_SIZE, ORIGINAL_SIZE):
            raise DataError(
                f"{path}: images must be uint8 of shape (N, 28, 28), "
                f"got {images.dtype} {images.shape}"
            )
        _check_pair(images, labels, path, path)
    return splits


def load_from_keras(dataset):
    """Keras' own download, cached under $KERAS_HOME (default ~/.keras/datasets)."""
    import keras

    loader = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist}[dataset]
    try:
        return loader.load_data()
    except Exception as error:  # Keras raises a bare Exception when the download fails
        raise DataError(
            f"could not download {dataset} ({str(error).splitlines()[0]}). Without internet, "
            "pass --data-dir DIR with the four original IDX .gz files (or mnist.npz)"
        ) from None


def load_dataset(dataset, data_dir=None, limit=None):
    """Train and test arrays (uint8 images N x 28 x 28, uint8 labels), optionally cut to `limit`."""
    if dataset not in CLASS_NAMES:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(CLASS_NAMES)}")
    (x_train, y_train), (x_test, y_test) = (
        load_from_directory(data_dir) if data_dir else load_from_keras(dataset)
    )
    if limit:
        # A sixth, as 10,000 test images are to 60,000 training images.
        test_limit = limit // 6
        if test_limit == 0:
            raise DataError(f"--limit {limit} leaves no test images; use --limit 6 or more")
        x_train, y_train = x_train[:limit], y_train[:limit]
        x_test, y_test = x_test[:test_limit], y_test[:test_limit]
    return (x_train, y_train), (x_test, y_test)


def prepare_images(images, image_size):
    """uint8 (N, 28, 28) -> float32 (N, size, size, 1) in [0, 1], zero-padded evenly."""
    padding = image_size - images.shape[1]
    if padding < 0 or padding % 2:
        raise ValueError(
            f"image_size {image_size} must be at least {images.shape[1]} and differ "
            "from it by an even number of pixels"
        )
    half = padding // 2
    padded = np.pad(images, ((0, 0), (half, half), (half, half)))
    return (padded.astype(np.float32) / 255.0)[..., np.newaxis]


def one_hot(labels):
    """Labels 0-9 as float32 one-hot rows, the conditional VAE's second input."""
    return np.eye(NUM_CLASSES, dtype=np.float32)[labels]


def make_dataset(images, batch_size, shuffle=False, seed=None, labels=None):
    """A tf.data pipeline of image batches, reshuffled every epoch when training.

    With `labels` (a conditional VAE) each element is `((images, one_hot_labels),)`: the
    extra nesting makes Keras read the pair as the model's input, not as (x, y).
    """
    import tensorflow as tf

    elements = images if labels is None else ((images, one_hot(labels)),)
    dataset = tf.data.Dataset.from_tensor_slices(elements)
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    # Two batches ready ahead, and tf.data's autotuning off: the images are already in
    # memory, so there is little to tune, and on a CPU with few cores the tuner can leave a
    # core idle for whole epochs (docs/performance.md).
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.batch(batch_size).prefetch(2).with_options(options)
