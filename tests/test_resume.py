"""Resuming an interrupted run (issue 47): it starts again from exactly the weights and the
optimizer's state its backup holds, and finishes with the figures of a run that was never
interrupted, within the tolerances below."""

import json
import shutil

import keras
import numpy as np
import pytest
from test_training import interrupt_after_the_first_epoch

import callbacks
import data
import main
import plotting
import training
from conftest import LEARNED, quick_config

SETTINGS = {**LEARNED, "epochs": 2}  # the learned run's, two epochs: 125 steps each
# An uninterrupted run and a resumed one differ in the order of the second epoch's batches
# (a new process starts the shuffling again) and in the Sampling layer's noise, which in a
# run this short moves the test negative ELBO by a few nats (4.6 when measured; one epoch
# less scores 16 nats worse) and the decoded pictures by 0.01 to 0.015 on average (the mean
# absolute difference on the 0-1 scale; a third epoch moves them by 0.025). Within these:
ELBO_NATS = 8.0
PICTURE_MEAN = 0.03


class RecordTheStart(keras.callbacks.Callback):
    """The model's weights and the optimizer's variables as training starts (after the
    backup's callback has restored them: it comes earlier in the list)."""

    def on_train_begin(self, logs=None):
        self.weights = [keras.ops.convert_to_numpy(v) for v in self.model.weights]
        self.optimizer = [keras.ops.convert_to_numpy(v) for v in self.model.optimizer.variables]


def state_in(path, config, train_count):
    """The weights and optimizer variables that the backup file at `path` holds, read by
    Keras into a model and optimizer built afresh."""
    model = training.make_model(config, train_count)
    model.optimizer.build(model.trainable_variables)
    model.load_weights(path)
    weights = [keras.ops.convert_to_numpy(v) for v in model.weights]
    return weights, [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]


def pictures(output_dir, images):
    """What the saved decoder draws: 100 prior samples and the test images' reconstructions."""
    encoder = keras.saving.load_model(output_dir / "models" / "encoder.keras")
    decoder = keras.saving.load_model(output_dir / "models" / "decoder.keras")
    samples = plotting.prior_samples(decoder, 100, seed=0)
    return samples, decoder.predict(encoder.predict(images, verbose=0)[0], verbose=0)


@pytest.mark.slow
def test_a_resumed_run_goes_on_from_its_backup_and_ends_as_an_uninterrupted_one(
    tmp_path, mnist_dir, monkeypatch
):
    resumed_dir, whole_dir = tmp_path / "resumed", tmp_path / "whole"
    config = quick_config(resumed_dir, mnist_dir, **SETTINGS)
    interrupt_after_the_first_epoch(config, monkeypatch)
    backup = tmp_path / "backup.weights.h5"
    shutil.copy(resumed_dir / "backup" / "latest.weights.h5", backup)

    start = RecordTheStart()
    make_callbacks = callbacks.make_callbacks
    with monkeypatch.context() as patched:
        patched.setattr(callbacks, "make_callbacks", lambda *args: make_callbacks(*args) + [start])
        vae, history = main.train(config)
    assert history.epoch == [1]
    train_count = SETTINGS["limit"]
    weights, optimizer = state_in(backup, config, train_count)
    assert len(start.weights) == len(weights) and len(start.optimizer) == len(optimizer)
    for found, expected in zip(start.weights + start.optimizer, weights + optimizer, strict=True):
        np.testing.assert_array_equal(found, expected)
    steps = -(-train_count // SETTINGS["batch_size"])
    assert int(start.optimizer[0]) == steps  # Adam's step count: one epoch's steps
    # The test has teeth: the backup's weights are not those a new run starts from.
    keras.utils.set_random_seed(config.seed)
    fresh = training.build_model(config).weights
    assert not np.allclose(keras.ops.convert_to_numpy(fresh[1]), weights[1])

    main.train(quick_config(whole_dir, mnist_dir, **SETTINGS))
    resumed, whole = (
        json.loads((folder / "models" / "metrics.json").read_text())["test"]
        for folder in (resumed_dir, whole_dir)
    )
    assert abs(resumed["negative_elbo"] - whole["negative_elbo"]) < ELBO_NATS
    assert abs(resumed["iw_nll"] - whole["iw_nll"]) < ELBO_NATS
    test_images = data.load_images(
        "mnist", mnist_dir, SETTINGS["limit"], image_size=32, test_only=True, verbose=False
    ).test_images
    for found, expected in zip(
        pictures(resumed_dir, test_images), pictures(whole_dir, test_images), strict=True
    ):
        assert np.abs(found - expected).mean() < PICTURE_MEAN
