"""What every data set reader shares: the error it raises, what it is asked for, and the
careful opening and reading of a user's file.

The readers (mnist_files.py, cifar10_batches.py, image_folder.py) import this module and
nothing else of the program; data.py imports them. So the imports run one way, from data.py
to the readers to here.
"""

import os
import stat
from dataclasses import dataclass

import numpy as np

READ_CHUNK_BYTES = 1 << 20  # read in pieces so a lying header cannot make us allocate


class DataError(ValueError):
    """A data file is missing or is not what it claims to be."""


@dataclass(frozen=True)
class ReadOptions:
    """What a reader is asked besides the files: the size the images are brought to, and how a
    folder of images is split into train and test. Only a folder of images needs them (its
    files have no one size, and no split of their own); the data sets' own files ignore them.
    `verbose`: say what was read."""

    image_size: int
    seed: int = 0
    test_split: float = 0.2
    verbose: bool = True


def open_regular_file(path):
    """`path` opened to read bytes, if it is a regular file: reading a pipe or a device
    (/dev/zero) would wait for ever or never end, and neither Ctrl-C nor SIGTERM stops it."""
    try:  # without blocking: opening a pipe would wait for a writer
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    file = os.fdopen(descriptor, "rb")
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        file.close()
        raise DataError(
            f"{path}: not a regular file (a folder, a pipe or a device); give --data-dir the "
            "data set's own files"
        )
    return file


def read_exactly(stream, size, path):
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


def first_line(error):
    """The error's first line, cut to a length a message line can hold: some repeat what
    the file holds."""
    return (str(error) or type(error).__name__).splitlines()[0][:200]


def empty_split(*shape):
    """No images of this shape, and no labels: a split that was not asked for."""
    return np.zeros((0, *shape), np.uint8), np.zeros(0, np.uint8)
