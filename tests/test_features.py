"""Fashion-MNIST, the conditional VAE, beta and KL warm-up, pictures in TensorBoard."""

import glob
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import data
import main
import settings
import training
from conftest import quick_config, run_python


def read_events(folder, kind):
    accumulator = EventAccumulator(folder, size_guidance={kind: 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.slow
def test_fashion_mnist_trains_and_names_its_run(tmp_path, fashion_mnist_dir):
    _, history = main.train(quick_config(tmp_path, fashion_mnist_dir, dataset="fashion_mnist"))
    assert np.isfinite(history.history["val_loss"][0])
    (run_folder,) = (tmp_path / "logs").iterdir()
    assert run_folder.name.startswith("fashion_mnist-latent2-")
    assert (tmp_path / "plots" / "latent_space.png").exists()


@pytest.mark.slow
def test_conditional_decoder_reloads_with_plain_keras_and_follows_the_label(tmp_path, mnist_dir):
    model, _ = main.train(
        quick_config(tmp_path, mnist_dir, conditional=True, epochs=2, limit=1200, plot_class=3)
    )
    plots = {path.name for path in (tmp_path / "plots").iterdir()}
    assert {"class_samples.png", "manifold_class3.png", "interpolation.png", "samples.png"} <= plots
    assert "manifold_class4.png" not in plots  # --plot-class 3 draws that class only
    decoded = run_python(
        f"""
import json, keras, numpy as np
decoder = keras.saving.load_model({str(tmp_path / "models" / "decoder.keras")!r})
encoder = keras.saving.load_model({str(tmp_path / "models" / "encoder.keras")!r})
z = np.zeros((10, 2), 'float32')
images = decoder.predict([z, np.eye(10, dtype='float32')], verbose=0)
z_mean, _ = encoder.predict([images, np.eye(10, dtype='float32')], verbose=0)
print(json.dumps({{"images": images.tolist(), "z_mean": z_mean.tolist()}}))
""",
        cwd=tmp_path,
    )
    images = np.array(decoded["images"])
    assert images.shape == (10, 32, 32, 1)
    # The reloaded encoder reads the label as the trained one does.
    labels = np.eye(10, dtype="float32")
    expected, _ = model.encoder.predict([images.astype("float32"), labels], verbose=0)
    np.testing.assert_allclose(decoded["z_mean"], expected, rtol=1e-4, atol=1e-5)
    # The same z, ten labels: ten different pictures.
    differences = np.abs(images[:, None] - images[None]).mean(axis=(2, 3, 4))
    assert differences[~np.eye(10, dtype=bool)].min() > 1e-3


@pytest.mark.slow
def test_kl_warmup_rises_step_by_step_and_val_loss_stays_the_true_elbo(tmp_path, mnist_dir):
    # 256 images in batches of 64: 4 steps an epoch, so the 2-epoch warm-up takes 8 steps.
    _, history = main.train(
        quick_config(tmp_path, mnist_dir, epochs=3, kl_warmup_epochs=2, limit=256, plots=False)
    )
    logged = history.history
    np.testing.assert_allclose(logged["kl_weight"], [0.5, 1.0, 1.0])  # after steps 4, 8 and 12
    np.testing.assert_allclose(
        logged["val_loss"],
        np.add(logged["val_reconstruction_loss"], logged["val_kl_loss"]),
        rtol=1e-4,
    )
    # Epoch 0 trained with weights 0, 1/8, 2/8 and 3/8; epoch 2 with the full KL term.
    assert (
        logged["reconstruction_loss"][0]
        < logged["loss"][0]
        < logged["reconstruction_loss"][0] + 0.5 * logged["kl_loss"][0]
    )
    np.testing.assert_allclose(
        logged["loss"][2], logged["reconstruction_loss"][2] + logged["kl_loss"][2], rtol=1e-4
    )
    (train_folder,) = glob.glob(str(tmp_path / "logs" / "*" / "train"))
    scalars = read_events(train_folder, "tensors")
    weights = [
        float(tf.make_ndarray(event.tensor_proto)) for event in scalars.Tensors("epoch_kl_weight")
    ]
    np.testing.assert_allclose(weights, [0.5, 1.0, 1.0])


def test_beta_weights_the_kl_term_in_training_only(tmp_path, mnist_dir):
    _, history = main.train(quick_config(tmp_path, mnist_dir, beta=4.0, limit=256, plots=False))
    logged = {name: values[0] for name, values in history.history.items()}
    np.testing.assert_allclose(
        logged["loss"], logged["reconstruction_loss"] + 4 * logged["kl_loss"], rtol=1e-4
    )
    np.testing.assert_allclose(
        logged["val_loss"], logged["val_reconstruction_loss"] + logged["val_kl_loss"], rtol=1e-4
    )
    assert logged["kl_weight"] == 4.0


def test_tensorboard_gets_pictures_every_n_epochs(tmp_path, mnist_dir):
    main.train(quick_config(tmp_path, mnist_dir, epochs=2, image_every=2, limit=256, plots=False))
    (images_folder,) = glob.glob(str(tmp_path / "logs" / "*" / "images"))
    events = read_events(images_folder, "tensors")
    assert set(events.Tags()["tensors"]) == {
        "reconstructions",
        "samples from the prior",
        "latent space",
    }
    cards = {}
    for tag in events.Tags()["tensors"]:
        (logged,) = events.Tensors(tag)
        assert logged.step == 1  # the second epoch only
        width, height, *pictures = tf.make_ndarray(logged.tensor_proto)
        assert len(pictures) == 1  # one card per kind of picture
        cards[tag] = tf.io.decode_png(pictures[0]).numpy()
        assert cards[tag].shape[:2] == (int(height), int(width))
    # 16 test images in rows of 8, each row above its reconstructions: 4 rows of 32 pixels,
    # 8 columns, 2 grey pixels between them. The samples: 16 in 2 rows.
    assert cards["reconstructions"].shape == (4 * 32 + 3 * 2, 8 * 32 + 7 * 2, 1)
    assert cards["samples from the prior"].shape == (2 * 32 + 2, 8 * 32 + 7 * 2, 1)
    test_images = data.load_for(quick_config(tmp_path, mnist_dir, limit=256)).test_images
    top = np.pad(cards["reconstructions"][:32], ((0, 0), (0, 2), (0, 0)))  # 8 tiles of 32 + 2
    first_row = top.reshape(32, 8, 34, 1)[:, :, :32]
    expected = np.round(test_images[:8, ..., 0] * 255).transpose(1, 0, 2)
    np.testing.assert_allclose(first_row[..., 0], expected, atol=1)  # the originals, in order


def step_sizes(config, steps, train_size=640):
    """Adam's step size at each of `steps`, as make_model(config) sets it up."""
    optimizer = training.make_model(config, train_size).optimizer
    sizes = []
    for step in steps:
        optimizer.iterations.assign(step)
        sizes.append(float(optimizer.learning_rate))
    return sizes


@pytest.mark.slow
def test_learning_rate_warms_up_then_follows_the_cosine():
    # 640 images in batches of 64: 10 steps an epoch, 30 in all, the first 10 warming up.
    chosen = dict(epochs=3, batch_size=64, learning_rate=1e-3, lr_warmup_epochs=1)
    np.testing.assert_allclose(
        step_sizes(settings.Config(**chosen), [0, 5, 10, 20, 30]),
        [1e-4, 5.5e-4, 1e-3, 5e-4, 0.0],
        rtol=1e-4,
        atol=1e-9,
    )
    # Without the cosine, the step size stays at its top after the warm-up.
    np.testing.assert_allclose(
        step_sizes(settings.Config(**chosen, cosine_decay=False), [0, 10, 30]),
        [1e-4, 1e-3, 1e-3],
        rtol=1e-4,
    )
    # Without a warm-up the cosine starts at the full step size.
    np.testing.assert_allclose(
        step_sizes(
            settings.Config(epochs=3, batch_size=64, learning_rate=1e-3, lr_warmup_epochs=0),
            [0, 15],
        ),
        [1e-3, 5e-4],
        rtol=1e-4,
    )


@pytest.mark.slow
def test_bfloat16_run_trains_and_its_encoder_reloads_with_plain_keras(tmp_path, mnist_dir):
    model, history = main.train(
        quick_config(tmp_path, mnist_dir, dtype_policy="mixed_bfloat16", limit=256, plots=False)
    )
    assert np.isfinite(history.history["val_loss"][0])
    assert model.encoder.layers[1].compute_dtype == "bfloat16"
    images = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    expected, _ = model.encoder.predict(images, verbose=0)
    assert expected.dtype == np.float32  # the heads stay float32
    # The last layer computes in bfloat16 too, but users and the loss get float32.
    probabilities = model.decoder.predict(expected, verbose=0)
    assert (
        probabilities.dtype == np.float32
        and probabilities.min() >= 0.0
        and probabilities.max() <= 1.0
    )
    outputs = model(images)
    assert {
        keras.backend.standardize_dtype(outputs[key].dtype) for key in ("logits", "reconstruction")
    } == {"float32"}
    reloaded = run_python(
        f"""
import json, keras, numpy as np
encoder = keras.saving.load_model({str(tmp_path / "models" / "encoder.keras")!r})
images = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
z_mean, _ = encoder.predict(images, verbose=0)
print(json.dumps({{"z_mean": z_mean.tolist(), "dtype": encoder.layers[1].compute_dtype}}))
""",
        cwd=tmp_path,
    )
    assert reloaded["dtype"] == "bfloat16"
    np.testing.assert_allclose(reloaded["z_mean"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "bfloat16_seconds, expected", [(0.5, "mixed_bfloat16"), (0.95, "float32"), (6.0, "float32")]
)
def test_auto_dtype_policy_takes_bfloat16_only_where_clearly_faster(
    monkeypatch, bfloat16_seconds, expected
):
    timings = {"float32": 1.0, "mixed_bfloat16": bfloat16_seconds}
    monkeypatch.setattr(
        training, "step_seconds", lambda config, *args, **kwargs: timings[config.dtype_policy]
    )
    training.fastest_dtype_policy.cache_clear()
    try:
        config = training.resolve_dtype_policy(settings.Config(dtype_policy="auto"))
    finally:
        training.fastest_dtype_policy.cache_clear()  # later tests time the real steps again
    assert config.dtype_policy == expected
    assert (
        training.resolve_dtype_policy(settings.Config(dtype_policy="float32")).dtype_policy
        == "float32"
    )


@pytest.mark.slow
def test_auto_dtype_policy_run_records_what_it_trained_in(tmp_path, mnist_dir):
    model, _ = main.train(
        quick_config(tmp_path, mnist_dir, dtype_policy="auto", limit=256, plots=False)
    )
    chosen = json.loads((tmp_path / "models" / "metrics.json").read_text())["config"][
        "dtype_policy"
    ]
    assert chosen in ("float32", "mixed_bfloat16")
    assert model.encoder.layers[1].dtype_policy.name == chosen
