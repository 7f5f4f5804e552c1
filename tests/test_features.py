"""Fashion-MNIST, the conditional VAE, beta and KL warm-up, pictures in TensorBoard."""

import glob

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
import tensorflow as tf

import main
from conftest import quick_config
from conftest import run_python


def read_events(folder, kind):
    accumulator = EventAccumulator(folder, size_guidance={kind: 0})
    accumulator.Reload()
    return accumulator


def test_fashion_mnist_trains_and_names_its_run(tmp_path, fashion_mnist_dir):
    _, history = main.train(quick_config(tmp_path, fashion_mnist_dir, dataset="fashion_mnist"))
    assert np.isfinite(history.history["val_loss"][0])
    (run_folder,) = (tmp_path / "logs").iterdir()
    assert run_folder.name.startswith("fashion_mnist-latent2-")
    assert (tmp_path / "plots" / "latent_space.png").exists()


def test_conditional_decoder_reloads_with_plain_keras_and_follows_the_label(tmp_path, mnist_dir):
    main.train(quick_config(tmp_path, mnist_dir, conditional=True, epochs=2, limit=1200, plot_class=3))
    plots = {path.name for path in (tmp_path / "plots").iterdir()}
    assert {"class_samples.png", "manifold_class3.png", "interpolation.png", "samples.png"} <= plots
    assert "manifold_class4.png" not in plots  # --plot-class 3 draws that class only
    decoded = run_python(f"""
import json, keras, numpy as np
decoder = keras.saving.load_model({str(tmp_path / 'models' / 'decoder.keras')!r})
encoder = keras.saving.load_model({str(tmp_path / 'models' / 'encoder.keras')!r})
z = np.zeros((10, 2), 'float32')
images = decoder.predict([z, np.eye(10, dtype='float32')], verbose=0)
z_mean, _ = encoder.predict([images, np.eye(10, dtype='float32')], verbose=0)
print(json.dumps({{"images": images.tolist(), "z_mean": z_mean.tolist()}}))
""", cwd=tmp_path)
    images = np.array(decoded["images"])
    assert images.shape == (10, 32, 32, 1)
    # The same z, ten labels: ten different pictures.
    differences = np.abs(images[:, None] - images[None]).mean(axis=(2, 3, 4))
    assert differences[~np.eye(10, dtype=bool)].min() > 1e-3


def test_kl_warmup_rises_step_by_step_and_val_loss_stays_the_true_elbo(tmp_path, mnist_dir):
    # 256 images in batches of 64: 4 steps an epoch, so the 2-epoch warm-up takes 8 steps.
    _, history = main.train(quick_config(tmp_path, mnist_dir, epochs=3, kl_warmup_epochs=2, limit=256, plots=False))
    logged = history.history
    np.testing.assert_allclose(logged["kl_weight"], [0.5, 1.0, 1.0])  # after steps 4, 8 and 12
    np.testing.assert_allclose(logged["val_loss"], np.add(logged["val_reconstruction_loss"], logged["val_kl_loss"]),
                               rtol=1e-4)
    # Epoch 0 trained with weights 0, 1/8, 2/8 and 3/8; epoch 2 with the full KL term.
    assert logged["reconstruction_loss"][0] < logged["loss"][0] < logged["reconstruction_loss"][0] + 0.5 * logged["kl_loss"][0]
    np.testing.assert_allclose(logged["loss"][2], logged["reconstruction_loss"][2] + logged["kl_loss"][2], rtol=1e-4)
    (train_folder,) = glob.glob(str(tmp_path / "logs" / "*" / "train"))
    scalars = read_events(train_folder, "tensors")
    weights = [float(tf.make_ndarray(event.tensor_proto)) for event in scalars.Tensors("epoch_kl_weight")]
    np.testing.assert_allclose(weights, [0.5, 1.0, 1.0])


def test_beta_weights_the_kl_term_in_training_only(tmp_path, mnist_dir):
    _, history = main.train(quick_config(tmp_path, mnist_dir, beta=4.0, limit=256, plots=False))
    logged = {name: values[0] for name, values in history.history.items()}
    np.testing.assert_allclose(logged["loss"], logged["reconstruction_loss"] + 4 * logged["kl_loss"], rtol=1e-4)
    np.testing.assert_allclose(logged["val_loss"], logged["val_reconstruction_loss"] + logged["val_kl_loss"], rtol=1e-4)
    assert logged["kl_weight"] == 4.0


def test_tensorboard_gets_pictures_every_n_epochs(tmp_path, mnist_dir):
    main.train(quick_config(tmp_path, mnist_dir, epochs=2, image_every=2, limit=256, plots=False))
    (images_folder,) = glob.glob(str(tmp_path / "logs" / "*" / "images"))
    events = read_events(images_folder, "tensors")
    tags = events.Tags()["tensors"]
    assert {"reconstructions (original | reconstruction)", "samples from the prior", "latent space"} <= set(tags)
    for tag in tags:
        logged = events.Tensors(tag)
        assert [event.step for event in logged] == [1]  # the second epoch only
        width, height, *pictures = tf.make_ndarray(logged[0].tensor_proto)
        assert all(picture.startswith(b"\x89PNG") for picture in pictures) and int(width) > 0


@pytest.mark.parametrize("flag", ["--kl-warmup-epochs", "--image-every"])
def test_negative_counts_are_refused(flag):
    with pytest.raises(SystemExit):
        main.parse_args([flag, "-1"])
