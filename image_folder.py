"""A folder of the user's own images (PNG, JPEG, BMP or GIF), one sub-folder per class or
flat (unlabelled), read with keras.utils.image_dataset_from_directory.

Each file is checked before Keras reads it: files that are not regular files, that cannot
be decoded, or whose pictures are too large or too narrow are left out and counted, and the
summary says how many and why.
"""

import collections
import contextlib
import io
import os
import stat
import tempfile
import warnings

import numpy as np

from reading import DataError, empty_split

# The files image_dataset_from_directory reads; others in the folder are left alone.
IMAGE_FILE_TYPES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# A picture of more pixels is left out: a 50-megapixel phone photo takes 150 MB to decode and
# 600 MB to resize, where a 20000x20000 PNG of 400 KB on disk would take 1.2 GB for itself.
MAX_IMAGE_PIXELS = 50_000_000
MAX_IMAGE_FILE_BYTES = 256 << 20  # more than any picture within MAX_IMAGE_PIXELS needs
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
    # Keras reads a folder as it finds it; it is given a folder of links to the files that
    # pass the checks (the same names, so the same split by the seed).
    with tempfile.TemporaryDirectory(prefix="vae-images-") as checked:
        left_out = _link_images(folder, checked, labelled, size)
        train, test = _keras_splits(checked, folder, labelled, options, left_out)
        read_splits = []
        for split, dataset in (("train", train), ("test", test)):
            if split not in splits:
                read_splits.append(empty_split(size, size, 3))
                continue
            images, labels = _decode_all(dataset, labelled)
            left_out[UNREADABLE] += len(dataset.file_paths) - len(images)
            if not len(images):
                raise DataError(
                    f"{folder}: none of the {len(dataset.file_paths)} {split} files could be "
                    "read as images; are they PNG, JPEG, BMP or GIF files?"
                )
            read_splits.append((images, labels))
    if options.verbose:
        kinds = f"{len(train.class_names)} classes" if labelled else "no classes (no sub-folders)"
        print(
            f"Read {folder}: {len(read_splits[0][0]):,} training and {len(read_splits[1][0]):,} "
            f"test images, {kinds}{_left_out_note(left_out)}"
        )
    return tuple(read_splits), (train.class_names if labelled else None)


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


def _link_images(folder, checked, labelled, image_size):
    """Link into `checked` each image file of `folder` (not hidden, nor in a hidden folder)
    that passes `_image_problem`; returns how many were left out, by reason."""
    left_out = collections.Counter()
    tops = sorted(
        entry.name
        for entry in os.scandir(folder)
        if labelled and entry.is_dir() and not entry.name.startswith(".")
    )
    for top in tops or [""]:
        os.makedirs(os.path.join(checked, top), exist_ok=True)  # a class, even if left empty
        for root, folders, names in os.walk(os.path.join(folder, top)):
            folders[:] = [name for name in folders if not name.startswith(".")]
            for name in names:
                if name.startswith(".") or not name.lower().endswith(IMAGE_FILE_TYPES):
                    continue
                path = os.path.join(root, name)
                problem = _image_problem(path, image_size)
                if problem:
                    left_out[problem] += 1
                    continue
                link = os.path.join(checked, os.path.relpath(path, folder))
                os.makedirs(os.path.dirname(link), exist_ok=True)
                os.symlink(os.path.abspath(path), link)
    return left_out


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


def _keras_splits(checked, folder, labelled, options, left_out):
    """image_dataset_from_directory's train and test splits of the folder `checked` (the
    links to the files of `folder` that passed the checks; `left_out` counts the others)."""
    import keras

    image_size, test_split = options.image_size, options.test_split

    try:
        # Keras prints its split in its own words ("validation"); the summary says it.
        with contextlib.redirect_stdout(io.StringIO()):
            return keras.utils.image_dataset_from_directory(
                checked,
                labels="inferred" if labelled else None,
                label_mode="int" if labelled else None,
                color_mode="rgb",  # grey files come as three equal channels; load_images sees
                batch_size=None,
                image_size=(image_size, image_size),
                shuffle=True,
                seed=options.seed,
                validation_split=test_split,
                subset="both",
                # Pictures are mostly shrunk to the model's size: "area" averages the pixels
                # it merges, where "bilinear" would skip some and alias fine detail.
                interpolation="area",
                pad_to_aspect_ratio=True,
                verbose=False,
            )
    except ValueError:  # no images, or too few to hold out a test set
        count = sum(len(names) for _, _, names in os.walk(checked))
        if not count and left_out:
            raise DataError(
                f"{folder}: none of its image files can be used{_left_out_note(left_out)}"
            ) from None
        if not count:
            raise DataError(
                f"{folder}: no PNG, JPEG, BMP or GIF images found in it or its sub-folders"
            ) from None
        raise DataError(
            f"{folder}: {count} images are too few to hold out --test-split {test_split:g} of "
            "them as a test set; add images or raise --test-split"
        ) from None


def _decode_all(dataset, labelled):
    """Every image (rounded to uint8) and label of an image_dataset_from_directory split,
    without those whose file cannot be decoded."""
    images, labels = [], []
    for batch in dataset.ignore_errors().batch(512).as_numpy_iterator():
        pixels = batch[0] if labelled else batch
        images.append(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
        if labelled:
            labels.append(batch[1])
    if not images:
        return np.zeros((0, 0, 0, 3), np.uint8), None
    return np.concatenate(images), np.concatenate(labels) if labelled else None
