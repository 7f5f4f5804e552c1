"""--dataset folder reads the checked files themselves (no folder of symbolic links, which
Windows refuses without developer mode), split and ordered as Keras splits a folder."""

import os

import numpy as np
import pytest
from PIL import Image

import image_folder
from reading import ReadOptions


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """A folder of 41 pictures of varied sizes, grey and colour, PNG, JPEG, BMP and GIF, in
    three classes (one with a nested folder), and the same pictures without classes."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(4)
    for index in range(41):
        kind = ("cat", "dog", "dog/puppies", "zebra")[index % 4]
        suffix = (".png", ".jpg", ".PNG", ".bmp", ".gif")[index % 5]
        pixels = rng.integers(0, 256, (9 + index % 7, 8 + (index * 5) % 11, 3), np.uint8)
        picture = Image.fromarray(pixels).convert("L" if index % 3 == 0 else "RGB")
        for folder in (root / "classes" / kind, root / "flat"):
            folder.mkdir(parents=True, exist_ok=True)
            picture.save(folder / f"{index:02d}{suffix}")
    return root


def keras_splits(folder, labelled, seed, test_split, size):
    """The train and test images and labels that keras.utils.image_dataset_from_directory
    gives for `folder` read as this program reads a folder (uint8, as image_folder rounds)."""
    import keras

    splits = keras.utils.image_dataset_from_directory(
        folder,
        labels="inferred" if labelled else None,
        label_mode="int" if labelled else None,
        color_mode="rgb",
        batch_size=None,
        image_size=(size, size),
        shuffle=True,
        seed=seed,
        validation_split=test_split,
        subset="both",
        interpolation="area",
        pad_to_aspect_ratio=True,
        verbose=False,
    )
    read = []
    for split in splits:
        elements = list(split.as_numpy_iterator())
        images = [element[0] if labelled else element for element in elements]
        labels = np.array([element[1] for element in elements]) if labelled else None
        read.append((np.clip(np.round(images), 0, 255).astype(np.uint8), labels))
    return read, splits[0].class_names if labelled else None


@pytest.mark.parametrize("layout", ["classes", "flat"])
@pytest.mark.parametrize("seed, test_split", [(1337, 0.2), (5, 0.35)])
def test_a_folder_is_split_and_ordered_as_keras_splits_it(pictures, layout, seed, test_split):
    folder = str(pictures / layout)
    options = ReadOptions(12, seed=seed, test_split=test_split, verbose=False)
    read, class_names = image_folder.read(folder, ("train", "test"), options)
    expected, expected_names = keras_splits(folder, layout == "classes", seed, test_split, 12)
    assert class_names == expected_names
    for (images, labels), (keras_images, keras_labels) in zip(read, expected, strict=True):
        np.testing.assert_array_equal(images, keras_images)
        if keras_labels is None:
            assert labels is None
        else:
            np.testing.assert_array_equal(labels, keras_labels)


def test_no_symbolic_link_is_made(pictures, monkeypatch):
    def refused(*args, **kwargs):
        raise OSError("symbolic links need developer mode on Windows")

    monkeypatch.setattr(os, "symlink", refused)
    options = ReadOptions(12, seed=0, test_split=0.25, verbose=False)
    (train, test), class_names = image_folder.read(str(pictures / "classes"), ("test",), options)
    assert class_names == ["cat", "dog", "zebra"]
    assert len(train[0]) == 0 and len(test[0]) == int(0.25 * 41)
