"""--dataset folder: the user's own PNG / JPEG images, with or without class sub-folders."""

import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import data
import main
import results
import settings
from conftest import quick_config
from data import DataError


def write_pngs(folder, images, labels=None):
    """One PNG per image: in a sub-folder per label, or all in `folder` without labels."""
    for index, image in enumerate(images):
        place = folder if labels is None else folder / str(labels[index])
        place.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(place / f"{index:05d}.png")
    return folder


@pytest.fixture(scope="module")
def mnist_pngs(tmp_path_factory, mnist_dir):
    """The first 1,440 MNIST training digits as 28x28 PNGs, in both layouts, and the arrays."""
    (images, labels), _ = data.load_dataset("mnist", mnist_dir, limit=1440)
    root = tmp_path_factory.mktemp("pngs")
    return (
        write_pngs(root / "classes", images, labels),
        write_pngs(root / "flat", images),
        (
            images,
            labels,
        ),
    )


def test_the_folder_gives_the_idx_files_pixels_and_labels(mnist_pngs):
    classes, _, (images, labels) = mnist_pngs
    loaded = data.load_images("folder", str(classes), image_size=28, seed=1, test_split=0.2)
    assert loaded.class_names == [str(digit) for digit in range(10)] and loaded.colour == "grey"
    assert (len(loaded.train_images), len(loaded.test_images)) == (1152, 288)
    as_read = {image.tobytes(): label for image, label in zip(images, labels, strict=True)}
    for split_images, split_labels in (
        (loaded.train_images, loaded.train_labels),
        (loaded.test_images, loaded.test_labels),
    ):
        pixels = np.round(split_images[..., 0] * 255).astype(np.uint8)
        assert [as_read[image.tobytes()] for image in pixels] == split_labels.tolist()
    # The split follows the seed: the same again, another for another seed.
    again = data.load_images("folder", str(classes), image_size=28, seed=1, test_split=0.2)
    other = data.load_images("folder", str(classes), image_size=28, seed=2, test_split=0.2)
    np.testing.assert_array_equal(again.test_images, loaded.test_images)
    assert not np.array_equal(other.test_images, loaded.test_images)


def test_a_flat_folder_is_unlabelled_and_unreadable_files_are_counted(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_pngs(tmp_path, rng.integers(0, 256, (20, 12, 12, 3), dtype=np.uint8))
    (tmp_path / "not-an-image.png").write_bytes(b"garbage")
    (tmp_path / "cut.png").write_bytes((tmp_path / "00000.png").read_bytes()[:60])
    (tmp_path / "notes.txt").write_text("not read: not an image file type")
    loaded = data.load_images("folder", str(tmp_path), image_size=12, seed=0, test_split=0.25)
    assert loaded.train_labels is None and loaded.test_labels is None
    assert loaded.class_names is None and loaded.num_classes == 0 and loaded.colour == "rgb"
    assert len(loaded.train_images) + len(loaded.test_images) == 20
    assert "left out 2 files that could not be read as images" in capsys.readouterr().out


def test_colour_follows_the_files_or_the_flag(tmp_path):
    grey = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    write_pngs(tmp_path / "grey", np.repeat(grey, 5, axis=0))
    # The same grey pictures saved as RGB files are grey too: three equal channels.
    write_pngs(tmp_path / "rgb-but-grey", np.repeat(grey[..., None], 3, axis=-1).repeat(5, axis=0))
    for name in ("grey", "rgb-but-grey"):
        loaded = data.load_images("folder", str(tmp_path / name), image_size=8, test_split=0.2)
        assert loaded.colour == "grey" and loaded.train_images.shape[1:] == (8, 8, 1)
    as_rgb = data.load_images(
        "folder", str(tmp_path / "grey"), image_size=8, test_split=0.2, colour="rgb"
    )
    assert as_rgb.train_images.shape[1:] == (8, 8, 3)
    np.testing.assert_array_equal(as_rgb.train_images[..., 0], as_rgb.train_images[..., 2])


def test_pictures_are_shrunk_to_fit_keeping_their_shape(tmp_path):
    orange = np.array([255, 102, 0], np.uint8)
    wide = np.broadcast_to(orange, (10, 20, 40, 3))  # twice as wide as high
    write_pngs(tmp_path, wide)
    loaded = data.load_images("folder", str(tmp_path), image_size=32, test_split=0.2)
    image = loaded.train_images[0]
    assert image.shape == (32, 32, 3)
    assert image[:8].max() == 0 and image[24:].max() == 0  # black bars above and below
    np.testing.assert_allclose(image[9:23], np.broadcast_to(orange / 255, (14, 32, 3)), atol=1e-6)


def test_every_data_set_comes_at_64_pixels(tmp_path, mnist_dir):
    mnist = data.load_images("mnist", mnist_dir, limit=60, image_size=64)
    assert mnist.train_images.shape == (60, 64, 64, 1)
    assert mnist.train_images[:, :18].max() == 0  # 28x28 digits padded by 18 pixels a side
    teal = np.array([0, 128, 128], np.uint8)
    write_pngs(tmp_path, np.broadcast_to(teal, (10, 32, 32, 3)), labels=[0, 1] * 5)
    folder = data.load_images("folder", str(tmp_path), image_size=64, test_split=0.2)
    assert folder.train_images.shape == (8, 64, 64, 3)
    np.testing.assert_allclose(folder.train_images, np.broadcast_to(teal / 255, (8, 64, 64, 3)))


def test_folder_mistakes_give_one_sentence(tmp_path):
    def refused(folder, **options):
        with pytest.raises(DataError) as error:
            data.load_images("folder", folder, image_size=32, **options)
        assert "\n" not in str(error.value)
        return str(error.value)

    assert refused(None).startswith("--dataset folder needs --data-dir DIR")
    assert refused(str(tmp_path / "missing")).endswith("--data-dir is not a folder")
    (tmp_path / "empty").mkdir()
    assert "no PNG, JPEG, BMP or GIF images found" in refused(str(tmp_path / "empty"))
    write_pngs(tmp_path / "few", np.zeros((2, 8, 8), np.uint8))
    assert "2 images are too few to hold out --test-split 0.2" in refused(str(tmp_path / "few"))
    write_pngs(tmp_path / "mixed", np.zeros((4, 8, 8), np.uint8), labels=[0, 0, 1, 1])
    write_pngs(tmp_path / "mixed", np.zeros((1, 8, 8), np.uint8))
    assert "holds images beside sub-folders" in refused(str(tmp_path / "mixed"))
    write_pngs(tmp_path / "broken", [np.zeros((8, 8), np.uint8)] * 5)
    for path in (tmp_path / "broken").iterdir():
        path.write_bytes(b"not a picture")
    assert refused(str(tmp_path / "broken")).endswith(
        "broken: none of its image files can be used; left out 5 files that could not be read "
        "as images"
    )


@pytest.mark.slow
def test_folder_runs_train_like_the_idx_files(tmp_path, mnist_dir, mnist_pngs):
    """The same digits through the folder and through the IDX files (28x28: the folder's
    files are used as they are): the test negative ELBOs agree within a few per cent, the
    difference of two test sets of 200 to 240 digits. Without class sub-folders the run is
    unlabelled: drawn in one colour, and refused as a conditional model. --evaluate-only
    scores the images the run held out, whatever --seed and --test-split say then."""
    classes, flat, _ = mnist_pngs
    chosen = dict(image_size=28, limit=1200, epochs=2, image_every=0)
    elbo = {}
    for name, dataset, data_dir in (
        ("idx", "mnist", mnist_dir),
        ("classes", "folder", str(classes)),
        ("flat", "folder", str(flat)),
    ):
        config = quick_config(
            tmp_path / name, data_dir, dataset=dataset, test_split=1 / 6, **chosen
        )
        main.train(config)
        record = json.loads((tmp_path / name / "models" / "metrics.json").read_text())
        assert record["config"]["latent_dim"] == 2 and record["test"]["likelihood"] == "bernoulli"
        elbo[name] = record["test"]["negative_elbo"]
    assert elbo["classes"] == pytest.approx(elbo["idx"], rel=0.05), elbo
    assert elbo["flat"] == pytest.approx(elbo["idx"], rel=0.05), elbo
    assert (tmp_path / "flat" / "plots" / "interpolation.png").exists()
    assert '"class_names":null' in (tmp_path / "flat" / "plots" / "explorer.html").read_text()

    (sprite,) = (tmp_path / "classes").glob("logs/*/projector/sprite.png")  # the test images
    held_out = sprite.read_bytes()
    results.evaluate_saved_model(
        settings.Config(
            dataset="folder",
            data_dir=str(classes),
            output_dir=str(tmp_path / "classes"),
            evaluate_only=True,
            image_size=28,
            limit=1200,
            seed=5,
            iw_samples=2,
            plots=False,
        )
    )
    assert sprite.read_bytes() == held_out

    with pytest.raises(DataError, match="--conditional needs labelled images"):
        main.train(quick_config(tmp_path / "c", str(flat), dataset="folder", conditional=True))
    with pytest.raises(DataError, match="--plot-class 10: the images have 10 classes"):
        main.train(quick_config(tmp_path / "p", str(classes), dataset="folder", plot_class=10))


def png_chunk(kind, payload):
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_header(width, height):
    """A PNG as far as Pillow reads it to learn the size: its header, then pixel data that
    stops at once (decoding it would fail, which the size check comes before)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", b"")


def test_files_that_cannot_be_read_safely_are_left_out_and_counted(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_pngs(tmp_path, rng.integers(0, 256, (20, 12, 12, 3), dtype=np.uint8))
    os.mkfifo(tmp_path / "pipe.png")  # reading it would wait for ever
    os.symlink("/dev/zero", tmp_path / "zero.png")  # reading it would never end
    (tmp_path / "huge.png").write_bytes(png_header(20000, 20000))  # 1.2 GB once decoded
    Image.new("RGB", (1, 20000)).save(tmp_path / "thin.png")  # less than a pixel wide at 12
    # Hidden: thumbnails and a Mac's resource files are not images of the set.
    write_pngs(tmp_path / ".thumbnails", np.zeros((5, 12, 12), np.uint8))
    (tmp_path / "._00000.png").write_bytes(b"resource fork")
    loaded = data.load_images("folder", str(tmp_path), image_size=12, seed=0, test_split=0.25)
    assert len(loaded.train_images) + len(loaded.test_images) == 20
    assert loaded.class_names is None
    assert (
        "; left out 4 files: 1 of more than 50 million pixels, 2 that are not regular files, "
        "1 too narrow to keep a pixel across at 12x12\n"
    ) in capsys.readouterr().out


def test_hidden_sub_folders_of_a_class_are_not_read(tmp_path):
    write_pngs(tmp_path, np.zeros((10, 8, 8), np.uint8), labels=[0, 1] * 5)
    write_pngs(tmp_path / "0" / ".cache", np.full((7, 8, 8), 255, np.uint8))
    write_pngs(tmp_path / ".trash", np.full((7, 8, 8), 255, np.uint8), labels=[2] * 7)
    loaded = data.load_images("folder", str(tmp_path), image_size=8, test_split=0.2)
    assert loaded.class_names == ["0", "1"]
    assert len(loaded.train_images) + len(loaded.test_images) == 10
    assert loaded.train_images.max() == 0 and loaded.test_images.max() == 0
