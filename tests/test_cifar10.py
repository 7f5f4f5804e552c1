"""CIFAR-10 from its own files: read right, hostile or broken files refused, a run end to end.

The files are written as the official archives hold them (tests/cifar10_files.py): Python-2
protocol-2 pickles, or the binary version's fixed records."""

import dataclasses
import glob
import gzip
import io
import json
import lzma
import math
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import warnings

import hypothesis
import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

import cifar10_batches
import data
import main
import results
import settings
from cifar10_files import (
    LABEL_NAMES,
    batch_bytes,
    binary_batches,
    patterned_images,
    python_batches,
    write_archive,
    write_folder,
)
from conftest import colour_spread, quick_config, run_python
from data import DataError


@pytest.fixture(scope="module")
def batches():
    return python_batches(train_count=100, test_count=20)


def assert_read_back(source, arrays):
    (x_train, y_train), (x_test, y_test) = data.load_dataset("cifar10", str(source))
    assert x_train.shape == (100, 32, 32, 3) and x_test.shape == (20, 32, 32, 3)
    assert x_train.dtype == np.uint8 and y_train.dtype == np.uint8
    np.testing.assert_array_equal(x_train, arrays["train"][0])
    np.testing.assert_array_equal(y_train, arrays["train"][1])
    np.testing.assert_array_equal(x_test, arrays["test"][0])
    np.testing.assert_array_equal(y_test, arrays["test"][1])


def test_reads_the_batches_folder_its_parent_and_the_archive(tmp_path, batches):
    files, arrays = batches
    folder = write_folder(tmp_path / "cache" / "cifar-10-batches-py", files)
    archive = write_archive(tmp_path / "download" / "cifar-10-python.tar.gz", files)
    for source in (folder, folder.parent, archive, archive.parent):
        assert_read_back(source, arrays)
    images = data.load_images("cifar10", str(archive), image_size=32)
    assert images.class_names == LABEL_NAMES and images.colour == "rgb"
    assert images.train_images.shape == (100, 32, 32, 3)
    np.testing.assert_allclose(images.test_images * 255, arrays["test"][0])


def test_keras_reads_the_test_files_as_the_archive_has_them(tmp_path, batches):
    """The test files are what the real download holds: Keras' own CIFAR-10 reader (numpy's
    real reconstruction) reads the same arrays from them."""
    from keras.src.datasets.cifar import load_batch

    files, arrays = batches
    folder = write_folder(tmp_path / "cifar-10-batches-py", files)
    with warnings.catch_warnings():  # numpy.core is numpy 2's deprecated alias of numpy._core
        warnings.simplefilter("ignore", DeprecationWarning)
        keras_images, keras_labels = load_batch(str(folder / "test_batch"))
    np.testing.assert_array_equal(keras_images.transpose(0, 2, 3, 1), arrays["test"][0])
    assert keras_labels == arrays["test"][1].tolist()


def test_reads_the_binary_version(tmp_path):
    files, arrays = binary_batches(train_count=100, test_count=20)
    folder = write_folder(tmp_path / "cifar-10-batches-bin", files)
    archive = write_archive(tmp_path / "cifar-10-binary.tar.gz", files, "cifar-10-batches-bin")
    for source in (folder, tmp_path, archive):
        assert_read_back(source, arrays)
    assert cifar10_batches.read(str(folder))[1] == LABEL_NAMES


def test_images_are_stored_as_red_green_blue_planes(tmp_path):
    """One image, one labelled pixel per plane: the reader puts the planes in the channels."""
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[0, 0, 1] = (10, 20, 30)  # row 0, column 1: red 10, green 20, blue 30
    files = {"batches.meta": python_batches(5, 1)[0]["batches.meta"]}
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"):
        files[name] = batch_bytes(image, [7], name)
    files["test_batch"] = batch_bytes(image, [7], "test")
    raw = files["test_batch"]
    # In the file: the red plane's second byte is 10, the green plane's 20, the blue one's 30.
    planes = raw[raw.index(b"T\x00\x0c\x00\x00") + 5 :][: 3 * 1024]
    assert (planes[1], planes[1024 + 1], planes[2048 + 1]) == (10, 20, 30)
    folder = write_folder(tmp_path / "cifar-10-batches-py", files)
    (_, _), (x_test, y_test) = data.load_dataset("cifar10", str(folder))
    np.testing.assert_array_equal(x_test, image)
    assert y_test.tolist() == [7]


MARKER_CODE = "open({path!r}, 'w').write('this ran')"


def code_running_pickle(marker):
    """A protocol-2 pickle that calls builtins.exec on code writing `marker` when loaded."""
    code = MARKER_CODE.format(path=str(marker)).encode()
    return (
        b"\x80\x02cbuiltins\nexec\nq\x00X"
        + struct.pack("<I", len(code))
        + code
        + b"q\x01\x85q\x02Rq\x03."
    )


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, batches):
    files, _ = batches
    marker = tmp_path / "ran.txt"
    payload = code_running_pickle(marker)
    # The payload is live: Python's own pickle.loads runs it (in a separate process).
    subprocess.run(
        [sys.executable, "-c", f"import pickle; pickle.loads({payload!r})"], check=True, timeout=60
    )
    assert marker.read_text() == "this ran"
    marker.unlink()

    folder = write_folder(tmp_path / "cifar-10-batches-py", {**files, "data_batch_3": payload})
    with pytest.raises(DataError) as refused:
        data.load_dataset("cifar10", str(folder))
    message = str(refused.value)
    assert message.startswith(
        f"{folder / 'data_batch_3'}: refused: the file asks for builtins.exec"
    )
    assert "not an original CIFAR-10 file" in message and "\n" not in message
    assert not marker.exists()


def test_a_batch_repickled_by_todays_python_is_refused(tmp_path):
    """pickle.dump writes numpy's new module name and _codecs.encode, which the archive never
    holds; the reader names what it refused rather than trusting it."""
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}
    with pytest.raises(DataError, match=r"refused: the file asks for (numpy\._core|_codecs)"):
        cifar10_batches.read_cifar10_pickle(pickle.dumps(batch, protocol=2), "repickled")


def test_an_array_of_objects_is_refused(tmp_path):
    """numpy's own names, but a dtype other than bytes: refused before any array is made."""
    payload = b"\x80\x02cnumpy\ndtype\nq\x01U\x02O8K\x00K\x01\x87Rq\x02."  # numpy.dtype('O8', 0, 1)
    with pytest.raises(DataError, match=r"refused: the file asks for an array of dtype b'O8'"):
        cifar10_batches.read_cifar10_pickle(payload, "objects")


def test_truncated_and_oversized_files_give_one_clear_error(tmp_path, batches):
    files, _ = batches
    folder = write_folder(tmp_path / "cifar-10-batches-py", files)
    batch = folder / "data_batch_2"
    batch.write_bytes(files["data_batch_2"][: len(files["data_batch_2"]) // 2])
    with pytest.raises(DataError, match=r"data_batch_2: not a readable CIFAR-10 batch .*truncated"):
        data.load_dataset("cifar10", str(folder))

    with open(batch, "wb") as file:  # sparse: no disk space or time spent on it
        file.truncate(cifar10_batches.CIFAR10_MAX_FILE_BYTES + 1)
    with pytest.raises(DataError, match=r"data_batch_2: 33,554,433 bytes, more than a CIFAR-10"):
        data.load_dataset("cifar10", str(folder))

    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", files)
    cut = tmp_path / "cut" / "cifar-10-python.tar.gz"
    cut.parent.mkdir()
    cut.write_bytes(archive.read_bytes()[:-3000])
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz: not a readable CIFAR-10 archive"):
        data.load_dataset("cifar10", str(cut))

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no CIFAR-10 batches there; give --data-dir the folder"):
        data.load_dataset("cifar10", str(tmp_path / "empty"))


def test_an_archive_member_larger_than_a_batch_is_not_read(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        member = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        member.size = cifar10_batches.CIFAR10_MAX_FILE_BYTES + 1
        tar.addfile(member, io.BytesIO(bytes(member.size)))
    with pytest.raises(DataError, match=r"test_batch declares 33,554,433 bytes"):
        data.load_dataset("cifar10", str(archive))


def test_a_pipe_or_a_device_named_as_a_batch_is_refused(tmp_path, batches):
    files, _ = batches
    folder = write_folder(tmp_path / "cifar-10-batches-py", files)
    batch = folder / "data_batch_1"
    for make in (os.mkfifo, lambda path: os.symlink("/dev/zero", path)):
        batch.unlink()
        make(batch)
        with pytest.raises(DataError, match=f"^{batch}: not a regular file"):
            data.load_dataset("cifar10", str(folder))


def test_archives_that_are_not_cifar10_are_refused_quickly(tmp_path, batches):
    files, _ = batches
    # xz under the gzip archive's name, damaged in the middle.
    plain = write_archive(tmp_path / "plain.tar.gz", files)
    with gzip.open(plain) as tar:
        compressed = lzma.compress(tar.read())
    xz = tmp_path / "xz" / "cifar-10-python.tar.gz"
    xz.parent.mkdir()
    middle = len(compressed) // 2
    xz.write_bytes(compressed[:middle] + bytes(100) + compressed[middle + 100 :])
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz: not a readable CIFAR-10"):
        data.load_dataset("cifar10", str(xz))
    # Thousands of empty members (a few bytes each once compressed), then a batch that
    # declares 4 GiB: refused at the header past the limits, nothing skipped through.
    many = tmp_path / "many" / "cifar-10-python.tar.gz"
    many.parent.mkdir()
    with tarfile.open(many, "w:gz") as tar:
        for number in range(cifar10_batches.CIFAR10_MAX_MEMBERS + 1):
            tar.addfile(tarfile.TarInfo(f"empty_{number}"))
    huge = tmp_path / "huge" / "cifar-10-python.tar.gz"
    huge.parent.mkdir()
    member = tarfile.TarInfo("cifar-10-batches-py/readme.html")
    member.size = 4 << 30
    huge.write_bytes(gzip.compress(member.tobuf(tarfile.GNU_FORMAT) + bytes(100_000)))
    for archive in (many, huge):
        with pytest.raises(DataError, match=r"more than 100 files or 512 MB in the archive"):
            data.load_dataset("cifar10", str(archive))


def test_a_lying_string_length_does_not_allocate_it():
    import tracemalloc

    # BINSTRING and BINBYTES claiming 2 GiB, BINBYTES8 2**40 bytes; 1,000 bytes are there.
    claims = [
        b"\x80\x02T\xff\xff\xff\x7f" + bytes(1000),
        b"\x80\x03B\xff\xff\xff\x7f" + bytes(1000),
        b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + bytes(1000),
    ]
    for payload in claims:
        tracemalloc.start()
        with pytest.raises(DataError, match="truncated or corrupt"):
            cifar10_batches.read_cifar10_pickle(payload, "lying")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 10 * 2**20


def test_wrong_contents_are_named(tmp_path, batches):
    files, _ = batches
    images, labels = patterned_images(3)
    cases = {
        "3 labels for 2 images": batch_bytes(images[:2], [1, 2, 3], "x"),
        "a label is out of range": batch_bytes(images, [1, 2, 10], "x"),
    }
    for message, payload in cases.items():
        folder = write_folder(
            tmp_path / message / "cifar-10-batches-py", {**files, "test_batch": payload}
        )
        with pytest.raises(DataError, match=message):
            data.load_dataset("cifar10", str(folder))
    binary, _ = binary_batches(train_count=5, test_count=1)
    folder = write_folder(tmp_path / "bin" / "cifar-10-batches-bin", binary)
    (folder / "test_batch.bin").write_bytes(binary["test_batch.bin"][:-1])
    with pytest.raises(DataError, match=r"3,072 bytes is not a whole number of 3,073-byte"):
        data.load_dataset("cifar10", str(folder))


@hypothesis.settings(
    max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    cut=st.integers(0, 3400),
    # Bytes changed in the pickle's opcodes: before the pixels, and the labels after them.
    flips=st.lists(
        st.tuples(st.one_of(st.integers(0, 200), st.integers(3200, 3400)), st.integers(0, 255)),
        max_size=6,
    ),
)
def test_damaged_batches_give_data_error_or_a_checked_batch(cut, flips):
    images, labels = patterned_images(1)
    payload = bytearray(batch_bytes(images, labels, "x"))
    for position, value in flips:
        if position < len(payload):
            payload[position] = value
    try:
        entries = cifar10_batches.read_cifar10_pickle(
            bytes(payload[: len(payload) - cut]), "damaged"
        )
    except DataError:
        return
    for value in entries.values():
        assert isinstance(value, (bytes, int, list, np.ndarray))
        if isinstance(value, np.ndarray):
            assert value.dtype == np.uint8


def shared_reference_tower(levels, width=100):
    """Opcodes that build, level by level, a container holding `width` references to the
    one below: a few hundred bytes a level, width**levels objects once expanded."""
    out = b"K\x00q\x01"  # level 0: an int in memo slot 1
    for level in range(1, levels + 1):
        out += b"(" + (b"h" + bytes([level])) * width + b"tq" + bytes([level + 1])
    return out


def refused_quickly(payload, message):
    """Refused with `message`, within a second and 10 MB."""
    import time
    import tracemalloc

    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DataError, match=message) as refused:
            cifar10_batches.read_cifar10_pickle(payload, "hostile")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1 and peak < 10 * 2**20
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 300


def test_a_memo_index_far_ahead_is_refused_before_anything_is_set_aside():
    # 11 bytes: an empty list stored in memo slot 2**27 (the unpickler would set aside 2 GB).
    payload = b"\x80\x02]r" + struct.pack("<I", 2**27) + b"0."
    refused_quickly(payload, r"refused: the file asks for memo slot 134,217,728 with 0 objects")


def test_shared_references_cannot_multiply_the_work():
    # A dict key of tuples that each hold 100 references to the one below: 100**7 to hash.
    key = shared_reference_tower(7)
    refused_quickly(b"\x80\x02}q\x00" + key + b"K\x00s.", r"a value of more than 1,000,000")
    # One level is small, but a tuple as a key is still refused: no batch has one.
    key = shared_reference_tower(1)
    refused_quickly(b"\x80\x02}q\x00" + key + b"K\x00s.", r"a dict key that is a container")
    # numpy.dtype(<nested tuples>): refused without writing the argument out (repr would
    # expand every reference).
    dtype_call = shared_reference_tower(2) + b"cnumpy\ndtype\nh\x03\x85R."
    refused_quickly(b"\x80\x02" + dtype_call, r"asks for an array of dtype \?,")


# Pieces of protocol-2 pickles, the dangerous ones among them: memo slots near and far,
# references to them, containers, names, calls, and bytes that are no opcode at all.
OPCODE_PIECES = st.one_of(
    st.sampled_from(
        [b"K\x07", b"U\x02u1", b"T\x03\x00\x00\x00abc", b"N", b"\x89", b"]", b"}", b")", b"("]
        + [b"\x85", b"\x86", b"\x87", b"t", b"a", b"e", b"s", b"u", b"R", b"b", b"0"]
        + [b"cnumpy\ndtype\n", b"cnumpy\nndarray\n", b"cnumpy.core.multiarray\n_reconstruct\n"]
        + [b"cbuiltins\neval\n", b"h\x01h\x01\x86q\x01", b"(h\x01h\x01h\x01tq\x01"]
    ),
    st.integers(0, 3).map(lambda slot: b"q" + bytes([slot])),
    st.integers(0, 3).map(lambda slot: b"h" + bytes([slot])),
    st.sampled_from([2**16, 2**27, 2**31]).map(lambda slot: b"r" + struct.pack("<I", slot)),
    st.binary(min_size=1, max_size=3),
)


@hypothesis.settings(max_examples=300, deadline=1000)
@given(pieces=st.lists(OPCODE_PIECES, max_size=80))
def test_random_opcode_streams_end_quickly_in_little_memory(pieces):
    """Whatever the opcodes, the reader ends within the deadline, in under 10 MB, with a
    checked batch or one line."""
    import tracemalloc

    tracemalloc.start()
    try:
        entries = cifar10_batches.read_cifar10_pickle(
            b"\x80\x02" + b"".join(pieces) + b".", "fuzzed"
        )
    except DataError as error:
        assert "\n" not in str(error) and len(str(error)) < 300
        entries = {}
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 10 * 2**20
    for value in entries.values():
        assert isinstance(value, (bytes, int, list, np.ndarray))


def test_no_download_names_the_offline_files(monkeypatch):
    import keras

    def offline():
        raise Exception("URL fetch failure: no network")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataError, match="could not download cifar10 .*cifar-10-python.tar.gz"):
        data.load_dataset("cifar10")


@pytest.fixture(scope="module")
def cifar10_archive(tmp_path_factory):
    files, _ = python_batches(train_count=500, test_count=100)
    return write_archive(tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz", files)


@pytest.mark.slow
def test_a_run_on_cifar10_files_trains_reloads_and_draws_in_colour(tmp_path, cifar10_archive):
    import matplotlib.image
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    vae, _ = main.train(
        quick_config(tmp_path, str(cifar10_archive), dataset="cifar10", latent_dim=8, epochs=2)
    )
    record = json.loads((tmp_path / "models" / "metrics.json").read_text())
    test = record["test"]
    assert record["config"]["colour"] == "rgb" and test["likelihood"] == "autoregressive"
    # What lossless coders spend on the same test images comes with the model's figure.
    assert 0 < test["png_bits_per_dim"] < 9 and 0 < test["webp_bits_per_dim"] < 9
    assert test["dimensions"] == 32 * 32 * 3 and test["data_entropy_floor"] is None
    assert test["bits_per_dim"] == pytest.approx(test["negative_elbo"] / (3072 * math.log(2)))
    assert test["iw_bits_per_dim"] == pytest.approx(test["iw_nll"] / (3072 * math.log(2)))
    # Below 8: a uniform distribution over the 256 levels costs exactly 8 bits per value, and
    # a model that learned the pictures' colours and rectangles spends less. Above 4: the
    # noise added to each value, uniform over 25 levels, costs log2(25) = 4.64 bits away from
    # 0 and 255, and no model can code it in less.
    assert 4 < test["bits_per_dim"] < 8 and 4 < test["iw_bits_per_dim"] < 8

    for name in ("reconstructions", "samples", "interpolation", "traversals"):
        picture = matplotlib.image.imread(tmp_path / "plots" / f"{name}.png")
        assert colour_spread(picture) > 1e-3, name
    (images_folder,) = glob.glob(str(tmp_path / "logs" / "*" / "images"))
    events = EventAccumulator(images_folder, size_guidance={"tensors": 0})
    events.Reload()
    for tag in ("reconstructions", "samples from the prior"):
        _, _, *pictures = tf.make_ndarray(events.Tensors(tag)[-1].tensor_proto)
        decoded = tf.io.decode_png(pictures[0]).numpy()
        assert decoded.shape[-1] == 3 and colour_spread(decoded) > 1, tag

    images = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    z_mean, _ = vae.encoder.predict(images, verbose=0)
    reloaded = run_python(
        f"""
import json, keras, numpy as np
encoder = keras.saving.load_model({str(tmp_path / "models" / "encoder.keras")!r})
decoder = keras.saving.load_model({str(tmp_path / "models" / "decoder.keras")!r})
z_mean, _ = encoder.predict(np.load('images.npy'), verbose=0)
decoded = decoder.predict(z_mean, verbose=0)
print(json.dumps({{"z_mean": z_mean.tolist(), "decoded": decoded.tolist()}}))
""",
        cwd=tmp_path,
    )
    np.testing.assert_allclose(reloaded["z_mean"], z_mean, rtol=1e-5, atol=1e-6)
    decoded = np.array(reloaded["decoded"])
    assert decoded.shape == (2, 32, 32, 3) and decoded.min() >= 0 and decoded.max() <= 1
    np.testing.assert_allclose(decoded, vae.decoder.predict(z_mean, verbose=0), atol=1e-6)

    # --evaluate-only takes the size, colour, latent size and likelihood from the model file.
    evaluated = settings.Config(
        dataset="cifar10",
        data_dir=str(cifar10_archive),
        output_dir=str(tmp_path),
        evaluate_only=True,
        iw_samples=2,
        plots=False,
    )
    results.evaluate_saved_model(evaluated)
    again = json.loads((tmp_path / "models" / "metrics.json").read_text())
    assert again["test"]["iw_samples"] == 2 and again["test"]["likelihood"] == test["likelihood"]
    assert (again["config"]["latent_dim"], again["config"]["colour"]) == (8, "rgb")
    with pytest.raises(main.RunError, match="was trained with --colour rgb; add --colour rgb"):
        results.evaluate_saved_model(dataclasses.replace(evaluated, colour="grey"))


@pytest.mark.slow
def test_a_conditional_colour_model_at_a_size_other_than_the_files(
    tmp_path, cifar10_archive, monkeypatch
):
    # Its explorer page would decode a fine grid for each of the ten classes; the page of a
    # conditional colour model is tested in test_explorer.py.
    monkeypatch.setattr(results.explorer, "write_explorer", lambda *args, **kwargs: None)
    vae, _ = main.train(
        quick_config(
            tmp_path,
            str(cifar10_archive),
            dataset="cifar10",
            conditional=True,
            image_size=48,  # the archive's pictures are 32x32
            limit=300,
            latent_dim=2,
            image_every=0,
            plot_class=0,
            # The pixel head would draw its samples pixel by pixel, 2,304 steps at 48x48:
            # this test is of the conditional model's shapes and plots.
            likelihood="discretized_logistic",
        )
    )
    assert vae.decoder.output.shape == (None, 48, 48, 3) and vae.num_classes == 10
    plots = {path.name for path in (tmp_path / "plots").iterdir()}
    assert {"class_samples.png", "manifold_class0.png", "latent_space.png"} <= plots
    record = json.loads((tmp_path / "models" / "metrics.json").read_text())
    assert record["test"]["dimensions"] == 48 * 48 * 3
