"""Data: the images a run learns, read from Keras' download cache or from the user's files.

- MNIST and Fashion-MNIST: the original IDX files (gzip-compressed or not) or Keras' mnist.npz;
- CIFAR-10: its official Python batches (or binary version): the folder, its parent or the
  archive itself, read without ever running what a pickle asks to run;
- a folder of PNG / JPEG images, one sub-folder per class or flat (unlabelled), read with
  keras.utils.image_dataset_from_directory.

Every reader checks what it reads against what the file claims, so a missing, truncated or
corrupt file stops the program with one line that names the file, instead of a traceback
or, worse, a silently wrong array. `load_images` turns any of them into what the model
reads: float32 images in [0, 1] of shape (N, size, size, channels), with their labels.
"""

import collections
import contextlib
import gzip
import hashlib
import io
import json
import lzma
import os
import pickle
import pickletools
import stat
import struct
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from dataclasses import dataclass

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
    "cifar10": [
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
    ],
}
# Every --dataset: the three above, and "folder", a folder of the user's own images.
DATASETS = ("mnist", "fashion_mnist", "cifar10", "folder")
# Images as the data sets store them; a folder's are as its files are.
STORED_COLOUR = {"mnist": "grey", "fashion_mnist": "grey", "cifar10": "rgb"}
CHANNELS = {"grey": 1, "rgb": 3}
# MNIST-style digits keep their pixels and are padded to the model's size; everything else
# is resized to it.
PADDED_DATASETS = ("mnist", "fashion_mnist")

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
# MNIST has 60,000 training images and EMNIST's splits up to 240,000 (its two largest aside):
# more is not read, so that a small gzip bomb that declares 2**31 images is refused at once
# rather than after 0.5 GB, and the float32 images of an honest file take at most 1 GB.
MAX_IDX_IMAGES = 250_000


class DataError(ValueError):
    """A data file is missing or is not what it claims to be."""


def _open_regular_file(path):
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
        with _open_regular_file(path) as raw:
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
            if not 0 < shape[0] <= MAX_IDX_IMAGES:
                raise DataError(
                    f"{path}: header declares {shape[0]:,} {kind}; this program reads 1 to "
                    f"{MAX_IDX_IMAGES:,}"
                )
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


def load_from_directory(data_dir, splits=("train", "test")):
    """Read ((x_train, y_train), (x_test, y_test)) from IDX files or a Keras `.npz`; a split
    left out of `splits` is not read from IDX files and comes back empty."""
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: --data-dir is not a directory")
    npz_path = os.path.join(data_dir, "mnist.npz")
    if not os.path.exists(_find_file(data_dir, IDX_FILES["train_images"])) and os.path.exists(
        npz_path
    ):
        return _load_npz(npz_path)
    read = []
    for split in ("train", "test"):
        if split not in splits:
            read.append(_empty(ORIGINAL_SIZE, ORIGINAL_SIZE))
            continue
        images_path = _find_file(data_dir, IDX_FILES[f"{split}_images"])
        labels_path = _find_file(data_dir, IDX_FILES[f"{split}_labels"])
        images = read_idx(images_path, IMAGES_MAGIC)
        labels = read_idx(labels_path, LABELS_MAGIC)
        _check_pair(images, labels, images_path, labels_path)
        read.append((images, labels))
    return tuple(read)


def _empty(*shape):
    """No images of this shape, and no labels: a split that was not asked for."""
    return np.zeros((0, *shape), np.uint8), np.zeros(0, np.uint8)


NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _load_npz(path):
    """Keras' mnist.npz: each array's header is checked before its data is read, so a
    declared shape (or a zip bomb) cannot make numpy allocate more than MNIST-style data."""
    with _open_regular_file(path) as file:
        try:
            _check_npz_headers(path, _npz_headers(file))
            file.seek(0)
            with np.load(file, allow_pickle=False) as arrays:
                loaded = {name: arrays[name] for name in NPZ_ARRAYS}
        except DataError:
            raise
        except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile) as error:
            raise DataError(
                f"{path}: not a readable Keras MNIST .npz ({_first_line(error)})"
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


def load_from_keras(dataset):
    """Keras' own download, cached under $KERAS_HOME (default ~/.keras/datasets)."""
    import keras

    loader = {
        "mnist": keras.datasets.mnist,
        "fashion_mnist": keras.datasets.fashion_mnist,
        "cifar10": keras.datasets.cifar10,
    }[dataset]
    try:
        (x_train, y_train), (x_test, y_test) = loader.load_data()
    except Exception as error:  # Keras raises a bare Exception when the download fails
        offline = (
            "CIFAR-10's Python batches (the folder cifar-10-batches-py, its parent, or "
            "cifar-10-python.tar.gz)"
            if dataset == "cifar10"
            else "the four original IDX .gz files (or mnist.npz)"
        )
        raise DataError(
            f"could not download {dataset} ({_first_line(error)}). Without internet, "
            f"pass --data-dir DIR with {offline}"
        ) from None
    # CIFAR-10's labels come as a column (N, 1); every other reader gives them flat.
    return (x_train, y_train.reshape(-1)), (x_test, y_test.reshape(-1))


def _first_line(error):
    """The error's first line, cut to a length a message line can hold: some repeat what
    the file holds."""
    return (str(error) or type(error).__name__).splitlines()[0][:200]


# ---------------------------------------------------------------------------------------
# CIFAR-10: the official Python batches (or binary records), never unpickled blindly
# ---------------------------------------------------------------------------------------

CIFAR10_FORMATS = {
    # The Python version: pickled dicts, as in Keras' download cache.
    "python": {
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "train": [f"data_batch_{number}" for number in range(1, 6)],
        "test": ["test_batch"],
        "meta": "batches.meta",
    },
    # The binary version: fixed records of a label byte and the image's bytes.
    "binary": {
        "folder": "cifar-10-batches-bin",
        "archive": "cifar-10-binary.tar.gz",
        "train": [f"data_batch_{number}.bin" for number in range(1, 6)],
        "test": ["test_batch.bin"],
        "meta": "batches.meta.txt",
    },
}
CIFAR10_SIZE = 32
CIFAR10_IMAGE_BYTES = 3 * CIFAR10_SIZE * CIFAR10_SIZE  # red, green and blue planes, row by row
# A batch of 10,000 images holds 30.7 MB of pixels, about 31 MB with its labels and file
# names. A larger file is not a CIFAR-10 batch, and is refused before it is read.
CIFAR10_MAX_FILE_BYTES = 32 << 20
CIFAR10_MAX_MEMBERS = 100
CIFAR10_MAX_ARCHIVE_BYTES = 512 << 20


class _Refused(Exception):
    """A pickle asked for something a CIFAR-10 batch never holds."""


class _ArrayType:
    """Stands for `numpy.ndarray` in a CIFAR-10 pickle."""


class _ByteType:
    """Stands for `numpy.dtype('u1', 0, 1)`, the one dtype a CIFAR-10 batch holds."""

    def __init__(self, name, align=0, copy=1):
        if name not in (b"u1", "u1"):
            # Named only when it is a short string: repr of a hostile argument (nested lists
            # that share references) could take hours and all memory.
            shown = repr(name) if isinstance(name, (bytes, str)) and len(name) <= 16 else "?"
            raise _Refused(f"an array of dtype {shown}")
        self.checked = True

    def __setstate__(self, state):
        pass  # byte order and flags: the same for every one-byte type


class _ArrayStandIn:
    """Stands for the array numpy's `_reconstruct` starts; the BUILD that follows gives it
    (version, shape, dtype, fortran order, raw bytes), and the bytes become a uint8 array."""

    array = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            raise _Refused("an array in a layout numpy's pickles do not use")
        _, shape, dtype, fortran_order, raw = state
        if not getattr(dtype, "checked", False) or fortran_order is not False:
            raise _Refused("an array that is not of C-ordered bytes")
        if not (
            isinstance(shape, tuple)
            and all(isinstance(size, int) and size >= 0 for size in shape)
            and isinstance(raw, bytes)
            and np.prod(shape, dtype=object) == len(raw)
        ):
            raise _Refused("an array whose shape does not fit its bytes")
        self.array = np.frombuffer(raw, np.uint8).reshape(shape)


def _reconstruct(array_type, shape, typecode):
    if array_type is not _ArrayType:
        raise _Refused("an array of another type than numpy.ndarray")
    return _ArrayStandIn()


# The only names CIFAR-10's pickles hold, each with what stands for it here.
_STAND_INS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _ArrayType,
    ("numpy", "dtype"): _ByteType,
}


def _stand_in(module, name):
    if (module, name) not in _STAND_INS:
        raise _Refused(f"{module}.{name}"[:100])
    return _STAND_INS[(module, name)]


class CifarUnpickler(pickle.Unpickler):
    """Reads CIFAR-10's Python-2 pickles without running anything they name.

    A pickle can name any importable function and call it while loading. These files name
    only numpy's array reconstruction; here each such name stands for a small class that
    checks its arguments and makes a uint8 array from bytes, and any other name is refused
    before anything runs. Python 2's strings are read as bytes, as Keras reads them.
    """

    def __init__(self, file):
        super().__init__(file, encoding="bytes")

    def find_class(self, module, name):
        return _stand_in(module, name)

    def persistent_load(self, persistent_id):
        raise _Refused("a persistent object")


# A batch builds about 40,000 objects (10,000 labels, 10,000 file names and their memo
# entries); far more is not CIFAR-10, and would cost memory and time before any check.
CIFAR10_MAX_OBJECTS = 1_000_000
# The opcodes Python 2's cPickle wrote CIFAR-10's files with; any other is refused.
_SCALAR_OPCODES = {
    "BININT", "BININT1", "BININT2", "SHORT_BINSTRING", "BINSTRING", "NONE", "NEWTRUE",
    "NEWFALSE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_TUPLE", "GLOBAL",
}  # fmt: skip
_TUPLE_SIZES = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}


def _add_items(stack, items, pairs):
    """APPEND(S) or SETITEM(S): `items` (keys and values in turn if `pairs`) go into the
    container below them. A key must be a single value: hashing a tuple visits all it holds."""
    if pairs and any(key != 1 for key in items[::2]):
        raise _Refused("a dict key that is a container")
    stack[-1] += sum(items)


def _pop(stack, count):
    """The top `count` values, as the unpickler pops them: never past a MARK."""
    items = stack[len(stack) - count :] if count else []
    if len(items) < count or None in items:
        raise ValueError("an opcode takes more values than the stack holds")
    del stack[len(stack) - count :]
    return items


def _pop_to_mark(stack):
    mark = len(stack) - 1 - stack[::-1].index(None)
    items = stack[mark + 1 :]
    del stack[mark:]
    return items


def _check_opcodes(payload):
    """Walk the pickle's opcodes before anything is built, with the number of objects each
    value holds (counting every shared reference again) in place of the value.

    The unpickler trusts a pickle's numbers: a memo index of 2**27 makes it set aside 2 GB,
    and a dict key made of tuples that each repeat a reference to the one before a hundred
    times costs 100**depth steps to hash. Here memo indices must count up as the file
    stores objects, no value may hold more than CIFAR10_MAX_OBJECTS, dict keys must be
    single values, and names are checked as the unpickler would (so none of them runs).
    Returns where the pickle ends."""
    stack, memo, stop = [], {}, -1
    for count, (opcode, argument, position) in enumerate(pickletools.genops(payload)):
        name, stop = opcode.name, position
        if count > CIFAR10_MAX_OBJECTS:
            raise _Refused(f"more than {CIFAR10_MAX_OBJECTS:,} objects")
        if name == "GLOBAL":
            _stand_in(*argument.split(" ", 1))
        if name in _SCALAR_OPCODES:
            stack.append(1)
        elif name == "MARK":
            stack.append(None)
        elif name in ("BINPUT", "LONG_BINPUT"):
            if argument > len(memo) + 1:
                raise _Refused(f"memo slot {argument:,} with {len(memo):,} objects stored")
            memo[argument] = _pop(stack, 1)[0]
            stack.append(memo[argument])
        elif name in ("BINGET", "LONG_BINGET"):
            stack.append(memo[argument])
        elif name in _TUPLE_SIZES or name == "TUPLE":
            size = _TUPLE_SIZES.get(name)
            items = _pop_to_mark(stack) if size is None else _pop(stack, size)
            stack.append(1 + sum(items))
        elif name in ("APPEND", "SETITEM"):
            _add_items(stack, _pop(stack, 1 if name == "APPEND" else 2), name == "SETITEM")
        elif name in ("APPENDS", "SETITEMS"):
            _add_items(stack, _pop_to_mark(stack), name == "SETITEMS")
        elif name == "REDUCE":  # the callable and its arguments become one new object
            _pop(stack, 2)
            stack.append(1)
        elif name == "BUILD":  # the state goes into the object below it
            _pop(stack, 1)
        elif name not in ("PROTO", "STOP"):
            raise _Refused(f"the pickle opcode {name}")
        if stack and (stack[-1] or 0) > CIFAR10_MAX_OBJECTS:
            raise _Refused(f"a value of more than {CIFAR10_MAX_OBJECTS:,} objects")
    return stop


def read_cifar10_pickle(payload, path):
    """The dict a CIFAR-10 Python batch (or batches.meta) holds, keys as text: its values
    bytes, ints, lists of them, or a uint8 array. Anything else is refused."""
    try:
        # The opcodes alone first: pickletools checks each declared length against the bytes
        # the file holds, where the unpickler would first set aside as many as a length claims.
        stop = _check_opcodes(payload)
        if stop + 1 != len(payload):
            raise ValueError(f"{len(payload) - stop - 1:,} bytes after the pickle's end")
        loaded = CifarUnpickler(io.BytesIO(payload)).load()
    except _Refused as refused:
        raise DataError(
            f"{path}: refused: the file asks for {refused}, which no CIFAR-10 batch holds; "
            "it is not an original CIFAR-10 file, so it was not loaded"
        ) from None
    except Exception as error:  # whatever the broken bytes make pickle raise
        raise DataError(
            f"{path}: not a readable CIFAR-10 batch ({_first_line(error)}): the file is "
            "truncated or corrupt; download it again"
        ) from None
    if not isinstance(loaded, dict) or not all(isinstance(key, bytes) for key in loaded):
        raise DataError(f"{path}: not a CIFAR-10 batch (it holds no dict of named entries)")

    def allowed(value):
        return isinstance(value, (bytes, int)) and not isinstance(value, bool)

    entries = {}
    for key, value in loaded.items():
        if isinstance(value, _ArrayStandIn) and value.array is not None:
            value = value.array
        elif not (allowed(value) or (isinstance(value, list) and all(map(allowed, value)))):
            raise DataError(
                f"{path}: not a CIFAR-10 batch (its entry {key[:40]!r} holds a "
                f"{type(value).__name__})"
            )
        entries[key.decode("utf-8", "replace")] = value
    return entries


def _cifar10_file_reader(folder):
    def read(name):
        path = os.path.join(folder, name)
        try:
            with _open_regular_file(path) as file:
                size = os.fstat(file.fileno()).st_size
                if size > CIFAR10_MAX_FILE_BYTES:
                    raise DataError(
                        f"{path}: {size:,} bytes, more than a CIFAR-10 batch holds; not a "
                        "CIFAR-10 file"
                    )
                return path, file.read(CIFAR10_MAX_FILE_BYTES)
        except OSError as error:
            raise DataError(f"{path}: cannot read file ({error.strerror})") from None

    return read


def _cifar10_archive_reader(path, names):
    """The files `names` in CIFAR-10's .tar.gz, read into memory (nothing is extracted to disk)
    and checked for size first; the format is whichever the archive holds."""
    wanted = {name for spec in CIFAR10_FORMATS.values() for name in names(spec)}
    found, declared = {}, 0
    try:
        with _open_regular_file(path) as file, tarfile.open(fileobj=file) as archive:
            for count, member in enumerate(archive):
                # The official archives hold 9 members and 180 MB: a few more is fine, but
                # thousands of headers or gigabytes to skip are not a CIFAR-10 archive.
                declared += member.size
                if count >= CIFAR10_MAX_MEMBERS or declared > CIFAR10_MAX_ARCHIVE_BYTES:
                    raise DataError(
                        f"{path}: more than {CIFAR10_MAX_MEMBERS} files or "
                        f"{CIFAR10_MAX_ARCHIVE_BYTES >> 20} MB in the archive; not a CIFAR-10 "
                        "archive"
                    )
                name = os.path.basename(member.name)
                if name not in wanted or not member.isfile():
                    continue
                if member.size > CIFAR10_MAX_FILE_BYTES:
                    raise DataError(
                        f"{path}: {member.name} declares {member.size:,} bytes, more than a "
                        "CIFAR-10 batch holds; not a CIFAR-10 archive"
                    )
                found[name] = (f"{path}:{member.name}", archive.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as error:
        raise DataError(
            f"{path}: not a readable CIFAR-10 archive ({_first_line(error)}); download it again"
        ) from None
    for kind, spec in CIFAR10_FORMATS.items():
        if any(name in found for name in names(spec)):

            def read(name, folder=spec["folder"]):
                if name not in found:
                    raise DataError(f"{path}: the archive holds no {folder}/{name}")
                return found[name]

            return kind, read
    raise DataError(
        f"{path}: no CIFAR-10 batches in this archive; give --data-dir the official "
        "cifar-10-python.tar.gz, the folder cifar-10-batches-py or its parent"
    )


def _cifar10_source(data_dir, names):
    """(format, read): `read(name)` gives (path for messages, bytes) of one of CIFAR-10's
    files, whether --data-dir is the batches folder, its parent, the archive or a folder
    that holds the archive."""
    if os.path.isfile(data_dir):
        return _cifar10_archive_reader(data_dir, names)
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: --data-dir is neither a folder nor a file")
    for kind, spec in CIFAR10_FORMATS.items():
        for folder in (data_dir, os.path.join(data_dir, spec["folder"])):
            if any(os.path.exists(os.path.join(folder, name)) for name in names(spec)):
                return kind, _cifar10_file_reader(folder)
        if os.path.isfile(os.path.join(data_dir, spec["archive"])):
            return _cifar10_archive_reader(os.path.join(data_dir, spec["archive"]), names)
    raise DataError(
        f"{data_dir}: no CIFAR-10 batches there; give --data-dir the folder cifar-10-batches-py "
        "(data_batch_1 ... data_batch_5, test_batch, batches.meta), its parent, or the archive "
        "cifar-10-python.tar.gz (the binary version's cifar-10-batches-bin works too)"
    )


def _cifar10_batch(kind, read, name):
    """uint8 images (N, 32, 32, 3) and labels of one batch file, checked."""
    path, payload = read(name)
    if kind == "binary":
        record = 1 + CIFAR10_IMAGE_BYTES
        if not payload or len(payload) % record:
            raise DataError(
                f"{path}: {len(payload):,} bytes is not a whole number of {record:,}-byte "
                "CIFAR-10 records; the file is truncated or not a CIFAR-10 binary batch"
            )
        records = np.frombuffer(payload, np.uint8).reshape(-1, record)
        rows, labels = records[:, 1:], records[:, 0]
    else:
        batch = read_cifar10_pickle(payload, path)
        rows, labels = batch.get("data"), batch.get("labels")
        if not (isinstance(rows, np.ndarray) and rows.ndim == 2):
            raise DataError(f"{path}: not a CIFAR-10 batch (no 'data' array of images)")
        if rows.shape[1] != CIFAR10_IMAGE_BYTES or not len(rows):
            raise DataError(
                f"{path}: its 'data' array has shape {rows.shape}, expected (images, "
                f"{CIFAR10_IMAGE_BYTES}) for 32x32 colour images"
            )
        if not isinstance(labels, list) or len(labels) != len(rows):
            count = len(labels) if isinstance(labels, list) else "no"
            raise DataError(
                f"{path}: {count} labels for {len(rows)} images; the file is not a whole "
                "CIFAR-10 batch"
            )
        if not all(0 <= label < NUM_CLASSES for label in labels):
            raise DataError(f"{path}: a label is out of range 0-{NUM_CLASSES - 1}")
        labels = np.array(labels, np.uint8)
    if labels.max() >= NUM_CLASSES:
        raise DataError(f"{path}: label {labels.max()} is out of range 0-{NUM_CLASSES - 1}")
    images = rows.reshape(-1, 3, CIFAR10_SIZE, CIFAR10_SIZE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _cifar10_class_names(kind, read):
    path, payload = read(CIFAR10_FORMATS[kind]["meta"])
    if kind == "binary":
        names = [line.strip() for line in payload.decode("utf-8", "replace").splitlines()]
        names = [name for name in names if name]
    else:
        names = read_cifar10_pickle(payload, path).get("label_names")
        if not isinstance(names, list) or not all(isinstance(name, bytes) for name in names):
            raise DataError(f"{path}: not CIFAR-10's batches.meta (no list of label_names)")
        names = [name.decode("utf-8", "replace") for name in names]
    if len(names) != NUM_CLASSES:
        raise DataError(f"{path}: {len(names)} class names, expected CIFAR-10's {NUM_CLASSES}")
    return names


def load_cifar10(data_dir, splits=("train", "test")):
    """((x_train, y_train), (x_test, y_test)) and the class names of CIFAR-10's own files:
    uint8 images (N, 32, 32, 3), uint8 labels. A split left out of `splits` is not read."""

    def names(spec):
        return [spec["meta"]] + [name for split in splits for name in spec[split]]

    kind, read = _cifar10_source(data_dir, names)
    class_names = _cifar10_class_names(kind, read)
    read_splits = []
    for split in ("train", "test"):
        if split not in splits:
            read_splits.append(_empty(CIFAR10_SIZE, CIFAR10_SIZE, 3))
            continue
        batches = [_cifar10_batch(kind, read, name) for name in CIFAR10_FORMATS[kind][split]]
        read_splits.append(tuple(np.concatenate(parts) for parts in zip(*batches, strict=True)))
    return tuple(read_splits), class_names


# ---------------------------------------------------------------------------------------
# A folder of images: keras.utils.image_dataset_from_directory
# ---------------------------------------------------------------------------------------

# The files image_dataset_from_directory reads; others in the folder are left alone.
IMAGE_FILE_TYPES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
# A picture of more pixels is left out: a 50-megapixel phone photo takes 150 MB to decode and
# 600 MB to resize, where a 20000x20000 PNG of 400 KB on disk would take 1.2 GB for itself.
MAX_IMAGE_PIXELS = 50_000_000
MAX_IMAGE_FILE_BYTES = 256 << 20  # more than any picture within MAX_IMAGE_PIXELS needs
# Why a file is left out, as the summary says it (with its count before it).
UNREADABLE = "that could not be read as images"


def read_folder(folder, image_size, *, seed, test_split, splits=("train", "test"), verbose=True):
    """((x_train, y_train), (x_test, y_test)) and the class names of a folder of images:
    uint8 (N, size, size, 3), each image resized to fit `image_size` with its shape kept
    (padded black), the files split into train and test at random by `seed`.

    One sub-folder per class gives the labels (the sub-folders' names, sorted); images
    directly in `folder` are an unlabelled set (labels and class names None). Hidden files
    and folders are not read. Files that are not regular files, that cannot be decoded, or
    whose pictures are too large or too narrow are left out and counted, not a reason to stop.
    """
    labelled = _is_labelled(folder)
    # Keras reads a folder as it finds it; it is given a folder of links to the files that
    # pass the checks (the same names, so the same split by `seed`).
    with tempfile.TemporaryDirectory(prefix="vae-images-") as checked:
        left_out = _link_images(folder, checked, labelled, image_size)
        train, test = _keras_splits(
            checked, folder, labelled, image_size, seed, test_split, left_out
        )
        read = []
        for split, dataset in (("train", train), ("test", test)):
            if split not in splits:
                read.append(_empty(image_size, image_size, 3))
                continue
            images, labels = _decode_all(dataset, labelled)
            left_out[UNREADABLE] += len(dataset.file_paths) - len(images)
            if not len(images):
                raise DataError(
                    f"{folder}: none of the {len(dataset.file_paths)} {split} files could be "
                    "read as images; are they PNG, JPEG, BMP or GIF files?"
                )
            read.append((images, labels))
    if verbose:
        kinds = f"{len(train.class_names)} classes" if labelled else "no classes (no sub-folders)"
        print(
            f"Read {folder}: {len(read[0][0]):,} training and {len(read[1][0]):,} test images, "
            f"{kinds}{_left_out_note(left_out)}"
        )
    return tuple(read), (train.class_names if labelled else None)


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


def _keras_splits(checked, folder, labelled, image_size, seed, test_split, left_out):
    """image_dataset_from_directory's train and test splits of the folder `checked` (the
    links to the files of `folder` that passed the checks; `left_out` counts the others)."""
    import keras

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
                seed=seed,
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


# ---------------------------------------------------------------------------------------
# From the files to what the model reads
# ---------------------------------------------------------------------------------------


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
    """The data set `dataset` (one of DATASETS) as the model reads it (ImageData).

    MNIST-style digits are padded to `image_size`; CIFAR-10 and a folder's images are
    resized to it. `colour` "grey" or "rgb" converts the images to it; "auto" keeps the
    data's own (a folder: grey if every image is). `seed` and `test_split` split a folder
    into train and test. `test_only`: the training split is not read (and comes back empty).
    """
    splits = ("test",) if test_only else ("train", "test")
    if dataset == "folder":
        (train, test), class_names = read_folder(
            data_dir, image_size, seed=seed, test_split=test_split, splits=splits, verbose=verbose
        )
    else:
        (train, test), class_names = _read_dataset(dataset, data_dir, splits)
    train, test = _limited(train, test, limit)
    train, test = ((_with_channels(images), labels) for images, labels in (train, test))
    if colour == "auto":
        colour = STORED_COLOUR.get(dataset) or (
            "grey" if is_grey(train[0]) and is_grey(test[0]) else "rgb"
        )
    prepared = []
    for images, labels in (train, test):
        images = convert_colour(images, colour)
        if dataset not in PADDED_DATASETS and images.shape[1] != image_size:
            images = resize_images(images, image_size)
        prepared.append((prepare_images(images, image_size), labels if class_names else None))
    (train_images, train_labels), (test_images, test_labels) = prepared
    return ImageData(train_images, train_labels, test_images, test_labels, class_names)


def _read_dataset(dataset, data_dir, splits):
    if dataset not in STORED_COLOUR:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset == "cifar10" and data_dir:
        return load_cifar10(data_dir, splits)
    if data_dir:
        return load_from_directory(data_dir, splits), CLASS_NAMES[dataset]
    return load_from_keras(dataset), CLASS_NAMES[dataset]


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


def load_dataset(dataset, data_dir=None, limit=None):
    """Train and test arrays as MNIST, Fashion-MNIST or CIFAR-10 store them (uint8 images
    N x 28 x 28, or N x 32 x 32 x 3 for CIFAR-10; uint8 labels), optionally cut to `limit`.
    A folder of images needs `load_images`, which knows the size to bring them to."""
    (train, test), _ = _read_dataset(dataset, data_dir, ("train", "test"))
    return _limited(train, test, limit)


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
