"""Evidence that the program trains a VAE and reports its figures truly (issue 47): a short
real run learns more than the mean image, its reconstructions are of their own originals,
and its recorded negative ELBO, KL, importance-weighted NLL and bits per dimension are
worked out again here with numpy from the saved encoder and decoder."""

import json
import math

import keras
import numpy as np
import pytest
from scipy.special import logsumexp

import evaluation
import vae as vae_module

SAMPLES = 32  # z per test image in the numpy figures: eight groups of the run's K = 4
K = 4  # conftest.QUICK's iw_samples, which the learned run evaluates with
LOG_2PI = math.log(2 * math.pi)


def saved_models(output_dir):
    """The run's encoder and decoder as a user loads them, and the decoder up to its
    logits (the Bernoulli's parameters, before the sigmoid)."""
    encoder = keras.saving.load_model(output_dir / "models" / "encoder.keras")
    decoder = keras.saving.load_model(output_dir / "models" / "decoder.keras")
    return encoder, decoder, keras.Model(decoder.input, decoder.get_layer("logits").output)


def numpy_figures(output_dir, images, samples=SAMPLES, seed=47):
    """Per image: the analytic Gaussian KL per latent dimension, and for `samples` draws of
    z from q(z|x) the Bernoulli cross-entropy summed over pixels and the log importance
    weight log p(x|z) + log p(z) - log q(z|x). Numpy throughout, the models aside."""
    encoder, _, logits_model = saved_models(output_dir)
    z_mean, z_log_var = (
        np.asarray(part, np.float64) for part in encoder.predict(images, verbose=0)
    )
    kl = 0.5 * (z_mean**2 + np.exp(z_log_var) - 1.0 - z_log_var)
    epsilon = np.random.default_rng(seed).standard_normal((len(images), samples, z_mean.shape[1]))
    z = z_mean[:, None] + np.exp(0.5 * z_log_var[:, None]) * epsilon
    logits = logits_model.predict(z.reshape(-1, z.shape[-1]).astype(np.float32), verbose=0)
    logits = logits.astype(np.float64).reshape(len(images), samples, -1)
    x = images.reshape(len(images), 1, -1).astype(np.float64)
    # -[x log sigmoid(l) + (1 - x) log(1 - sigmoid(l))], written stably.
    nats = (np.logaddexp(0.0, logits) - x * logits).sum(axis=-1)
    log_prior = -0.5 * (z**2 + LOG_2PI).sum(axis=-1)
    log_posterior = -0.5 * (epsilon**2 + LOG_2PI + z_log_var[:, None]).sum(axis=-1)
    return {"kl": kl, "nats": nats, "log_weights": -nats + log_prior - log_posterior}


@pytest.fixture(scope="module")
def learned(learned_run):
    """The learned run's record, history and test images, with the numpy figures."""
    output_dir, _, history, images = learned_run
    record = json.loads((output_dir / "models" / "metrics.json").read_text())
    figures = numpy_figures(output_dir, images.test_images)
    return record["test"], history.history, images, figures


def mean_image_nats(train_images, test_images):
    """-log p(x) per test image under the model that knows only the mean training image:
    each pixel a Bernoulli of its mean grey level (kept off 0 and 1, where padding is)."""
    p = np.clip(train_images.astype(np.float64).mean(axis=0), 1e-4, 1 - 1e-4).reshape(1, -1)
    x = test_images.astype(np.float64).reshape(len(test_images), -1)
    return -(x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=1)


def test_a_short_run_learns_more_than_the_mean_image(learned):
    """A run whose weights never changed would score hundreds of nats above the mean image;
    one that learned only the mean image, about the same."""
    test, _, images, _ = learned
    baseline = mean_image_nats(images.train_images, images.test_images).mean()
    assert 180 < baseline < 220  # MNIST's mean image, padded to 32x32: about 199 nats
    assert test["negative_elbo"] < baseline - 10, (test["negative_elbo"], baseline)


def test_reconstructions_are_closest_to_their_own_originals(learned_run):
    """Each test image's reconstruction (decoded at z_mean) is nearer its own original than
    most other test images are: z carries what tells the images apart. (In a 2-D latent
    space, after a few hundred steps, a reconstruction is a blurred digit: another image of
    the same digit and style can be nearer.)"""
    output_dir, _, _, images = learned_run
    encoder, decoder, _ = saved_models(output_dir)
    test_images = images.test_images
    reconstructions = decoder.predict(encoder.predict(test_images, verbose=0)[0], verbose=0)
    flat = test_images.reshape(len(test_images), -1).astype(np.float64)
    guesses = reconstructions.reshape(len(test_images), -1).astype(np.float64)
    # Squared distances, reconstruction x original, without a (333, 333, 1024) array.
    distances = (guesses**2).sum(1)[:, None] - 2 * guesses @ flat.T + (flat**2).sum(1)[None]
    others_closer = (distances < np.diag(distances)[:, None]).sum(axis=1)
    share = others_closer / (len(test_images) - 1)  # 0: its own original is the closest
    # A model that draws one picture for every image ranks the originals alike for all: the
    # median share is then about a half. This run's is about 0.1.
    assert np.median(share) < 0.2, np.percentile(share, [25, 50, 75])


def group_means(values, size=K):
    """Means over the images of each group of `size` samples: the same estimate the run
    makes with `size` samples, once per group, so their spread is its Monte Carlo error."""
    return values.reshape(len(values), -1, size).mean(axis=1).mean(axis=0)


def test_the_recorded_elbo_is_the_numpy_one(learned):
    """Reconstruction (Bernoulli cross-entropy summed over pixels, averaged over z), the
    analytic KL, their sum and bits per dimension, against the record."""
    test, _, images, figures = learned
    kl = figures["kl"]
    np.testing.assert_allclose(test["kl_loss"], kl.sum(axis=1).mean(), rtol=1e-4)
    np.testing.assert_allclose(test["kl_per_dimension"], kl.mean(axis=0), rtol=1e-3, atol=1e-4)
    assert test["kl_loss"] > 1  # the latent space is in use: the KL check has something to check

    # The run averaged K = 4 draws per image: its figure is one of the group estimates.
    groups = group_means(figures["nats"])
    error = 4 * groups.std(ddof=1)
    assert 0 < error < 2
    assert abs(test["reconstruction_loss"] - figures["nats"].mean()) < error
    elbo = figures["nats"].mean() + kl.sum(axis=1).mean()
    assert abs(test["negative_elbo"] - elbo) < error

    dimensions = np.prod(images.test_images.shape[1:])  # 32 x 32 x 1 grey levels
    assert test["dimensions"] == dimensions == 1024
    assert test["bits_per_dim"] == pytest.approx(test["negative_elbo"] / (1024 * math.log(2)))
    assert test["iw_bits_per_dim"] == pytest.approx(test["iw_nll"] / (1024 * math.log(2)))


def test_the_importance_weighted_nll_lies_between_its_bounds(learned):
    """With K = 4: at most the negative ELBO and at least the estimate with 32 samples,
    each within the Monte Carlo error, and equal to numpy's own K = 4 estimate."""
    test, _, _, figures = learned
    log_weights = figures["log_weights"]
    per_group = -(logsumexp(log_weights.reshape(len(log_weights), -1, K), axis=-1) - math.log(K))
    estimates = per_group.mean(axis=0)  # eight K = 4 estimates, one per group of samples
    error = 4 * estimates.std(ddof=1)
    many = -(logsumexp(log_weights, axis=1) - math.log(SAMPLES)).mean()
    assert test["iw_nll"] <= test["negative_elbo"] + error
    assert test["iw_nll"] >= many - error
    assert abs(test["iw_nll"] - estimates.mean()) < error
    # The bound tightens with K: 4 samples gain on the ELBO, 32 gain more.
    elbo = figures["nats"].mean() + figures["kl"].sum(axis=1).mean()
    assert many < estimates.mean() - error / 4 < elbo - error / 4


def test_the_validation_loss_is_the_test_negative_elbo(learned):
    """val_loss (one z per test image, drawn by the Sampling layer while training) and the
    evaluation's negative ELBO (z drawn in numpy) estimate the same figure: a model trained
    on z_mean alone would score far better at z_mean than when z is drawn."""
    test, history, _, figures = learned
    one_sample_error = figures["nats"].std(axis=1).mean() / math.sqrt(len(figures["nats"]))
    assert abs(history["val_loss"][-1] - test["negative_elbo"]) < 4 * one_sample_error + 0.5


def decoder_that_ignores_z(mean, log_var):
    """A VAE whose encoder says q(z|x) = N(mean, exp(log_var)) for every image, and whose
    decoder gives every pixel probability 1/2 whatever z is: p(x|z) = 2^-1024 for any
    32x32 grey image, so -log p(x) = 1024 ln 2 exactly, and the negative ELBO exceeds it
    by the KL alone."""
    image = keras.Input((32, 32, 1))
    flat = keras.layers.Flatten()(image)

    def constant(name, value):
        return keras.layers.Dense(
            2,
            name=name,
            kernel_initializer="zeros",
            bias_initializer=keras.initializers.Constant(value),
        )(flat)

    encoder = keras.Model(image, [constant("z_mean", mean), constant("z_log_var", log_var)])
    z = keras.Input((2,))
    logits = keras.layers.Dense(1024, kernel_initializer="zeros")(z)
    logits = keras.layers.Reshape((32, 32, 1), name="logits")(logits)
    decoder = keras.Model(z, keras.layers.Activation("sigmoid", name="image")(logits))
    return vae_module.VAE(encoder, decoder, pixel_head=None, likelihood="bernoulli")


def test_figures_of_a_hand_worked_case():
    """q(z|x) = N((1, 0), I): KL = |mean|^2 / 2 = 0.5 nats. Every pixel costs ln 2: one bit
    per dimension. The importance weights p(z) / q(z|x) have mean 1 (variance e - 1), so
    with 256 samples the IW NLL is 1024 ln 2 within a few hundredths; a mean of log weights
    in its place would give the negative ELBO again, 0.5 above."""
    model = decoder_that_ignores_z([1.0, 0.0], [0.0, 0.0])
    images = (np.random.default_rng(0).random((16, 32, 32, 1)) > 0.5).astype(np.float32)
    exact = 1024 * math.log(2)
    figures = evaluation.evaluate(model, images, samples=256, verbose=False)
    assert figures["reconstruction_loss"] == pytest.approx(exact, abs=1e-3)
    assert figures["kl_loss"] == pytest.approx(0.5, abs=1e-6)
    assert figures["kl_per_dimension"] == [0.5, 0.0]
    assert figures["negative_elbo"] == pytest.approx(exact + 0.5, abs=1e-3)
    assert figures["bits_per_dim"] == pytest.approx(1 + 0.5 / exact, abs=1e-6)
    assert figures["iw_nll"] == pytest.approx(exact, abs=0.1)
    assert figures["iw_bits_per_dim"] == pytest.approx(1.0, abs=0.1 / exact)
    # One sample: the weight's log is the ELBO's estimate, KL drawn (sd 1 per image).
    one = evaluation.evaluate(model, images, samples=1, verbose=False)
    assert one["iw_nll"] == pytest.approx(exact + 0.5, abs=4 / math.sqrt(len(images)))
