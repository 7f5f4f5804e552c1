"""A colour run is a VAE: its latent carries the picture, and every run says how much."""

import json

import keras
import numpy as np
import pytest

import evaluation
import explorer
import results
from conftest import SHARED_DATA


def test_a_run_whose_latent_carries_nothing_says_so_with_what_to_try():
    carried = {
        "rate_bits_per_dim": 0.071,
        "rate_share": 0.011,
        "active_units": 128,
        "kl_per_dimension": [0.5] * 128,
        "decoder_psnr": 17.7,
        "mean_image_psnr": 11.0,
    }
    lines = results.latent_report(carried)
    assert lines == [
        "The latent carries 0.071 bits/dim, 1.1% of the total; 128 of 128 latent dimensions "
        "active; the decoder's image at z_mean: PSNR 17.70 dB (the mean image: 11.00 dB)"
    ]
    collapsed = {**carried, "rate_bits_per_dim": 0.0, "rate_share": 0.00001, "active_units": 0}
    lines = results.latent_report(collapsed)
    assert len(lines) == 2 and lines[1].startswith("The latent carries almost nothing")
    assert "--" in lines[1]  # a flag to try


def test_psnr_of_a_hand_worked_case():
    # Every value off by 0.1: mean squared error 0.01, 10 log10(1 / 0.01) = 20 dB.
    images = np.full((2, 4, 4, 3), 0.5)
    assert evaluation.psnr(images + 0.1, images) == pytest.approx(20.0)
    # Half the values off by 0.2, half exact: 0.02 -> 16.99 dB.
    noisy = images.copy()
    noisy[0] += 0.2
    assert evaluation.psnr(noisy, images) == pytest.approx(10 * np.log10(1 / 0.02))


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    """A short run with every colour default on real emoji."""
    import main
    import settings

    folder = SHARED_DATA / "emoji_google"
    if not folder.is_dir():
        pytest.skip(f"the real colour folder is not in {folder}")
    output_dir = tmp_path_factory.mktemp("colour-run")
    config = settings.Config(
        dataset="folder",
        data_dir=str(folder),
        limit=1200,
        epochs=4,
        batch_size=32,
        iw_samples=2,
        plots=False,
        dtype_policy="float32",
        output_dir=str(output_dir),
    )
    vae, _ = main.train(config)
    return output_dir, vae


@pytest.mark.slow
def test_a_default_colour_run_carries_the_picture_in_its_latent(colour_run, capsys):
    output_dir, vae = colour_run
    record = json.loads((output_dir / "models" / "metrics.json").read_text())
    test = record["test"]
    assert record["config"]["spatial_latent"] and record["config"]["likelihood"] == "autoregressive"
    # z is used, and the decoder's image at z_mean is nearer the images than their mean is.
    assert test["active_units"] > 0 and test["rate_bits_per_dim"] > 0.001
    assert test["rate_share"] == pytest.approx(test["kl_loss"] / test["negative_elbo"])
    assert test["decoder_psnr"] > test["mean_image_psnr"] + 1.0


@pytest.mark.slow
def test_the_explorer_of_a_default_colour_run_changes_across_z(colour_run):
    """The decoder's images at two distant points of the explorer's square differ by more
    than the error the page states for its pictures."""
    import data
    import settings

    output_dir, _ = colour_run
    decoder = keras.saving.load_model(output_dir / "models" / "decoder.keras")
    encoder = keras.saving.load_model(output_dir / "models" / "encoder.keras")
    record = json.loads((output_dir / "models" / "metrics.json").read_text())
    config = settings.Config(**{**record["config"], "output_dir": str(output_dir)})
    images = data.load_for(config, test_only=True)
    page = explorer.explorer_data(encoder, decoder, images.test_images, None, None)
    (centre_u, centre_v), half = page["centre"], page["half"]
    corners = np.array([[centre_u - half, centre_v - half], [centre_u + half, centre_v + half]])
    first, second = explorer.decode_plane(decoder, page["origin"], page["axes"], corners, None)
    assert np.abs(first - second).max() > page["error"]["max"]
    assert np.abs(first - second).mean() > 0.02


@pytest.mark.slow
def test_a_default_colour_run_learns_a_prior_that_codes_its_latent_for_less(colour_run):
    """The run saves prior.keras, which loads with plain Keras; the KL it reports (from the
    learned prior) is below what N(0, I) would charge for the same codes, worked out here."""
    import data
    import settings

    output_dir, _ = colour_run
    record = json.loads((output_dir / "models" / "metrics.json").read_text())
    config = settings.Config(**{**record["config"], "output_dir": str(output_dir)})
    images = data.load_for(config, test_only=True).test_images
    encoder = keras.saving.load_model(output_dir / "models" / "encoder.keras")
    z_mean, z_log_var = (np.asarray(t, np.float64) for t in encoder.predict(images, verbose=0))
    standard_kl = np.mean(np.sum(0.5 * (z_mean**2 + np.exp(z_log_var) - 1 - z_log_var), axis=1))
    assert record["test"]["kl_loss"] < standard_kl
    prior = keras.saving.load_model(output_dir / "models" / "prior.keras")
    assert prior.input.shape == prior.output.shape == (None, z_mean.shape[1])
