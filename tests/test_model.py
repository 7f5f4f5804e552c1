"""The model's shapes, its sampling and its loss, checked against numpy."""

import keras
import numpy as np
import pytest

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


def test_fused_adam_trains_exactly_as_keras_adam():
    """main.py's optimizer is Keras' Adam with one TensorFlow kernel per update: same weights."""
    images = np.random.default_rng(3).random((96, 32, 32, 1), dtype=np.float32)
    trained = []
    for optimizer_class in (keras.optimizers.Adam, vae_module.FusedAdam):
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
