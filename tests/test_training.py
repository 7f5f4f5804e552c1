"""End to end on a small real MNIST subset: outputs, reloading, resuming, repeating."""

import glob
import os

import keras
import numpy as np
import pytest

import main
from conftest import REPO, quick_config, run_python


def test_a_run_writes_every_output(trained_run):
    output_dir, _, history = trained_run
    for name in (
        "checkpoint.keras",
        "models/vae.keras",
        "models/encoder.keras",
        "models/decoder.keras",
        "plots/latent_space.png",
        "plots/manifold.png",
        "plots/reconstructions.png",
        "plots/samples.png",
        "plots/interpolation.png",
    ):
        assert (output_dir / name).stat().st_size > 0, name
    assert glob.glob(str(output_dir / "logs" / "*" / "train" / "events.out.tfevents.*"))
    assert glob.glob(str(output_dir / "logs" / "*" / "validation" / "events.out.tfevents.*"))
    for name in (
        "loss",
        "reconstruction_loss",
        "kl_loss",
        "val_loss",
        "val_reconstruction_loss",
        "val_kl_loss",
    ):
        assert np.all(np.isfinite(history.history[name])), name
    assert not (output_dir / "backup").exists()  # a finished run leaves no backup behind
    assert not glob.glob(str(output_dir / "**" / "*.partial*"), recursive=True)


def test_encoder_and_decoder_reload_with_plain_keras(trained_run, tmp_path):
    output_dir, vae, _ = trained_run
    images = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    z_mean, _ = vae.encoder.predict(images, verbose=0)
    decoded = vae.decoder.predict(z_mean, verbose=0)
    # A clean interpreter in an empty folder: only keras, no project module on the path.
    reloaded = run_python(
        f"""
import json, keras, numpy as np
encoder = keras.saving.load_model({str(output_dir / "models" / "encoder.keras")!r})
decoder = keras.saving.load_model({str(output_dir / "models" / "decoder.keras")!r})
z_mean, z_log_var = encoder.predict(np.load('images.npy'), verbose=0)
decoded = decoder.predict(z_mean, verbose=0)
print(json.dumps({{"z_mean": z_mean.tolist(), "decoded": decoded.tolist()}}))
""",
        cwd=tmp_path,
    )
    np.testing.assert_allclose(reloaded["z_mean"], z_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reloaded["decoded"], decoded, rtol=1e-5, atol=1e-6)


def test_vae_and_checkpoint_reload_after_import_vae(trained_run, tmp_path):
    """The whole VAE needs its classes: `import vae` registers them (nothing runs on import)."""
    output_dir, model, _ = trained_run
    images = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    z_mean, _ = model.encoder.predict(images, verbose=0)
    reloaded = run_python(
        f"""
import json, sys, keras, numpy as np
sys.path.insert(0, {str(REPO)!r})
import vae
images = np.load('images.npy')
result = {{}}
for name in ('models/vae.keras', 'checkpoint.keras'):
    model = keras.saving.load_model({str(output_dir)!r} + '/' + name)
    assert isinstance(model, vae.VAE), type(model)
    assert "main" not in sys.modules  # the model module alone is enough
    result[name] = model.encoder.predict(images, verbose=0)[0].tolist()
print(json.dumps(result))
""",
        cwd=tmp_path,
    )
    # One epoch: the best checkpoint is the final model.
    for name in ("models/vae.keras", "checkpoint.keras"):
        np.testing.assert_allclose(reloaded[name], z_mean, rtol=1e-5, atol=1e-6)


class StopAfterFirstEpoch(keras.callbacks.Callback):
    """Simulates Ctrl-C once the first epoch is finished and backed up."""

    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


def test_interrupted_run_resumes_at_the_next_epoch(tmp_path, mnist_dir, monkeypatch):
    config = quick_config(tmp_path, mnist_dir, epochs=2, limit=256, plots=False, kl_warmup_epochs=2)
    make_callbacks = main.make_callbacks
    monkeypatch.setattr(
        main, "make_callbacks", lambda *args: make_callbacks(*args) + [StopAfterFirstEpoch()]
    )
    with pytest.raises(KeyboardInterrupt):
        main.train(config)
    assert (tmp_path / "backup" / "latest.weights.h5").exists()
    monkeypatch.setattr(main, "make_callbacks", make_callbacks)

    _, history = main.train(config)
    assert history.epoch == [1]  # only the second epoch ran
    assert history.history["kl_weight"] == [1.0]  # its KL warm-up went on from 0.5, not from 0
    assert len(os.listdir(tmp_path / "logs")) == 1  # and it logged into the same run


def test_backup_from_other_settings_is_refused(tmp_path, mnist_dir, monkeypatch):
    config = quick_config(tmp_path, mnist_dir, epochs=2, limit=256, plots=False)
    make_callbacks = main.make_callbacks
    monkeypatch.setattr(
        main, "make_callbacks", lambda *args: make_callbacks(*args) + [StopAfterFirstEpoch()]
    )
    with pytest.raises(KeyboardInterrupt):
        main.train(config)
    monkeypatch.setattr(main, "make_callbacks", make_callbacks)

    other = quick_config(tmp_path, mnist_dir, epochs=2, limit=256, plots=False, latent_dim=3)
    with pytest.raises(main.RunError, match=r"latent_dim 2 -> 3.*--fresh"):
        main.train(other)
    _, history = main.train(
        quick_config(
            tmp_path, mnist_dir, epochs=2, limit=256, plots=False, latent_dim=3, fresh=True
        )
    )
    assert history.epoch == [0, 1]


def test_same_seed_repeats_and_other_seed_differs(tmp_path, mnist_dir):
    def losses(name, seed):
        config = quick_config(
            tmp_path / name, mnist_dir, limit=256, epochs=2, plots=False, seed=seed
        )
        return main.train(config)[1].history

    first, second, other = losses("a", 7), losses("b", 7), losses("c", 8)
    assert first == second
    assert first["loss"] != other["loss"]


def test_diverging_run_stops_without_saving(tmp_path, mnist_dir):
    with pytest.raises(main.TrainingDiverged, match="--learning-rate"):
        main.train(quick_config(tmp_path, mnist_dir, learning_rate=1e4))
    assert not (tmp_path / "models" / "vae.keras").exists()
    assert not (tmp_path / "plots" / "manifold.png").exists()
