"""What `tensorboard --logdir logs` shows of a run, asked of TensorBoard's own server as a
browser asks it: the test set's latent space in the Projector (points, classes, pictures)
and one card per kind of picture in the Images tab."""

import io
import json
import math
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import keras
import numpy as np
import pytest

import data
import main
import projector
from conftest import free_port, quick_config

TENSOR = "z_mean/.ATTRIBUTES/VARIABLE_VALUE"
RUNS = {"plain": dict(latent_dim=3), "conditional": dict(conditional=True)}


@pytest.fixture(scope="module")
def logs(tmp_path_factory, mnist_dir):
    """Two short runs in one output folder: a plain VAE of 3 latent dimensions and a
    conditional one of 2."""
    output_dir = tmp_path_factory.mktemp("tensorboard")
    for name, settings in RUNS.items():
        main.train(quick_config(output_dir, mnist_dir, run_name=name, plots=False, **settings))
    return output_dir


@pytest.fixture(scope="module")
def tensorboard(logs):
    """`tensorboard --logdir logs` on 127.0.0.1, once the Projector says it is active;
    yields a function that GETs a path and returns the body."""
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logs / "logs"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def get(path, **query):
        url = f"http://127.0.0.1:{port}/{path}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    try:
        deadline = time.monotonic() + 120
        while True:  # the server starts, then finds the Projector's files in a thread
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "TensorBoard never showed the Projector"
            try:
                if json.loads(get("data/plugins_listing"))["projector"]["enabled"]:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        yield get
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_the_projector_shows_every_test_image_with_its_class_and_picture(
    tensorboard, logs, mnist_dir, run
):
    assert f"{run}/projector" in json.loads(tensorboard("data/plugin/projector/runs"))
    info = json.loads(tensorboard("data/plugin/projector/info", run=f"{run}/projector"))
    (embedding,) = info["embeddings"]
    config = quick_config(logs, mnist_dir, **RUNS[run])
    images = data.load_for(config)
    test_images, test_labels = images.test_images, images.test_labels
    count = len(test_images)  # 512 // 6 = 85: all of them
    assert embedding["tensorName"] == TENSOR
    # The Projector draws three coordinates: a 2-D latent space lies in the plane z[2] = 0.
    assert embedding["tensorShape"] == [count, max(RUNS[run].get("latent_dim", 2), 3)]
    assert embedding["sprite"]["singleImageDim"] == [32, 32]

    query = dict(run=f"{run}/projector", name=TENSOR)
    metadata = tensorboard("data/plugin/projector/metadata", **query).decode().splitlines()
    assert metadata == ["class\tname"] + [f"{label}\t{label}" for label in test_labels]

    # The points are the test images' z_mean, as the saved encoder computes them.
    points = np.frombuffer(tensorboard("data/plugin/projector/tensor", **query), np.float32)
    encoder = keras.saving.load_model(logs / "models" / "encoder.keras")  # the last run's
    if run == "conditional":
        z_mean, _ = encoder.predict([test_images, data.one_hot(test_labels)], verbose=0)
        points = points.reshape(count, 3)
        np.testing.assert_allclose(points[:, :2], z_mean, rtol=1e-4, atol=1e-5)
        assert np.all(points[:, 2] == 0)
    else:
        assert points.shape == (count * 3,) and np.all(np.isfinite(points))

    # Each point's picture: the sprite holds the test images row by row, 10 x 10 of 32 x 32.
    sprite = tensorboard("data/plugin/projector/sprite_image", **query)
    picture = keras.utils.img_to_array(
        keras.utils.load_img(io.BytesIO(sprite), color_mode="grayscale")
    )
    side = math.ceil(math.sqrt(count)) * 32
    assert picture.shape == (side, side, 1)
    np.testing.assert_allclose(picture[:32, 32:64], np.round(test_images[1] * 255), atol=1)


def test_the_images_tab_has_one_card_per_kind_of_picture(tensorboard):
    tags = json.loads(tensorboard("data/plugin/images/tags"))
    for run in RUNS:
        cards = tags[f"{run}/images"]
        assert set(cards) == {"reconstructions", "samples from the prior", "latent space"}
        assert all(card["samples"] == 1 for card in cards.values())


@pytest.mark.parametrize(
    "count, image_size, expected", [(10000, 32, 10000), (20000, 32, 16384), (10000, 64, 4096)]
)
def test_the_sprite_stays_within_4096_pixels_square(count, image_size, expected):
    assert projector.projector_sample(count, image_size) == expected


def test_sprite_lays_the_images_out_row_by_row_from_the_top_left():
    images = np.stack([np.full((2, 2, 1), value / 10, np.float32) for value in range(5)])
    picture = projector.sprite(images)  # 5 images: a 3 x 3 square, the last four black
    assert picture.shape == (6, 6, 1) and picture.dtype == np.uint8
    tiles = picture[::2, ::2, 0]
    np.testing.assert_array_equal(tiles, [[0, 26, 51], [76, 102, 0], [0, 0, 0]])


ODD_NAMES = ["$\\frac{$", "a\tb", "two\nlines", "$x$ and $", "plain"]


def test_odd_class_names_are_drawn_and_listed_as_written(tmp_path):
    import plotting

    z_mean = np.random.default_rng(0).standard_normal((10, 2)).astype(np.float32)
    labels = np.arange(10) % len(ODD_NAMES)
    figure = plotting.latent_space_figure(z_mean, labels, ODD_NAMES)
    figure.canvas.draw()  # a name that matplotlib read as mathematics would stop here
    shown = [label.get_text() for label in figure.axes[1].get_yticklabels()]
    assert [text.replace("\\$", "$") for text in shown] == [
        name.replace("\t", " ") for name in ODD_NAMES
    ]
    assert plotting.figure_png(figure).startswith(b"\x89PNG")
    assert projector.metadata_lines([0, 1, 2], ODD_NAMES).splitlines() == [
        "class\tname",
        "0\t$\\frac{$",
        "1\ta b",
        "2\ttwo lines",
    ]
