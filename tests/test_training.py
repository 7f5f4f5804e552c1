"""End to end on a small real MNIST subset: outputs, reloading, resuming, repeating."""

import dataclasses
import glob
import json
import os
import re

import keras
import numpy as np
import pytest

import callbacks
import data
import main
import plotting
import settings
from conftest import (
    REPO,
    RUN_OUTPUTS,
    quick_arguments,
    quick_config,
    run_main,
    run_python,
    write_idx_files,
)


def test_a_run_writes_every_output(trained_run):
    output_dir, _, history = trained_run
    for name in RUN_OUTPUTS:
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
    assert not (output_dir / "backup.finished").exists()
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


def interrupt_after_the_first_epoch(config, monkeypatch):
    """main.train(config), stopped by Ctrl-C once its first epoch is backed up."""
    make_callbacks = callbacks.make_callbacks
    with monkeypatch.context() as patched:
        patched.setattr(
            callbacks,
            "make_callbacks",
            lambda *args: make_callbacks(*args) + [StopAfterFirstEpoch()],
        )
        with pytest.raises(KeyboardInterrupt):
            main.train(config)


@pytest.mark.slow
def test_interrupted_run_resumes_at_the_next_epoch(tmp_path, mnist_dir, monkeypatch):
    config = quick_config(tmp_path, mnist_dir, epochs=2, limit=256, plots=False, kl_warmup_epochs=2)
    interrupt_after_the_first_epoch(config, monkeypatch)
    assert (tmp_path / "backup" / "latest.weights.h5").exists()

    _, history = main.train(config)
    assert history.epoch == [1]  # only the second epoch ran
    assert history.history["kl_weight"] == [1.0]  # its KL warm-up went on from 0.5, not from 0
    assert len(os.listdir(tmp_path / "logs")) == 1  # and it logged into the same run


@pytest.mark.slow
def test_backup_from_other_settings_is_refused(tmp_path, mnist_dir, monkeypatch):
    config = quick_config(tmp_path, mnist_dir, epochs=2, limit=256, plots=False)
    interrupt_after_the_first_epoch(config, monkeypatch)

    other = quick_config(tmp_path, mnist_dir, epochs=2, limit=256, plots=False, latent_dim=3)
    with pytest.raises(main.RunError, match=r"latent_dim 2 -> 3.*--fresh"):
        main.train(other)
    _, history = main.train(
        quick_config(
            tmp_path, mnist_dir, epochs=2, limit=256, plots=False, latent_dim=3, fresh=True
        )
    )
    assert history.epoch == [0, 1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "changed, expected",
    [({"learning_rate": 2e-3}, "learning_rate 0.004 -> 0.002"), ({"seed": 8}, "seed 1337 -> 8")],
)
def test_resume_with_another_trajectory_is_refused(
    tmp_path, mnist_dir, monkeypatch, changed, expected
):
    """The step size and the seed change the path training takes: a backup made with others
    must not go on silently under these."""
    config = quick_config(tmp_path, mnist_dir, epochs=2, limit=256, plots=False, learning_rate=4e-3)
    interrupt_after_the_first_epoch(config, monkeypatch)
    with pytest.raises(main.RunError, match=re.escape(expected) + r".*--fresh"):
        main.train(dataclasses.replace(config, **changed))


class SpoilTheWeights(keras.callbacks.Callback):
    """Resumed training that goes badly: before the next epoch the decoder is made to draw
    every pixel white (a large bias on its logits), a loss far above the first epoch's."""

    def on_train_begin(self, logs=None):
        bias = self.model.decoder.get_layer("logits").bias
        bias.assign(np.full(bias.shape, 20.0, "float32"))


@pytest.mark.slow
def test_checkpoint_stays_the_best_epoch_across_a_resume(tmp_path, mnist_dir, monkeypatch):
    config = quick_config(tmp_path, mnist_dir, epochs=2, limit=256, plots=False)
    interrupt_after_the_first_epoch(config, monkeypatch)
    best = (tmp_path / "checkpoint.keras").read_bytes()

    make_callbacks = callbacks.make_callbacks
    monkeypatch.setattr(
        callbacks, "make_callbacks", lambda *args: make_callbacks(*args) + [SpoilTheWeights()]
    )
    _, history = main.train(config)
    assert history.epoch == [1] and history.history["val_loss"][0] > 1000  # much worse
    assert (tmp_path / "checkpoint.keras").read_bytes() == best  # still the first epoch's
    record = json.loads((tmp_path / "models" / "metrics.json").read_text())
    assert record["training"]["epochs_trained"] == 2  # both processes' epochs


@pytest.mark.slow
def test_same_seed_repeats_and_other_seed_differs(tmp_path, mnist_dir):
    def losses(name, seed):
        config = quick_config(
            tmp_path / name, mnist_dir, limit=256, epochs=2, plots=False, seed=seed
        )
        return main.train(config)[1].history

    first, second, other = losses("a", 7), losses("b", 7), losses("c", 8)
    assert first == second
    assert first["loss"] != other["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("limit", [6, 11])
def test_a_single_test_image_finishes_with_every_plot_it_can_draw(tmp_path, mnist_dir, limit):
    result = run_main(quick_arguments(tmp_path, mnist_dir, limit=limit), timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "models" / "metrics.json").read_text())
    assert record["test"]["images"] == 1
    plots = {path.name for path in (tmp_path / "plots").iterdir()}
    assert {"latent_space.png", "reconstructions.png", "samples.png", "manifold.png"} <= plots
    assert "interpolation.png" not in plots and "interpolation.png" in result.stdout
    assert "Only 1 training step in all" in result.stdout


@pytest.mark.slow
def test_a_test_set_of_one_class_finishes(tmp_path, mnist_dir):
    """Interpolation pairs images of different classes where it can: with one class, it
    pairs images of that class instead of searching for another one for ever."""
    (x_train, y_train), (x_test, y_test) = data.load_dataset("mnist", mnist_dir)
    ones = y_test == 1
    folder = tmp_path / "ones"
    folder.mkdir()
    write_idx_files(folder, x_train[:300], y_train[:300], x_test[ones][:60], y_test[ones][:60])
    result = run_main(quick_arguments(tmp_path / "out", str(folder)), timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out" / "plots" / "interpolation.png").stat().st_size > 0


def test_interpolation_pairs_are_of_two_images_of_other_classes_where_there_are():
    labels = np.array([0, 0, 0, 1, 1, 2])
    for first, second in plotting.interpolation_pairs(labels, 6, seed=3):
        assert first != second and labels[first] != labels[second]
    assert len(plotting.interpolation_pairs(labels, 6)) == 6
    assert len(plotting.interpolation_pairs(labels[:3], 6)) == 3  # one pair per image at most
    assert all(a != b for a, b in plotting.interpolation_pairs(np.zeros(4, int), 6))
    assert plotting.interpolation_pairs(np.array([7]), 6) == []


@pytest.mark.parametrize(
    "train_count, batch_size, epochs, expected",
    [
        # 6000 / 256 rounds up to 24 steps an epoch, 72 in all.
        (
            6000,
            256,
            3,
            "Only 72 training steps in all: 6000 images at --batch-size 256 for 3 epochs. So "
            "few steps learn little more than the average image; a smaller --batch-size "
            "(such as 64) or more --epochs give more.",
        ),
        # 94 steps an epoch, 282 in all: the default model learned blurry blobs in some seeds.
        (
            6000,
            64,
            3,
            "Only 282 training steps in all: 6000 images at --batch-size 64 for 3 epochs. So "
            "few steps learn little more than the average image; a smaller --batch-size "
            "(such as 16) or more --epochs give more.",
        ),
        (12000, 64, 3, None),  # the README's quick try: 188 steps an epoch, 564 in all
        (60000, 256, 14, None),  # the default run: 3,290
        (
            10,
            16,
            1,
            "Only 1 training step in all: 10 images at --batch-size 16 for 1 epoch. So few "
            "steps learn little more than the average image; more --epochs give more.",
        ),
    ],
)
def test_a_run_of_too_few_steps_says_how_to_get_more(train_count, batch_size, epochs, expected):
    config = settings.Config(batch_size=batch_size, epochs=epochs)
    assert main.few_steps_advice(config, train_count) == expected


@pytest.mark.parametrize(
    "seconds_per_image, so_far, steps_done, plot_flops, expected",
    [
        # 10 epochs of 1000 images at 1 ms + validation of 300 at a third of that: 1.1 s an
        # epoch; the evaluation costs twice a training image's FLOPs per test image: 0.6 s;
        # (600 - 0.6) / 1.1 = 544.9 epochs fit in the budget.
        (
            1e-3,
            0,
            0,
            0,
            "Estimated time on this machine: 12 s (so far 0 s, training 10 epochs of 1 s, "
            "then the evaluation and plots 1 s); up to --epochs 544 would fit in 10 min here.",
        ),
        # At 0.1 s per image: 110 s an epoch, 60 s of evaluation; 600 s hold 4 epochs.
        (
            0.1,
            0,
            0,
            0,
            "Estimated time on this machine: 19 min 20 s (so far 0 s, training 10 epochs of "
            "1 min 50 s, then the evaluation and plots 1 min); --epochs 4 would fit in 10 min "
            "here.",
        ),
        # At 10 ms: 11 s an epoch; 50 s gone, 23 steps (2.3 s) of the first epoch done; the
        # evaluation (1,800 FLOPs) and the plots (3,000) cost 1,600 training images' worth,
        # 16 s: 50 + 110 - 2.3 + 16 = 173.7 s; (600 - 50 - 16) // 11 = 48 epochs fit.
        (
            0.01,
            50,
            23,
            3000,
            "Estimated time on this machine: 2 min 54 s (so far 50 s, training 10 epochs of "
            "11 s, then the evaluation and plots 16 s); up to --epochs 48 would fit in 10 min "
            "here.",
        ),
    ],
)
def test_time_estimate_prices_what_is_left_after_what_has_gone(
    seconds_per_image, so_far, steps_done, plot_flops, expected
):
    estimate = callbacks.TimeEstimate(
        epochs=10,
        steps_per_epoch=100,
        batch_size=10,
        test_images=300,
        evaluation_flops=6,
        training_flops=3,
        plot_flops=plot_flops,
        budget_seconds=600,
    )
    estimate.first_epoch = 0
    assert estimate.describe(seconds_per_image, so_far, steps_done) == expected
