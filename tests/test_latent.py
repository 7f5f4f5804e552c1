"""Beyond two dimensions: the data's floor, active units, traversals, the HParams table and
the MLP anchor."""

import json
import math

import keras
import numpy as np
import pytest

import data
import evaluation
import main
import vae as vae_module
from benchmarks import latent_sizes
from conftest import hparams_tab, quick_arguments, quick_config, small_vae


def test_entropy_floor_of_a_hand_made_array():
    images = np.zeros((2, 2, 2, 1), np.float32)
    images[0] = [
        [[0.5], [0.5]],
        [[0.0], [1.0]],
    ]  # two coin flips; black and white pixels cost nothing
    images[1] = [[[0.25], [0.0]], [[0.0], [0.0]]]
    quarter = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    expected = np.mean([2 * math.log(2), quarter])
    assert evaluation.data_entropy_floor(images) == pytest.approx(expected, rel=1e-9)
    # Zero padding (as to 32x32) adds nothing.
    assert evaluation.data_entropy_floor(
        np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    ) == pytest.approx(expected)


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_entropy_floor_of_the_real_test_sets(dataset, request):
    """Worked out another way: the Bernoulli entropy of each of the 256 grey levels, times
    how many test pixels have that level (padding pixels are 0 and add nothing)."""
    _, (test_images, _) = data.load_dataset(dataset, request.getfixturevalue(f"{dataset}_dir"))
    levels = np.arange(256) / 255
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nan_to_num(levels * np.log(levels) + (1 - levels) * np.log(1 - levels))
    counts = np.bincount(test_images.ravel(), minlength=256)
    expected = counts @ entropy / len(test_images)
    floor = evaluation.data_entropy_floor(data.prepare_images(test_images, 32))
    assert floor == pytest.approx(expected, rel=1e-6)  # the images are float32
    assert round(floor, 2) == {"mnist": 45.53, "fashion_mnist": 189.86}[dataset]  # the docs' figure


def test_active_units_count_only_dimensions_that_carry_information():
    # Dimension 0 moves with the image, 1 is the prior itself (collapsed), 2 carries a little.
    z_mean = np.array([[2.0, 0.0, 0.2], [-2.0, 0.0, -0.2]])
    z_log_var = np.array([[-4.0, 0.0, 0.0], [-4.0, 0.0, 0.0]])
    per_dimension = evaluation.kl_per_dimension(z_mean, z_log_var)
    np.testing.assert_allclose(
        per_dimension.sum(axis=1), vae_module.kl_divergence(z_mean, z_log_var), rtol=1e-6
    )
    mean_kl = per_dimension.mean(axis=0)
    np.testing.assert_allclose(mean_kl, [-0.5 * (1 - 4 - 4 - math.exp(-4)), 0.0, 0.02], rtol=1e-6)
    assert evaluation.active_units(mean_kl) == 2
    assert evaluation.active_units(mean_kl, threshold=0.05) == 1


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, mnist_dir):
    """`python main.py --latent-dim 4` (tiny) after a latent-2 run in the same output folder."""
    output_dir = tmp_path_factory.mktemp("latent")
    main.train(
        quick_config(output_dir, mnist_dir, run_name="first", limit=256, plots=False, image_every=0)
    )
    second = dict(latent_dim=4, run_name="second", limit=256, image_every=0)
    main.main(quick_arguments(output_dir, mnist_dir, **second))
    return output_dir


@pytest.mark.slow
def test_a_larger_latent_run_draws_traversals_and_records_active_units_and_the_floor(
    two_runs, mnist_dir
):
    test = json.loads((two_runs / "models" / "metrics.json").read_text())["test"]
    # Each dimension's mean KL, worked out with numpy from the saved encoder's posteriors.
    _, (test_images, _) = data.load_dataset("mnist", mnist_dir, limit=256)
    encoder = keras.saving.load_model(two_runs / "models" / "encoder.keras")
    padded = np.pad(test_images, ((0, 0), (2, 2), (2, 2)))[..., None] / 255.0
    z_mean, z_log_var = (
        np.asarray(part, np.float64) for part in encoder.predict(padded, verbose=0)
    )
    kl = (0.5 * (z_mean**2 + np.exp(z_log_var) - 1 - z_log_var)).mean(axis=0)
    np.testing.assert_allclose(test["kl_per_dimension"], kl, rtol=1e-3, atol=1e-4)
    assert test["active_units"] == np.sum(kl > 0.01)
    # The floor of the run's 42 test images, 32x32, equals that of the unpadded 28x28 originals.
    expected = evaluation.data_entropy_floor(test_images.astype(np.float64) / 255)
    assert (
        test["data_entropy_floor"] == pytest.approx(expected)
        and 0 < expected < test["negative_elbo"]
    )
    traversals = two_runs / "plots" / "traversals.png"
    assert traversals.read_bytes().startswith(b"\x89PNG")


def test_hparams_tab_lists_every_run_with_its_settings_and_test_figures(two_runs):
    experiment, rows = hparams_tab(str(two_runs / "logs"))
    columns = {info.name for info in experiment.hparam_infos}
    assert {
        "latent_dim",
        "dataset",
        "epochs",
        "batch_size",
        "learning_rate",
        "beta",
        "limit",
    } <= columns
    metrics = {(info.name.group, info.name.tag) for info in experiment.metric_infos}
    for name in (
        "negative_elbo",
        "iw_nll",
        "bits_per_dim",
        "iw_bits_per_dim",
        "kl_loss",
        "active_units",
        "data_entropy_floor",
    ):
        assert ("evaluation", f"test/{name}") in metrics
    assert ("evaluation", "training/seconds") in metrics

    assert sorted(row.name for row in rows) == ["first", "second"]
    second = next(row for row in rows if row.name == "second")
    assert (
        second.hparams["latent_dim"].number_value == 4
        and second.hparams["limit"].number_value == 256
    )
    figures = {(value.name.group, value.name.tag): value.value for value in second.metric_values}
    recorded = json.loads((two_runs / "models" / "metrics.json").read_text())
    assert figures[("evaluation", "test/negative_elbo")] == pytest.approx(
        recorded["test"]["negative_elbo"], rel=1e-5
    )
    assert figures[("evaluation", "test/active_units")] == recorded["test"]["active_units"]
    assert figures[("evaluation", "training/seconds")] == pytest.approx(
        recorded["training"]["training_seconds"]
    )


def test_mlp_baseline_has_the_pytorch_example_shapes_and_learns():
    keras.utils.set_random_seed(0)
    model = latent_sizes.build_mlp_vae(seed=0)
    # fc1 784x400, fc21 and fc22 400x20, fc3 20x400, fc4 400x784, with biases: as in PyTorch.
    expected = (784 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 784 + 784)
    assert model.encoder.count_params() + model.decoder.count_params() == expected == 652_824
    images = np.random.default_rng(0).random((32, 28, 28, 1)).round().astype(np.float32)
    z_mean, z_log_var = model.encoder(images)
    assert z_mean.shape == z_log_var.shape == (32, 20)
    assert model.decoder(z_mean).shape == (32, 28, 28, 1)
    model.compile(optimizer=keras.optimizers.Adam(latent_sizes.MLP["learning_rate"]))
    losses = [model.train_on_batch(images, return_dict=True)["loss"] for _ in range(4)]
    assert 784 * 0.5 < losses[0] < 784 * 1.0  # about log 2 nats per random pixel at the start
    assert losses[-1] < losses[0]


def test_traversals_draw_the_sixteen_most_informative_dimensions_at_most(tmp_path):
    """A colour model's hundreds of dimensions would make a picture too tall to read."""
    import matplotlib.image

    import plotting

    decoder = small_vae(latent_dim=40).decoder
    rng = np.random.default_rng(0)
    z_mean = rng.normal(0, 2, (50, 40))  # every dimension far from the prior: all active
    z_log_var = np.full((50, 40), -2.0)
    heights = {}
    for name, rows in (("default", {}), ("sixteen", {"max_rows": 16}), ("all", {"max_rows": 40})):
        plotting.plot_traversals(decoder, z_mean, z_log_var, None, tmp_path / f"{name}.png", **rows)
        heights[name] = matplotlib.image.imread(tmp_path / f"{name}.png").shape[0]
    assert heights["default"] == heights["sixteen"] < heights["all"]
