"""A folder of the user's own images (PNG, JPEG, BMP or GIF), one sub-folder per class or
flat (unlabelled), decoded and resized by a tf.data pipeline over its files.

Each file is checked before it is decoded: files that are not regular files, that cannot be
decoded, or whose pictures are too large or too narrow are left out and counted, and the
summary says how many and why. The files that pass are split into train and test, and
ordered, as keras.utils.image_dataset_from_directory splits and orders a folder (as this
program read folders before): a seed keeps its test set.
"""

import collections
import os
import stat
import warnings

import numpy as np

from reading import DataError, empty_split

# The image files read (those image_dataset_from_directory reads); others are left alone.
IMAGE_FILE_TYPES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# A picture of more pixels is left out: a 50-megapixel phone photo takes 150 MB to decode and
# 600 MB to resize, where a 20000x20000 PNG of 400 KB on disk would take 1.2 GB for itself.
MAX_IMAGE_PIXELS = 50_000_000
MAX_IMAGE_FILE_BYTES = 256 << 20  # more than any picture within MAX_IMAGE_PIXELS needs
# The training files' second shuffle, as image_dataset_from_directory's (without batches).
SHUFFLE_BUFFER = 1024
# Why a file is left out, as the summary says it (with its count before it).
UNREADABLE = "that could not be read as images"


def read(folder, splits, options):
    """((x_train, y_train), (x_test, y_test)) and the class names of a folder of images:
    uint8 (N, size, size, 3), each image resized to fit `options.image_size` with its shape
    kept (padded black), the files split into train and test at random by `options.seed`,
    `options.test_split` of them for testing. A split left out of `splits` is not decoded.

    One sub-folder per class gives the labels (the sub-folders' names, sorted); images
    directly in `folder` are an unlabelled set (labels and class names None). Hidden files
    and folders are not read. Files that are not regular files, that cannot be decoded, or
    whose pictures are too large or too narrow are left out and counted, not a reason to stop.
    """
    labelled = _is_labelled(folder)
    size = options.image_size
    class_names, paths, labels, left_out = _checked_files(folder, labelled, size)
    train, test = _split(folder, paths, labels, options, left_out)
    read_splits = []
    for split, (split_paths, split_labels) in (("train", train), ("test", test)):
        if split not in splits:
            read_splits.append(empty_split(size, size, 3))
            continue
        # Keras shuffled the training files once more as it read them; so are they here.
        seed = options.seed if split == "train" else None
        images, read_labels = _decode_all(split_paths, split_labels, size, seed)
        left_out[UNREADABLE] += len(split_paths) - len(images)
        if not len(images):
            raise DataError(
                f"{folder}: none of the {len(split_paths)} {split} files could be read as "
                "images; are they PNG, JPEG, BMP or GIF files?"
            )
        read_splits.append((images, read_labels))
    if options.verbose:
        kinds = f"{len(class_names)} classes" if labelled else "no classes (no sub-folders)"
        print(
            f"Read {folder}: {len(read_splits[0][0]):,} training and {len(read_splits[1][0]):,} "
            f"test images, {kinds}{_left_out_note(left_out)}"
        )
    return tuple(read_splits), (class_names if labelled else None)


def _is_labelled(folder):
    """True for a folder of class sub-folders, False for a flat one; refuses a mix."""
    if folder is None:
        raise DataError("--dataset folder needs --data-dir DIR, the folder of your images")
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: --data-dir is not a folder")
    entries = [entry for entry in os.scandir(folder) if not entry.name.startswith(".")]
    labelled = any(entry.is_dir() for entry in entries)
    if labelled and any(entry.name.lower().endswith(IMAGE_FILE_TYPES) for entry in entries):
        raise DataError(
            f"{folder} holds images beside sub-folders: put each image in its class's "
            "sub-folder, or, for images without classes, all of them directly in the folder"
        )
    return labelled


def _checked_files(folder, labelled, image_size):
    """(class names, paths, labels, left_out): the class sub-folders of `folder` (sorted; an
    empty one too), and each image file in them (not hidden, nor in a hidden folder) that
    passes `_image_problem`, with its class's number (None for a flat folder), in the order
    image_dataset_from_directory lists them: class by class, each folder's files by name;
    `left_out` counts the others, by reason."""
    left_out = collections.Counter()
    class_names = sorted(
        entry.name
        for entry in os.scandir(folder)
        if labelled and entry.is_dir() and not entry.name.startswith(".")
    )
    paths, labels = [], []
    for label, top in enumerate(class_names or [""]):
        walk = []
        for root, folders, names in os.walk(os.path.join(folder, top)):
            folders[:] = [name for name in folders if not name.startswith(".")]
            walk.append((root, names))
        for root, names in sorted(walk, key=lambda found: found[0]):
            for name in sorted(names):
                if name.startswith(".") or not name.lower().endswith(IMAGE_FILE_TYPES):
                    continue
                path = os.path.join(root, name)
                problem = _image_problem(path, image_size)
                if problem:
                    left_out[problem] += 1
                    continue
                paths.append(path)
                labels.append(label)
    return class_names, paths, labels if labelled else None, left_out


def _image_problem(path, image_size):
    """Why the image file `path` is left out, or None. Its header only is read."""
    from PIL import Image

    try:
        status = os.stat(path)  # of what a symbolic link names
    except OSError:
        return UNREADABLE
    if not stat.S_ISREG(status.st_mode):
        return "that are not regular files"  # a pipe or a device: reading it may never end
    if status.st_size > MAX_IMAGE_FILE_BYTES:
        return f"of more than {MAX_IMAGE_FILE_BYTES >> 20} MB"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        return f"of more than {MAX_IMAGE_PIXELS // 1_000_000} million pixels"
    except Exception:  # whatever an undecodable file makes Pillow raise
        return UNREADABLE
    if width * height > MAX_IMAGE_PIXELS:
        return f"of more than {MAX_IMAGE_PIXELS // 1_000_000} million pixels"
    if min(width, height) * image_size < max(width, height):
        return f"too narrow to keep a pixel across at {image_size}x{image_size}"
    return None


def _left_out_note(left_out):
    """'; left out 3 files: 2 that ..., 1 of ...' or '' when every file was read."""
    total = sum(left_out.values())
    if not total:
        return ""
    if len(+left_out) == 1:
        return f"; left out {_files(total)} {next(iter(+left_out))}"
    reasons = ", ".join(f"{count:,} {reason}" for reason, count in sorted((+left_out).items()))
    return f"; left out {_files(total)}: {reasons}"


def _files(count):
    """'1 file', '3 files'."""
    return f"{count:,} file{'s' if count != 1 else ''}"


def _split(folder, paths, labels, options, left_out):
    """((train paths, labels), (test paths, labels)): the files shuffled by `options.seed`,
    the last `options.test_split` of them for testing, as image_dataset_from_directory
    splits them (with numpy's RandomState, the same seed for the labels)."""
    count, test_split = len(paths), options.test_split
    test_count = int(test_split * count)
    if not count and left_out:
        raise DataError(f"{folder}: none of its image files can be used{_left_out_note(left_out)}")
    if not count:
        raise DataError(f"{folder}: no PNG, JPEG, BMP or GIF images found in it or its sub-folders")
    if not test_count:
        raise DataError(
            f"{folder}: {count} images are too few to hold out --test-split {test_split:g} of "
            "them as a test set; add images or raise --test-split"
        )
    order = list(range(count))
    np.random.RandomState(options.seed).shuffle(order)
    paths = [paths[index] for index in order]
    labels = None if labels is None else np.array([labels[index] for index in order], np.int32)
    return tuple(
        (paths[part], None if labels is None else labels[part])
        for part in (slice(None, -test_count), slice(-test_count, None))
    )


def _decode_all(paths, labels, image_size, shuffle_seed=None):
    """Every image of `paths` (rounded to uint8) and its label, without those whose file
    cannot be decoded: each decoded as three channels (grey ones as three equal channels;
    load_images sees them) and resized to fit `image_size`, its shape kept. With
    `shuffle_seed`, in the order a tf.data shuffle by that seed gives."""
    import tensorflow as tf

    files = tf.data.Dataset.from_tensor_slices(paths)
    if labels is not None:
        files = tf.data.Dataset.zip(files, tf.data.Dataset.from_tensor_slices(labels))
    if shuffle_seed is not None:
        files = files.shuffle(SHUFFLE_BUFFER, seed=shuffle_seed)

    def load(path, *label):
        image = tf.image.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        # Pictures are mostly shrunk to the model's size: "area" averages the pixels it
        # merges, where "bilinear" would skip some and alias fine detail.
        image = tf.image.resize_with_pad(image, image_size, image_size, method="area")
        return (image, *label)

    images, read_labels = [], []
    decoded = files.map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    for batch in decoded.batch(512).as_numpy_iterator():
        images.append(np.clip(np.round(batch[0]), 0, 255).astype(np.uint8))
        if labels is not None:
            read_labels.append(batch[1])
    if not images:
        return np.zeros((0, 0, 0, 3), np.uint8), None
    return np.concatenate(images), np.concatenate(read_labels) if labels is not None else None
