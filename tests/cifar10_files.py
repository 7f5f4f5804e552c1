"""CIFAR-10 files written the way the official archives hold them, for tests.

The Python batches of `cifar-10-python.tar.gz` were pickled by Python 2 with protocol 2: their
strings are SHORT_BINSTRING / BINSTRING opcodes and their array is rebuilt by
`numpy.core.multiarray._reconstruct`. Today's `pickle.dump` writes other opcodes and names
(`_codecs.encode`, `numpy._core...`), so these files are written opcode by opcode, as the
archive has them. The binary version (`cifar-10-binary.tar.gz`) is fixed 3,073-byte records.
"""

import io
import struct
import tarfile

import numpy as np

LABEL_NAMES = [
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
]
BATCHES = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"]


class Python2Pickle:
    """Protocol-2 pickle opcodes as Python 2's cPickle wrote them, memoising every container
    and string (BINPUT) as it did."""

    def __init__(self):
        self.out = io.BytesIO()
        self.out.write(b"\x80\x02")  # PROTO 2
        self.memo = 0

    def put(self):
        self.memo += 1
        if self.memo < 256:
            self.out.write(b"q" + bytes([self.memo]))  # BINPUT
        else:
            self.out.write(b"r" + struct.pack("<I", self.memo))  # LONG_BINPUT

    def string(self, value):
        """A Python 2 str (bytes): SHORT_BINSTRING below 256 bytes, else BINSTRING."""
        if len(value) < 256:
            self.out.write(b"U" + bytes([len(value)]) + value)
        else:
            self.out.write(b"T" + struct.pack("<i", len(value)) + value)
        self.put()

    def integer(self, value):
        if 0 <= value < 256:
            self.out.write(b"K" + bytes([value]))  # BININT1
        elif 0 <= value < 65536:
            self.out.write(b"M" + struct.pack("<H", value))  # BININT2
        else:
            self.out.write(b"J" + struct.pack("<i", value))  # BININT

    def global_(self, module, name):
        self.out.write(b"c" + module + b"\n" + name + b"\n")  # GLOBAL
        self.put()

    def list_(self, items, write):
        self.out.write(b"]")  # EMPTY_LIST
        self.put()
        for start in range(0, len(items), 1000):  # cPickle appended in runs of 1000
            self.out.write(b"(")  # MARK
            for item in items[start : start + 1000]:
                write(item)
            self.out.write(b"e")  # APPENDS

    def uint8_array(self, array):
        """numpy 1.x's ndarray.__reduce__ under Python 2: _reconstruct(ndarray, (0,), 'b'),
        then BUILD with (1, shape, dtype('u1'), False, raw bytes)."""
        self.global_(b"numpy.core.multiarray", b"_reconstruct")
        self.global_(b"numpy", b"ndarray")
        self.out.write(b"K\x00\x85")  # (0,): BININT1 0, TUPLE1
        self.put()
        self.string(b"b")
        self.out.write(b"\x87R")  # TUPLE3, REDUCE
        self.put()
        self.out.write(b"(K\x01")  # MARK, version 1
        for size in array.shape:
            self.integer(size)
        self.out.write(b"\x86" if array.ndim == 2 else b"\x85")  # the shape: TUPLE2 / TUPLE1
        self.put()
        self.global_(b"numpy", b"dtype")
        self.string(b"u1")
        self.out.write(b"K\x00K\x01\x87R")  # ('u1', 0, 1), REDUCE
        self.put()
        # dtype state: (3, '|', None, None, None, -1, -1, 0), then BUILD
        self.out.write(b"(K\x03")
        self.string(b"|")
        self.out.write(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
        self.out.write(b"\x89")  # NEWFALSE: not Fortran-ordered
        self.string(np.ascontiguousarray(array, np.uint8).tobytes())
        self.out.write(b"tb")  # TUPLE, BUILD

    def dictionary(self, items):
        """`items`: (key, writer) pairs; the keys are Python 2 strs."""
        self.out.write(b"}")  # EMPTY_DICT
        self.put()
        self.out.write(b"(")  # MARK
        for key, write in items:
            self.string(key)
            write()
        self.out.write(b"u")  # SETITEMS

    def getvalue(self):
        return self.out.getvalue() + b"."  # STOP


def batch_bytes(images, labels, name):
    """A data batch: {'data': uint8 (N, 3072), 'labels': [int], 'batch_label': str,
    'filenames': [str]}, with images (N, 32, 32, 3) stored as R, G, B planes."""
    rows = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(len(images), -1)
    writer = Python2Pickle()
    filenames = [f"image_{index:05d}.png".encode() for index in range(len(images))]
    writer.dictionary(
        [
            (b"data", lambda: writer.uint8_array(rows)),
            (b"labels", lambda: writer.list_([int(label) for label in labels], writer.integer)),
            (b"batch_label", lambda: writer.string(name.encode())),
            (b"filenames", lambda: writer.list_(filenames, writer.string)),
        ]
    )
    return writer.getvalue()


def meta_bytes(label_names=LABEL_NAMES, per_batch=10000):
    writer = Python2Pickle()
    names = [name.encode() for name in label_names]
    writer.dictionary(
        [
            (b"num_cases_per_batch", lambda: writer.integer(per_batch)),
            (b"label_names", lambda: writer.list_(names, writer.string)),
            (b"num_vis", lambda: writer.integer(3072)),
        ]
    )
    return writer.getvalue()


def patterned_images(count, seed=0):
    """(count, 32, 32, 3) uint8 images with a learnable structure: a coloured rectangle on a
    coloured background, whose colours follow the label (label = index % 10)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    palette = rng.integers(0, 256, (10, 2, 3))
    images = np.empty((count, 32, 32, 3), np.uint8)
    images[:] = palette[labels, 0][:, None, None, :]
    for index, label in enumerate(labels):
        top, left = rng.integers(0, 16, 2)
        images[index, top : top + 16, left : left + 16] = palette[label, 1]
    noise = rng.integers(-12, 13, images.shape)
    return np.clip(images.astype(int) + noise, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def python_batches(train_count=500, test_count=100, seed=0):
    """{file name: bytes} of a small CIFAR-10 in the Python-batch format, and the arrays."""
    images, labels = patterned_images(train_count + test_count, seed)
    per_batch = train_count // len(BATCHES)
    files, arrays = {"batches.meta": meta_bytes(per_batch=per_batch)}, {}
    for index, name in enumerate(BATCHES):
        part = slice(index * per_batch, (index + 1) * per_batch)
        files[name] = batch_bytes(images[part], labels[part], f"training batch {index + 1} of 5")
    files["test_batch"] = batch_bytes(
        images[train_count:], labels[train_count:], "testing batch 1 of 1"
    )
    arrays["train"] = images[: per_batch * len(BATCHES)], labels[: per_batch * len(BATCHES)]
    arrays["test"] = images[train_count:], labels[train_count:]
    return files, arrays


def binary_batches(train_count=500, test_count=100, seed=0):
    """{file name: bytes} of the binary version: each record a label byte and 3,072 pixels."""
    images, labels = patterned_images(train_count + test_count, seed)
    per_batch = train_count // len(BATCHES)

    def records(part):
        rows = images[part].transpose(0, 3, 1, 2).reshape(-1, 3072)
        return np.concatenate([labels[part, None], rows], axis=1).astype(np.uint8).tobytes()

    files = {
        f"{name}.bin": records(slice(index * per_batch, (index + 1) * per_batch))
        for index, name in enumerate(BATCHES)
    }
    files["test_batch.bin"] = records(slice(train_count, None))
    files["batches.meta.txt"] = ("\n".join(LABEL_NAMES) + "\n\n").encode()
    arrays = {
        "train": (images[: per_batch * len(BATCHES)], labels[: per_batch * len(BATCHES)]),
        "test": (images[train_count:], labels[train_count:]),
    }
    return files, arrays


def write_folder(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    return folder


def write_archive(path, files, folder_name="cifar-10-batches-py"):
    """A .tar.gz holding `folder_name`/<file> for each file, as the official archive does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, payload in files.items():
            member = tarfile.TarInfo(f"{folder_name}/{name}")
            member.size = len(payload)
            archive.addfile(member, io.BytesIO(payload))
    return path
