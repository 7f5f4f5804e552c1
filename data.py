"""Data: the images a run learns, read from Keras' download cache or from the user's files.

Every data set is one entry of DATASETS: how its files are read, which Keras download stands
in when no files are given, its colour, its class names, and whether its images are padded
or resized to the model's size. A new data set is an entry and its reader. The readers, one
module each, check what they read against what the file claims, so a missing, truncated or
corrupt file stops the program with one line that names it (a DataError), instead of a
traceback or, worse, a silently wrong array:

- mnist_files.py: MNIST's and Fashion-MNIST's IDX files (gzip-compressed or not) or mnist.npz;
- cifar10_batches.py: CIFAR-10's Python batches (or binary version): the folder, its parent
  or the archive itself, read without ever running what a pickle asks to run;
- image_folder.py: a folder of PNG / JPEG images, one sub-folder per class or flat
  (unlabelled), decoded by a tf.data pipeline and split as Keras splits a folder.

`load_images` turns any of them into what the model reads: float32 images in [0, 1] of
shape (N, size, size, channels), with their labels.
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import cifar10_batches
import image_folder
import mnist_files
from reading import DataError, ReadOptions, first_line

CHANNELS = {"grey": 1, "rgb": 3}


@dataclass(frozen=True)
class Dataset:
    """One --dataset: everything the program needs to know of it, in one place.

    read: its reader, `read(data_dir, splits, options)` -> (((x_train, y_train), (x_test,
        y_test)), class names or None): uint8 images as stored, (N, H, W) or (N, H, W, C),
        and uint8 labels (None for unlabelled images); a split left out of `splits` comes
        back empty; `options` (a ReadOptions) are what a reader of images of no one size
        needs. Class names None: the entry's own.
    keras_dataset: the module of keras.datasets whose load_data() downloads it, read when no
        --data-dir is given; None: there is no download, --data-dir is needed.
    files: what --data-dir holds for it, as a message tells a user without the download.
    colour: its images' colour as stored ("grey" or "rgb"), which chooses the settings for
        that colour; None: known once its files are read (grey if every image is grey).
    class_names: what its labels 0, 1, ... stand for; None: they come from its files.
    original_size: the side of its images, for MNIST-style digits, which keep their pixels
        and are padded to the model's size (so that size is at least this); None: its
        images are resized to the model's size.
    description: what it is, in a line.
    whole_folder: --data-dir is read with every sub-folder in it, so a run's outputs must
        not be written inside it (they would be read as images next time).
    """

    read: Callable
    keras_dataset: str | None
    files: str
    colour: str | None
    class_names: tuple | None
    original_size: int | None
    description: str
    whole_folder: bool = False


# Every --dataset, in the order --help lists them.
DATASETS = {
    "mnist": Dataset(
        read=mnist_files.read,
        keras_dataset="mnist",
        files="the four original IDX .gz files (or mnist.npz)",
        colour="grey",
        class_names=tuple(str(digit) for digit in range(10)),
        original_size=mnist_files.ORIGINAL_SIZE,
        description="MNIST: 70,000 handwritten digits, 28x28 grey",
    ),
    "fashion_mnist": Dataset(
        read=mnist_files.read,  # stored exactly as MNIST is
        keras_dataset="fashion_mnist",
        files="the four original IDX .gz files (or mnist.npz)",
        colour="grey",
        class_names=(
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
        ),
        original_size=mnist_files.ORIGINAL_SIZE,
        description="Fashion-MNIST: 70,000 pictures of clothing in ten kinds, 28x28 grey",
    ),
    "cifar10": Dataset(
        read=cifar10_batches.read,  # the class names come from its batches.meta
        keras_dataset="cifar10",
        files=(
            "CIFAR-10's Python batches (the folder cifar-10-batches-py, its parent, or "
            "cifar-10-python.tar.gz)"
        ),
        colour="rgb",
        # As batches.meta lists them: Keras' load_data() gives the labels without their names.
        class_names=(
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ),
        original_size=None,
        description="CIFAR-10: 60,000 photographs of ten kinds of object, 32x32 colour",
    ),
    "folder": Dataset(
        read=image_folder.read,
        keras_dataset=None,
        files=(
            "a folder of PNG, JPEG, BMP or GIF images: one sub-folder per class, or all of "
            "them directly in it for images without classes"
        ),
        colour=None,
        class_names=None,  # the sub-folders' names, sorted; none for a flat folder
        original_size=None,
        description="a folder of your own images, of any size, grey or colour",
        whole_folder=True,
    ),
}
# The most classes a data set above has (ten each): how many the models' one-hot labels hold
# unless they are told.
NUM_CLASSES = max(len(entry.class_names) for entry in DATASETS.values() if entry.class_names)


def lookup(name):
    """The entry of the data set `name`: the one place a data set's name is looked up."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def _read(name, entry, data_dir, splits, options=None):
    """The data set `name` (its entry `entry`) as stored ((x_train, y_train), (x_test,
    y_test)), and its class names: read from `data_dir` by its reader, else downloaded by
    Keras."""
    if data_dir or entry.keras_dataset is None:
        (train, test), class_names = entry.read(data_dir, splits, options)
    else:
        train, test = _download(name, entry)
        class_names = None
    if class_names is None and entry.class_names is not None:
        class_names = list(entry.class_names)
    return (train, test), class_names


def _download(name, entry):
    """Keras' own download, cached under $KERAS_HOME (default ~/.keras/datasets)."""
    import keras

    loader = getattr(keras.datasets, entry.keras_dataset)
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as error:  # Keras raises a bare Exception when the download fails
        raise DataError(
            f"could not download {name} ({first_line(error)}). Without internet, "
            f"pass --data-dir DIR with {entry.files}"
        ) from None
    # CIFAR-10's labels come as a column (N, 1); every other reader gives them flat.
    return (x_train, y_train.reshape(-1)), (x_test, y_test.reshape(-1))


@dataclass
class ImageData:
    """A data set as the model reads it: float32 images in [0, 1] of shape (N, size, size,
    channels), their integer labels and the class names (None for unlabelled images)."""

    train_images: np.ndarray
    train_labels: np.ndarray | None
    test_images: np.ndarray
    test_labels: np.ndarray | None
    class_names: list | None

    @property
    def colour(self):
        return "grey" if self.test_images.shape[-1] == 1 else "rgb"

    @property
    def num_classes(self):
        return len(self.class_names) if self.class_names else 0

    def fingerprint(self):
        """A digest of the images, labels and class names (a fifth of a second for MNIST):
        a resumed run checks that it goes on learning the same data, not only the same path."""
        digest = hashlib.sha256(json.dumps(self.class_names).encode())
        for array in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            if array is not None:
                array = np.ascontiguousarray(array)
                digest.update(f"{array.dtype.str}{array.shape}".encode())
                digest.update(array)
        return digest.hexdigest()


def load_images(
    dataset,
    data_dir=None,
    limit=None,
    *,
    image_size,
    colour="auto",
    seed=0,
    test_split=0.2,
    test_only=False,
    verbose=True,
):
    """The data set `dataset` (a name in DATASETS) as the model reads it (ImageData).

    MNIST-style digits are padded to `image_size`; CIFAR-10 and a folder's images are
    resized to it. `colour` "grey" or "rgb" converts the images to it; "auto" keeps the
    data's own (a folder: grey if every image is). `seed` and `test_split` split a folder
    into train and test. `test_only`: the training split is not read (and comes back empty).
    """
    entry = lookup(dataset)
    splits = ("test",) if test_only else ("train", "test")
    options = ReadOptions(image_size, seed=seed, test_split=test_split, verbose=verbose)
    (train, test), class_names = _read(dataset, entry, data_dir, splits, options)
    train, test = _limited(train, test, limit)
    train, test = ((_with_channels(images), labels) for images, labels in (train, test))
    if colour == "auto":
        colour = entry.colour or ("grey" if is_grey(train[0]) and is_grey(test[0]) else "rgb")
    prepared = []
    for images, labels in (train, test):
        images = convert_colour(images, colour)
        if entry.original_size is None and images.shape[1] != image_size:
            images = resize_images(images, image_size)
        prepared.append((prepare_images(images, image_size), labels if class_names else None))
    (train_images, train_labels), (test_images, test_labels) = prepared
    return ImageData(train_images, train_labels, test_images, test_labels, class_names)


def load_dataset(dataset, data_dir=None, limit=None):
    """Train and test arrays as MNIST, Fashion-MNIST or CIFAR-10 store them (uint8 images
    N x 28 x 28, or N x 32 x 32 x 3 for CIFAR-10; uint8 labels), optionally cut to `limit`.
    A folder of images needs `load_images`, which knows the size to bring them to."""
    entry = lookup(dataset)
    if entry.colour is None:
        raise DataError(
            f"--dataset {dataset}: its images are stored in no one size or colour; "
            "load_images reads them at the size it is given"
        )
    (train, test), _ = _read(dataset, entry, data_dir, ("train", "test"))
    return _limited(train, test, limit)


def _limited(train, test, limit):
    if not limit:
        return train, test
    # A sixth, as 10,000 test images are to 60,000 training images.
    test_limit = limit // 6
    if test_limit == 0:
        raise DataError(f"--limit {limit} leaves no test images; use --limit 6 or more")
    return tuple(
        tuple(None if part is None else part[:count] for part in split)
        for split, count in ((train, limit), (test, test_limit))
    )


def _with_channels(images):
    """(N, H, W) -> (N, H, W, 1); images with a channel axis are left as they are."""
    return images[..., np.newaxis] if images.ndim == 3 else images


def is_grey(images):
    """True for one channel, or three equal ones (a grey picture saved in colour)."""
    if images.shape[-1] == 1:
        return True
    return bool(np.all(images[..., :1] == images[..., 1:]))


def convert_colour(images, colour):
    """uint8 images (N, H, W, C) as `colour`: "grey" (one channel) or "rgb" (three)."""
    channels = images.shape[-1]
    if colour == "rgb" and channels == 1:
        return np.repeat(images, 3, axis=-1)
    if colour == "grey" and channels == 3:
        # ITU-R BT.601 luma: the weights of PIL's and TensorFlow's own grey conversions.
        luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., np.newaxis]
    return images


def resize_images(images, image_size, chunk=2048):
    """uint8 (N, H, W, C) -> uint8 (N, size, size, C): bilinear, antialiased when shrinking,
    rounded back to 8 bits (the likelihoods model 256 levels)."""
    import tensorflow as tf

    resized = [
        np.clip(
            np.round(
                tf.image.resize(
                    images[start : start + chunk],
                    (image_size, image_size),
                    method="bilinear",
                    antialias=True,
                ).numpy()
            ),
            0,
            255,
        ).astype(np.uint8)
        for start in range(0, len(images), chunk)
    ]
    if not resized:
        return np.zeros((0, image_size, image_size, images.shape[-1]), np.uint8)
    return np.concatenate(resized)


def prepare_images(images, image_size):
    """uint8 (N, H, W) or (N, H, W, C) -> float32 (N, size, size, C) in [0, 1], zero-padded
    evenly to `image_size` (a channel axis of 1 added to grey images without one)."""
    images = _with_channels(images)
    padding = image_size - images.shape[1]
    if padding < 0 or padding % 2:
        raise ValueError(
            f"image_size {image_size} must be at least {images.shape[1]} and differ "
            "from it by an even number of pixels"
        )
    half = padding // 2
    padded = np.pad(images, ((0, 0), (half, half), (half, half), (0, 0)))
    return padded.astype(np.float32) / 255.0


def one_hot(labels, num_classes=NUM_CLASSES):
    """Integer labels as float32 one-hot rows, the conditional VAE's second input."""
    return np.eye(num_classes, dtype=np.float32)[labels]


def make_dataset(
    images, batch_size, shuffle=False, seed=None, labels=None, num_classes=NUM_CLASSES
):
    """A tf.data pipeline of image batches, reshuffled every epoch when training.

    With `labels` (a conditional VAE) each element is `((images, one_hot_labels),)`: the
    extra nesting makes Keras read the pair as the model's input, not as (x, y).
    """
    import tensorflow as tf

    elements = images if labels is None else ((images, one_hot(labels, num_classes)),)
    dataset = tf.data.Dataset.from_tensor_slices(elements)
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    # Two batches ready ahead, and tf.data's autotuning off: the images are already in
    # memory, so there is little to tune, and on a CPU with few cores the tuner can leave a
    # core idle for whole epochs (docs/performance.md).
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.batch(batch_size).prefetch(2).with_options(options)


def load_for(config, test_only=False):
    """The images a run's `config` (settings.Config) names, as the model reads them."""
    return load_images(
        config.dataset,
        config.data_dir,
        config.limit,
        image_size=config.image_size,
        colour=config.colour,
        seed=config.seed,
        test_split=config.test_split,
        test_only=test_only,
    )
