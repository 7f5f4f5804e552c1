"""Test-set evaluation: the negative ELBO and the importance-weighted NLL."""

import glob
import json

import keras
import numpy as np
import pytest

import evaluation
import main
import results
import settings
from conftest import hparams_tab, quick_config, small_vae


def bar_images(count, seed):
    """32x32 images of one bright horizontal bar at a random row: z must say where."""
    rows = np.random.default_rng(seed).integers(2, 30, count)
    images = np.zeros((count, 32, 32, 1), np.float32)
    images[np.arange(count), rows, 4:28] = 1.0
    return images


@pytest.mark.slow
def test_importance_weighted_nll_tightens_with_more_samples():
    keras.utils.set_random_seed(1)  # a fixed start: a tiny model can also collapse to a constant
    model = small_vae(filters=8, hidden_units=32, seed=1)
    model.compile(optimizer="adam")
    model.fit(bar_images(512, seed=0), batch_size=32, epochs=5, verbose=0)
    images = bar_images(64, seed=1)
    results = {
        k: evaluation.evaluate(model, images, samples=k, verbose=False) for k in (1, 4, 16, 64)
    }
    elbo = results[64]["negative_elbo"]
    # One sample: the IW estimate is a (noisier) estimate of the negative ELBO itself.
    np.testing.assert_allclose(results[1]["iw_nll"], elbo, rtol=0.05)
    iw = [results[k]["iw_nll"] for k in (4, 16, 64)]
    assert iw[0] < elbo and iw[0] > iw[1] > iw[2], (elbo, iw)
    assert results[64]["iw_samples"] == 64 and results[64]["images"] == 64


def test_run_records_test_metrics(trained_run):
    output_dir, _, history = trained_run
    record = json.loads((output_dir / "models" / "metrics.json").read_text())
    test = record["test"]
    # What the figures are worth (the negative ELBO and its parts, the IW NLL and bits per
    # dimension, against numpy) is checked on a run that learns: tests/test_learning.py.
    assert set(test) >= {"negative_elbo", "reconstruction_loss", "kl_loss", "iw_nll"}
    assert test["images"] == 512 // 6 and test["iw_samples"] == 4
    assert record["config"]["seed"] == settings.Config().seed and "keras" in record["versions"]
    assert record["training"]["epochs_trained"] == 1 and record["training"]["training_seconds"] > 0
    assert glob.glob(str(output_dir / "logs" / "*" / "evaluation" / "events.out.tfevents.*"))


@pytest.mark.slow
def test_evaluate_only_keeps_the_trained_settings_in_the_record(tmp_path, mnist_dir, capsys):
    """The record says how the model was trained; --iw-samples, --seed, --limit and
    --data-dir of an --evaluate-only run are recorded as that evaluation's own."""
    trained = dict(latent_dim=3, batch_size=32, run_name="z3", plots=False)
    main.train(quick_config(tmp_path, mnist_dir, **trained))
    assert "Estimated time on this machine" in capsys.readouterr().out
    evaluate = ["--evaluate-only", "--output-dir", str(tmp_path), "--data-dir", mnist_dir]
    main.main([*evaluate, "--limit", "600", "--iw-samples", "2", "--seed", "5", "--no-plots"])

    record = json.loads((tmp_path / "models" / "metrics.json").read_text())
    assert (record["config"]["latent_dim"], record["config"]["batch_size"]) == (3, 32)
    assert record["config"]["limit"] == 512 and record["config"]["iw_samples"] == 4
    assert record["evaluation"] == {"iw_samples": 2, "seed": 5, "limit": 600, "data_dir": mnist_dir}
    assert record["test"]["images"] == 100 and record["training"]["epochs_trained"] == 1
    _, rows = hparams_tab(str(tmp_path / "logs"))
    assert [(row.name, row.hparams["latent_dim"].number_value) for row in rows] == [("z3", 3)]

    # Without the record, what the model says of itself.
    (tmp_path / "models" / "metrics.json").unlink()
    main.main([*evaluate, "--limit", "60", "--iw-samples", "2", "--no-plots"])
    record = json.loads((tmp_path / "models" / "metrics.json").read_text())
    assert record["config"] == {
        "dataset": "mnist",
        "image_size": 32,
        "colour": "grey",
        "latent_dim": 3,
        "likelihood": "bernoulli",
        "conditional": False,
    }
    with pytest.raises(SystemExit) as exit_info:  # a plain model has no class to draw
        main.main([*evaluate, "--plot-class", "2"])
    assert "is not a conditional VAE of latent size 2" in str(exit_info.value.code)


def test_evaluate_only_refuses_other_data(trained_run, mnist_dir):
    output_dir, _, _ = trained_run
    config = settings.Config(
        output_dir=str(output_dir),
        data_dir=mnist_dir,
        dataset="fashion_mnist",
        evaluate_only=True,
        plots=False,
    )
    with pytest.raises(
        main.RunError, match="was trained with --dataset mnist; add --dataset mnist"
    ):
        results.evaluate_saved_model(config)
