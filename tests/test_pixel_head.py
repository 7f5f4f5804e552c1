"""The pixel head: it reads only earlier pixels, its mixtures are distributions, drawing
follows them, and a VAE with it saves, reloads and draws."""

import io
import itertools
import struct

import keras
import numpy as np
import pytest

import evaluation
import pixel_head
import settings
import vae as vae_module


def small_head(channels=3, depth=2, components=2):
    keras.utils.set_random_seed(0)
    return pixel_head.build_pixel_head(
        channels=channels, features=4, width=8, depth=depth, components=components
    )


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_a_pixel_is_predicted_from_earlier_pixels_only(depth):
    head = small_head(depth=depth)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(1, 8, 8, 4)).astype(np.float32)
    image = rng.uniform(size=(1, 8, 8, 3)).astype(np.float32)
    before = np.asarray(head([features, image]))
    changed = image.copy()
    changed[0, 4, 3] = 1.0 - changed[0, 4, 3]  # one pixel, all its channels
    after = np.asarray(head([features, changed]))
    moved = np.any(np.abs(after - before) > 1e-6, axis=-1)[0]
    order = np.arange(64).reshape(8, 8)  # reading order
    assert not moved[order <= order[4, 3]].any()  # itself and every pixel before it: unchanged
    assert moved[4, 4] and moved[5, 3]  # its right and lower neighbours read it


def test_the_rows_a_pixel_reads_are_what_drawing_keeps():
    head = small_head(depth=3)
    reach = pixel_head.rows_seen_above(head)
    assert reach == 3 + 2 + 2  # three rows, then two more for each further layer
    rng = np.random.default_rng(1)
    features = rng.normal(size=(1, 12, 8, 4)).astype(np.float32)
    image = rng.uniform(size=(1, 12, 8, 3)).astype(np.float32)
    whole = np.asarray(head([features, image]))[:, 11]
    window = np.asarray(head([features[:, 11 - reach :], image[:, 11 - reach :]]))[:, -1]
    np.testing.assert_allclose(window, whole, atol=1e-5)
    # One row fewer is not enough: the window's edge then changes the last row.
    short = np.asarray(head([features[:, 12 - reach :], image[:, 12 - reach :]]))[:, -1]
    assert np.abs(short - whole).max() > 1e-4


@pytest.mark.parametrize("channels", [1, 2])
def test_each_pixels_mixture_sums_to_one_over_every_value(channels):
    components = 3
    rng = np.random.default_rng(channels)
    parameters = rng.normal(size=pixel_head.parameter_count(channels, components))
    parameters[components:] *= 0.3  # locations near the levels' range, scales moderate
    levels = np.arange(256) / 255.0
    # Every combination of the channels' levels, one 1x1 image each.
    values = np.array(list(itertools.product(levels, repeat=channels)), np.float32)
    images = values.reshape(-1, 1, 1, channels)
    tiled = np.tile(parameters.astype(np.float32), (len(images), 1, 1, 1))
    nats = np.asarray(pixel_head.mixture_nats(images, tiled, components))
    assert np.exp(-nats.astype(np.float64)).sum() == pytest.approx(1.0, abs=1e-4)


def test_one_component_without_coupling_is_the_plain_discretized_logistic():
    rng = np.random.default_rng(2)
    images = np.round(rng.uniform(size=(2, 4, 4, 3)) * 255) / 255
    location = rng.uniform(size=(2, 4, 4, 3))
    log_scale = rng.uniform(-4, -1, size=(2, 4, 4, 3))
    # One component: weight logit, 3 locations (offsets from the left neighbour, 0 in the
    # first column), 3 log-scales, 3 coefficients of 0.
    left = np.concatenate([np.zeros((2, 4, 1, 3)), images[:, :, :-1]], axis=2)
    parameters = np.concatenate(
        [np.zeros((2, 4, 4, 1)), location - left, log_scale, np.zeros((2, 4, 4, 3))], axis=-1
    )
    mixture = pixel_head.mixture_nats(images, parameters.astype(np.float32), 1)
    plain = vae_module.reconstruction_nats(
        images, np.concatenate([location, log_scale], -1), "discretized_logistic"
    )
    np.testing.assert_allclose(np.asarray(mixture), np.asarray(plain), rtol=1e-5)


def test_drawn_values_follow_the_mixture():
    components = 2
    # Two grey components: one at level 50 (weight e / (1 + e)), a wide one at level 200.
    parameters = np.array([1.0, 0.0, 50 / 255, np.log(2 / 255), 200 / 255, np.log(8 / 255)])
    draws = pixel_head.sample_pixel(
        np.tile(parameters, (40000, 1)),
        np.zeros((40000, 1)),
        1,
        components,
        np.random.default_rng(3),
    )
    counts = np.bincount(np.round(draws[:, 0] * 255).astype(int), minlength=256)
    levels = (np.arange(256) / 255.0).reshape(-1, 1, 1, 1).astype(np.float32)
    tiled = np.tile(parameters.astype(np.float32), (256, 1, 1, 1))
    expected = np.exp(-np.asarray(pixel_head.mixture_nats(levels, tiled, components)))
    assert 0.5 * np.abs(counts / counts.sum() - expected).sum() < 0.03  # total variation


def test_a_vae_with_a_pixel_head_saves_reloads_and_draws(tmp_path):
    config = settings.Config(
        image_size=8,
        colour="rgb",
        latent_dim=4,
        filters=4,
        hidden_units=8,
        hidden_layers=1,
        seed=0,
        likelihood="autoregressive",
        dtype_policy="float32",
    )
    model = vae_module.build_vae(config)
    images = keras.ops.convert_to_tensor(np.random.default_rng(4).uniform(size=(3, 8, 8, 3)))
    path = tmp_path / "vae.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.mixture_components == vae_module.PIXEL_HEAD["components"]
    for model_ in (model, loaded):
        decoded = vae_module.decode_for_loss(model_, keras.ops.zeros((3, 4)), images)
        assert decoded["pixels"].shape[1:3] == (8, 8)
    ones = keras.ops.ones((3, 4))
    nats = [
        np.asarray(vae_module.image_nats(m, images, vae_module.decode_for_loss(m, ones, images)))
        for m in (model, loaded)
    ]
    np.testing.assert_allclose(nats[0], nats[1], rtol=1e-6)
    drawn = vae_module.draw_images(loaded, np.zeros((2, 4), np.float32), seed=1)
    assert drawn.shape == (2, 8, 8, 3) and drawn.min() >= 0 and drawn.max() <= 1
    # 8-bit levels, and the same seed draws the same images.
    np.testing.assert_allclose(drawn * 255, np.round(drawn * 255), atol=1e-3)
    again = vae_module.draw_images(loaded, np.zeros((2, 4), np.float32), seed=1)
    np.testing.assert_array_equal(drawn, again)


def _chunk_payload_bytes(data, kind):
    """Bytes of the pixel data alone in a PNG (IDAT chunks) or a lossless WebP (VP8L)."""
    if kind == "png":
        total, offset = 0, 8
        while offset < len(data):
            (length,) = struct.unpack(">I", data[offset : offset + 4])
            if data[offset + 4 : offset + 8] == b"IDAT":
                total += length
            offset += 12 + length
        return total
    assert data[12:16] == b"VP8L"
    size = struct.unpack("<I", data[16:20])[0]
    return size + size % 2  # RIFF pads a chunk to an even length


def test_coders_count_the_pixel_data_alone():
    from PIL import Image

    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(3, 16, 16, 3)) // 64 * 64 / 255.0  # four levels
    figures = evaluation.coder_bits_per_dimension(images)
    assert figures["coder_images"] == 3
    for kind, options in (("png", {"optimize": True}), ("webp", {"lossless": True})):
        payload = 0
        for image in np.round(images * 255).astype(np.uint8):
            stream = io.BytesIO()
            Image.fromarray(image).save(stream, kind.upper(), **options)
            payload += _chunk_payload_bytes(stream.getvalue(), kind)
        assert figures[f"{kind}_bits_per_dim"] == pytest.approx(8 * payload / images.size)


def test_a_head_started_from_data_predicts_each_pixel_as_its_left_neighbour():
    head = small_head(channels=3, depth=1, components=2)
    rng = np.random.default_rng(6)
    images = (rng.integers(0, 256, size=(2, 6, 6, 3)) / 255.0).astype(np.float32)
    pixel_head.start_from_data(head, images, 3, 2)
    kernel = head.get_layer("parameters").kernel
    kernel.assign(np.zeros(kernel.shape))  # the parameters are then the biases alone
    parameters = np.asarray(head([np.zeros((2, 6, 6, 4), np.float32), images]))
    # Both components alike: a logistic at the left neighbour (0 in the first column), with
    # the scale of the steps between neighbours.
    steps = images[:, :, 1:] - images[:, :, :-1]
    log_scale = np.log(steps.std(axis=(0, 1, 2)) * np.sqrt(3) / np.pi)
    left = np.concatenate([np.zeros((2, 6, 1, 3)), images[:, :, :-1]], axis=2)
    expected = -np.asarray(
        pixel_head.discretized_logistic_log_probability(
            images, left, np.broadcast_to(log_scale, images.shape).astype(np.float32)
        )
    ).sum(axis=(1, 2, 3))
    nats = np.asarray(pixel_head.mixture_nats(images, parameters, 2))
    np.testing.assert_allclose(nats, expected, rtol=1e-4)


def test_a_pixel_heads_flops_are_its_convolutions_at_every_pixel():
    import flops

    head = small_head(channels=3, depth=1, components=2)
    # Per pixel: above 3x7x3x8, left 1x3x3x8, from the features 4x8, one 8x8 layer, and the
    # parameters 8 x 2 x (1 + 3 + 3 + 3).
    per_pixel = 3 * 7 * 3 * 8 + 3 * 3 * 8 + 4 * 8 + 8 * 8 + 8 * 20
    assert flops.pixel_head_flops(head, 8 * 8) == 2 * 64 * per_pixel
