"""The model's shapes, its sampling and its loss, checked against numpy."""

import keras
import numpy as np
import pytest

import evaluation
import training
import vae as vae_module
from conftest import small_vae


@pytest.mark.parametrize("latent_dim", [2, 8])
def test_encoder_and_decoder_shapes(latent_dim):
    model = small_vae(latent_dim=latent_dim, filters=8, hidden_units=16)
    images = np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32)
    z_mean, z_log_var = model.encoder.predict(images, verbose=0)
    assert z_mean.shape == z_log_var.shape == (3, latent_dim)
    decoded = model.decoder.predict(z_mean, verbose=0)
    assert decoded.shape == (3, 32, 32, 1)
    assert decoded.min() >= 0 and decoded.max() <= 1


def test_shapes_follow_the_image_size():
    model = small_vae(image_size=40, latent_dim=3)
    assert model.decoder.output.shape == (None, 40, 40, 1)
    with pytest.raises(ValueError, match="divisible by 4"):
        small_vae(image_size=30)


def test_convolutions_have_biases_only_with_conv_bias(tmp_path):
    def biased(model):
        return [
            (layer.name == "logits", layer.use_bias)
            for layer in model.encoder.layers + model.decoder.layers
            if isinstance(layer, keras.layers.Conv2D | keras.layers.Conv2DTranspose)
        ]

    lean = small_vae()
    # Two convolutions, two transposed ones without biases; the logits layer keeps its own.
    assert biased(lean) == [(False, False)] * 4 + [(True, True)]
    # --conv-bias: the earlier architecture, 2 * (4 + 8) biases more; its files still load.
    with_bias = small_vae(conv_bias=True)
    assert biased(with_bias) == [(False, True)] * 4 + [(True, True)]
    assert with_bias.count_params() == lean.count_params() + 2 * (4 + 8)
    with_bias.encoder.save(tmp_path / "encoder.keras")
    images = np.random.default_rng(0).random((3, 32, 32, 1), dtype=np.float32)
    reloaded = keras.saving.load_model(tmp_path / "encoder.keras")
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0)[0],
        with_bias.encoder.predict(images, verbose=0)[0],
        rtol=1e-5,
        atol=1e-6,
    )
    assert all(
        layer.use_bias for layer in reloaded.layers if isinstance(layer, keras.layers.Conv2D)
    )


def test_hidden_layers_stack_dense_layers_on_each_side_of_z():
    def dense_widths(model):
        return [layer.units for layer in model.layers if isinstance(layer, keras.layers.Dense)]

    one = small_vae(hidden_units=8, hidden_layers=1)
    three = small_vae(hidden_units=8, hidden_layers=3)
    # Encoder: the hidden layers, then the z_mean and z_log_var heads (latent 2). Decoder: the
    # hidden layers, then the 8x8 grid of twice 4 filters for the 32x32 image.
    assert dense_widths(three.encoder) == [8, 8, 8, 2, 2]
    assert dense_widths(three.decoder) == [8, 8, 8, 8 * 8 * 8]
    assert dense_widths(one.decoder) == [8, 8 * 8 * 8]
    # Two more 8 -> 8 layers (64 weights and 8 biases each) on each side.
    assert three.count_params() == one.count_params() + 2 * 2 * (64 + 8)


def test_sampling_draws_from_the_given_gaussian():
    sampling = vae_module.Sampling(seed=3)
    z_mean = np.full((20000, 2), [1.0, -2.0], dtype=np.float32)
    z_log_var = np.full((20000, 2), np.log([0.25, 4.0]), dtype=np.float32)
    z = keras.ops.convert_to_numpy(sampling([z_mean, z_log_var]))
    np.testing.assert_allclose(z.mean(axis=0), [1.0, -2.0], atol=0.05)
    np.testing.assert_allclose(z.std(axis=0), [0.5, 2.0], rtol=0.03)
    again = keras.ops.convert_to_numpy(sampling([z_mean, z_log_var]))
    assert not np.allclose(z, again)  # fresh noise on every call


def test_loss_is_summed_bce_plus_kl_per_image():
    model = small_vae()
    rng = np.random.default_rng(1)
    images = (rng.random((4, 32, 32, 1)) > 0.7).astype(np.float32)
    outputs = {key: keras.ops.convert_to_numpy(value) for key, value in model(images).items()}
    loss = float(model.compute_loss(x=images, y_pred=outputs, training=False))

    logits = outputs["logits"].astype(np.float64)
    bce = np.maximum(logits, 0) - logits * images + np.log1p(np.exp(-np.abs(logits)))
    reconstruction = bce.reshape(4, -1).sum(axis=1).mean()
    mean, log_var = outputs["z_mean"].astype(np.float64), outputs["z_log_var"].astype(np.float64)
    kl = (-0.5 * (1 + log_var - mean**2 - np.exp(log_var)).sum(axis=1)).mean()
    np.testing.assert_allclose(loss, reconstruction + kl, rtol=1e-5)
    np.testing.assert_allclose(
        outputs["reconstruction"], 1 / (1 + np.exp(-logits)), rtol=1e-5, atol=1e-6
    )


def test_fit_reports_loss_and_its_parts():
    model = small_vae()
    model.compile(optimizer="adam")
    images = np.random.default_rng(2).random((64, 32, 32, 1), dtype=np.float32)
    history = model.fit(
        images, validation_data=(images,), batch_size=32, epochs=1, verbose=0
    ).history
    for name in ("loss", "reconstruction_loss", "kl_loss"):
        assert np.isfinite(history[name][0]) and np.isfinite(history["val_" + name][0])
    # Validation always uses KL weight 1: val_loss is the negative ELBO.
    np.testing.assert_allclose(
        history["val_loss"][0],
        history["val_reconstruction_loss"][0] + history["val_kl_loss"][0],
        rtol=1e-4,
    )


@pytest.mark.slow
def test_fused_adam_trains_exactly_as_keras_adam():
    """main.py's optimizer is Keras' Adam with one TensorFlow kernel per update: same weights."""
    images = np.random.default_rng(3).random((96, 32, 32, 1), dtype=np.float32)
    trained = []
    for optimizer_class in (keras.optimizers.Adam, training.FusedAdam):
        keras.utils.set_random_seed(0)  # the same initial weights for both
        # With conv biases: without them this tiny model turns the two optimizers' rounding
        # differences (1e-7 after one step) into 1e-3 within a few steps.
        model = small_vae(conv_bias=True)
        initial = [keras.ops.convert_to_numpy(weight) for weight in model.trainable_weights]
        schedule = keras.optimizers.schedules.CosineDecay(1e-2, decay_steps=6)
        model.compile(optimizer=optimizer_class(schedule))
        model.fit(images, batch_size=32, epochs=2, shuffle=False, verbose=0)
        assert int(model.optimizer.iterations.numpy()) == 6
        trained.append([keras.ops.convert_to_numpy(weight) for weight in model.trainable_weights])
        assert not any(
            np.allclose(before, after) for before, after in zip(initial, trained[-1], strict=True)
        )
    for keras_adam, fused_adam in zip(*trained, strict=True):
        np.testing.assert_allclose(fused_adam, keras_adam, rtol=1e-4, atol=1e-6)


# The discretized logistic likelihood of 8-bit values, against numbers worked out apart from it.

LEVELS = np.arange(256) / 255.0
HALF_LEVEL = 0.5 / 255


def reference_probabilities(values, location, scale):
    """P(value) under a logistic discretized to the 256 levels, in float64 with scipy: the
    mass within half a level of the value, the end levels taking their tails too."""
    from scipy.special import expit

    upper = np.where(values > 1 - HALF_LEVEL, 1.0, expit((values + HALF_LEVEL - location) / scale))
    lower = np.where(values < HALF_LEVEL, 0.0, expit((values - HALF_LEVEL - location) / scale))
    return upper - lower


@pytest.mark.parametrize(
    "location, log_scale",
    [(0.5, -3.0), (0.0, -6.0), (1.0, -6.0), (-0.3, -1.0), (1.4, 0.5), (0.25, -9.0), (0.9, 3.0)],
)
def test_discretized_logistic_probabilities_of_the_256_levels_sum_to_one(location, log_scale):
    log_probabilities = keras.ops.convert_to_numpy(
        vae_module.discretized_logistic_log_probability(
            LEVELS.astype(np.float32), np.float32(location), np.float32(log_scale)
        )
    ).astype(np.float64)
    assert log_probabilities.max() <= 0
    np.testing.assert_allclose(np.exp(log_probabilities).sum(), 1.0, rtol=1e-5)


def test_discretized_logistic_loss_equals_a_numpy_reference():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 256, (3, 4, 4, 3)) / 255.0
    values[0, 0, 0] = [0.0, 1.0, 0.0]  # the end levels too
    location = values + rng.normal(0, 0.05, values.shape)
    log_scale = rng.uniform(np.log(0.005), np.log(0.3), values.shape)
    logits = np.concatenate([location, log_scale], axis=-1).astype(np.float32)
    nats = keras.ops.convert_to_numpy(
        vae_module.reconstruction_nats(values.astype(np.float32), logits, "discretized_logistic")
    )
    expected = -np.log(reference_probabilities(values, location, np.exp(log_scale)))
    np.testing.assert_allclose(nats, expected.reshape(3, -1).sum(axis=1), rtol=1e-4)


def test_bits_per_dimension_of_a_hand_case():
    """Each value's logistic centred on its level with scale = half a level / ln 3 gives that
    level sigmoid(ln 3) - sigmoid(-ln 3) = 3/4 - 1/4 = 1/2: one bit per value. The lowest
    level takes its tail too, sigmoid(ln 3) = 3/4: -log2(3/4) = 0.415 bits."""
    scale = HALF_LEVEL / np.log(3)
    middle = np.array([[[[1, 128, 254], [7, 30, 200]]]]) / 255.0  # 1 x 1 x 2 x 3: six values
    with_an_end = middle.copy()
    with_an_end[0, 0, 0, 0] = 0.0
    for values, bits in ((middle, 1.0), (with_an_end, (5 + np.log2(4 / 3)) / 6)):
        logits = np.concatenate([values, np.full(values.shape, np.log(scale))], axis=-1)
        nats = float(
            vae_module.reconstruction_nats(
                values.astype(np.float32), logits.astype(np.float32), "discretized_logistic"
            )[0]
        )
        assert evaluation.bits_per_dimension(nats, values.size) == pytest.approx(bits, rel=1e-4)
    assert evaluation.bits_per_dimension(6 * np.log(2), 6) == pytest.approx(1.0)
    assert evaluation.bits_per_dimension(3072 * 8 * np.log(2), 3072) == pytest.approx(8.0)


@pytest.mark.parametrize("likelihood, parameters", [("bernoulli", 1), ("discretized_logistic", 2)])
def test_a_colour_model_follows_the_channels_and_its_likelihood(likelihood, parameters):
    model = small_vae(colour="rgb", latent_dim=4, likelihood=likelihood)
    assert model.encoder.input.shape == (None, 32, 32, 3)
    assert model.decoder.output.shape == (None, 32, 32, 3)
    assert model.decoder.get_layer("logits").output.shape == (None, 32, 32, 3 * parameters)
    assert model.dimensions == 3072
    z = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    images = model.decoder.predict(z, verbose=0)
    logits = model.decoder_logits.predict(z, verbose=0).astype(np.float64)
    # The image users get: probabilities, or each value's location clipped to [0, 1].
    expected = 1 / (1 + np.exp(-logits)) if parameters == 1 else np.clip(logits[..., :3], 0, 1)
    np.testing.assert_allclose(images, expected, rtol=1e-5, atol=1e-6)


def test_discretized_logistic_loss_is_its_nats_plus_kl_per_image():
    model = small_vae(colour="rgb", latent_dim=3, likelihood="discretized_logistic")
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3)).astype(np.float32) / 255
    outputs = {key: keras.ops.convert_to_numpy(value) for key, value in model(images).items()}
    loss = float(model.compute_loss(x=images, y_pred=outputs, training=False))
    location, log_scale = np.split(outputs["logits"].astype(np.float64), 2, axis=-1)
    nats = -np.log(reference_probabilities(images, location, np.exp(log_scale)))
    mean, log_var = outputs["z_mean"].astype(np.float64), outputs["z_log_var"].astype(np.float64)
    kl = (-0.5 * (1 + log_var - mean**2 - np.exp(log_var)).sum(axis=1)).mean()
    np.testing.assert_allclose(loss, nats.reshape(4, -1).sum(axis=1).mean() + kl, rtol=1e-5)
    np.testing.assert_allclose(outputs["reconstruction"], np.clip(location, 0, 1), atol=1e-6)


def test_the_discretized_logistic_keeps_its_logits_in_float32_under_bfloat16():
    """bfloat16 spaces numbers between 0.5 and 1 by 1/256: a location rounded to them can be
    half a level (1/255) off, where a sharp logistic puts most of its mass in one level."""
    colour = small_vae(colour="rgb", latent_dim=2, dtype_policy="mixed_bfloat16")
    grey = small_vae(latent_dim=2, dtype_policy="mixed_bfloat16")
    assert colour.decoder.get_layer("logits").compute_dtype == "float32"
    assert grey.decoder.get_layer("logits").compute_dtype == "bfloat16"


def test_a_discretized_logistic_starts_where_the_images_are():
    """Each channel's location at its mean level, its scale a logistic's of the same spread:
    a logistic of scale s has standard deviation s pi / sqrt(3)."""
    images = np.zeros((4, 32, 32, 3), np.float32)
    images[:2, ..., 0] = 1.0  # red: half the images at 1, half at 0: mean 0.5, spread 0.5
    images[..., 1] = 0.25  # green: one level throughout: no spread
    images[:, :16, :, 2] = 0.8  # blue: half of every image at 0.8: mean 0.4, spread 0.4
    model = small_vae(colour="rgb", latent_dim=2, likelihood="discretized_logistic")
    vae_module.start_likelihood_from_data(model, images)
    bias = keras.ops.convert_to_numpy(model.decoder.get_layer("logits").bias)
    np.testing.assert_allclose(bias[:3], [0.5, 0.25, 0.4], rtol=1e-6)
    half_level = 0.5 / 255
    np.testing.assert_allclose(
        np.exp(bias[3:]) * np.pi / np.sqrt(3), [0.5, half_level, 0.4], rtol=1e-5
    )
    bernoulli = small_vae(colour="rgb", latent_dim=2, likelihood="bernoulli")
    before = keras.ops.convert_to_numpy(bernoulli.decoder.get_layer("logits").bias)
    vae_module.start_likelihood_from_data(bernoulli, images)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(bernoulli.decoder.get_layer("logits").bias), before
    )


def test_a_spatial_latent_is_a_map_of_local_codes():
    """With --spatial-latent, z is an 8x8 map for 32x32 images (4 channels a position by
    default), each position coding its own neighbourhood: a pixel in one corner moves the
    code at that corner and not at the opposite one, and a code in one corner moves the
    decoded pixels there and not at the opposite one. The encoder's three 3x3 convolutions
    (two of stride 2) see 15 pixels across, the decoder's three 15 as well: far less than
    the 32 between opposite corners."""
    keras.utils.set_random_seed(0)  # the same first weights whatever ran before
    model = small_vae(colour="rgb", spatial_latent=True, likelihood="discretized_logistic")
    assert model.encoder.outputs[0].shape[1:] == (8 * 8 * 4,)
    assert model.decoder.inputs[0].shape[1:] == (8 * 8 * 4,)
    images = np.random.default_rng(0).uniform(size=(1, 32, 32, 3)).astype("float32")
    moved = images.copy()
    moved[0, :2, :2] = 1.0 - moved[0, :2, :2]  # the corner's 2x2 pixels
    codes = [model.encoder.predict(x, verbose=0)[0].reshape(8, 8, 4) for x in (images, moved)]
    assert np.abs(codes[0][0, 0] - codes[1][0, 0]).max() > 1e-6
    np.testing.assert_array_equal(codes[0][7, 7], codes[1][7, 7])

    z = np.random.default_rng(1).normal(size=(1, 256)).astype("float32")
    shifted = z.reshape(8, 8, 4).copy()
    shifted[0, 0] += 3.0
    decoded = [model.decoder.predict(x.reshape(1, 256), verbose=0)[0] for x in (z, shifted)]
    assert np.abs(decoded[0][:4, :4] - decoded[1][:4, :4]).max() > 1e-6
    np.testing.assert_array_equal(decoded[0][24:, 24:], decoded[1][24:, 24:])


def test_a_conditional_spatial_latent_reads_the_label_everywhere():
    model = small_vae(colour="rgb", spatial_latent=True, conditional=True, image_size=16)
    z = np.zeros((2, 4 * 4 * 4), "float32")
    labels = np.eye(10, dtype="float32")[[0, 7]]
    first, second = model.decoder.predict([z, labels], verbose=0)
    # The label reaches every position of the map, corners included.
    assert np.abs(first[:2, :2] - second[:2, :2]).max() > 1e-6
    assert np.abs(first[-2:, -2:] - second[-2:, -2:]).max() > 1e-6


def test_a_latent_size_that_does_not_fill_the_map_is_refused_in_one_line():
    import data
    import settings

    with pytest.raises(ValueError, match="must be a multiple of 64"):
        small_vae(colour="rgb", spatial_latent=True, latent_dim=100)

    class Images:  # what check_labels reads of loaded images
        colour, num_classes = "rgb", 0

    config = settings.Config(dataset="folder", spatial_latent=True, latent_dim=100)
    with pytest.raises(data.DataError, match="multiple of 64, not 100; or add --no-spatial"):
        settings.check_labels(config, Images())
