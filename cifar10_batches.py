"""CIFAR-10's own files: the official Python batches (or the binary version's records), from
the batches folder, its parent, or the .tar.gz archive itself, read into memory.

The Python batches are pickles, and a pickle can name any importable function and run it
while loading. They are never handed to `pickle.load`: their opcodes are checked first
(`_check_opcodes`), then `CifarUnpickler` builds only what a batch holds, a dict of byte
strings, integers, lists of them and one uint8 array, and refuses any other name before it
runs. Every size, count and label is checked, so a hostile, truncated or corrupt file is one
line that names it.
"""

import io
import lzma
import os
import pickle
import pickletools
import tarfile
import zlib

import numpy as np

from reading import DataError, empty_split, first_line, open_regular_file

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
NUM_CLASSES = 10  # airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck
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
            f"{path}: not a readable CIFAR-10 batch ({first_line(error)}): the file is "
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
            with open_regular_file(path) as file:
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
        with open_regular_file(path) as file, tarfile.open(fileobj=file) as archive:
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
            f"{path}: not a readable CIFAR-10 archive ({first_line(error)}); download it again"
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


def read(data_dir, splits=("train", "test"), options=None):
    """((x_train, y_train), (x_test, y_test)) and the class names of CIFAR-10's own files:
    uint8 images (N, 32, 32, 3), uint8 labels. A split left out of `splits` is not read.
    `options` are not needed, as these files fix their images' size."""

    def names(spec):
        return [spec["meta"]] + [name for split in splits for name in spec[split]]

    kind, read_file = _cifar10_source(data_dir, names)
    class_names = _cifar10_class_names(kind, read_file)
    read_splits = []
    for split in ("train", "test"):
        if split not in splits:
            read_splits.append(empty_split(CIFAR10_SIZE, CIFAR10_SIZE, 3))
            continue
        files = CIFAR10_FORMATS[kind][split]
        batches = [_cifar10_batch(kind, read_file, name) for name in files]
        read_splits.append(tuple(np.concatenate(parts) for parts in zip(*batches, strict=True)))
    return tuple(read_splits), class_names
