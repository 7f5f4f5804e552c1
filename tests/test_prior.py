"""The learned prior (--prior gaussian): its KL, density and draws are those of the Gaussian
its weights describe, worked out here with numpy and scipy; it learns the moments of the
codes it is trained on; a run saves a model that draws from it."""

import keras
import numpy as np
import pytest
from scipy.stats import multivariate_normal

import evaluation
import vae as vae_module
from conftest import small_vae

SIZE = 5


def prior_layer(seed=0):
    """A GaussianPrior of SIZE dimensions with random weights, and the mean and covariance
    they describe: W = (entries below the diagonal) + diag(exp(log_diagonal)), cov =
    (W^T W)^-1."""
    rng = np.random.default_rng(seed)
    layer = vae_module.GaussianPrior(dtype="float32")
    layer.build([(None, SIZE), (None, SIZE)])
    mean = rng.normal(size=SIZE)
    lower = rng.normal(size=(SIZE, SIZE)) * 0.5
    log_diagonal = rng.normal(size=SIZE) * 0.3
    for variable, value in zip(
        (layer.mean, layer.lower, layer.log_diagonal), (mean, lower, log_diagonal), strict=True
    ):
        variable.assign(value.astype("float32"))
    whitening = np.tril(lower.astype("float32"), -1) + np.diag(np.exp(log_diagonal))
    covariance = np.linalg.inv(whitening.T @ whitening)
    return layer, mean.astype("float32").astype(np.float64), covariance


def gaussian_kl(z_mean, z_log_var, mean, covariance):
    """KL(N(z_mean, diag(exp(z_log_var))) || N(mean, covariance)), the textbook formula."""
    precision = np.linalg.inv(covariance)
    difference = mean - z_mean
    return 0.5 * (
        np.trace(precision @ np.diag(np.exp(z_log_var)))
        + difference @ precision @ difference
        - len(mean)
        + np.linalg.slogdet(covariance)[1]
        - np.sum(z_log_var)
    )


def test_the_learned_prior_starts_as_the_standard_normal():
    layer = vae_module.GaussianPrior(dtype="float32")
    layer.build([(None, SIZE), (None, SIZE)])
    rng = np.random.default_rng(1)
    z_mean, z_log_var = rng.normal(size=(2, 3, SIZE)).astype("float32")
    expected = [
        gaussian_kl(m, v, np.zeros(SIZE), np.eye(SIZE))
        for m, v in zip(z_mean, z_log_var, strict=True)
    ]
    np.testing.assert_allclose(np.asarray(layer([z_mean, z_log_var])), expected, rtol=1e-5)


def test_the_kl_and_the_density_are_those_of_the_gaussian_the_weights_describe():
    layer, mean, covariance = prior_layer()
    rng = np.random.default_rng(2)
    z_mean = rng.normal(size=(4, SIZE))
    z_log_var = rng.normal(size=(4, SIZE)) * 0.5
    expected = [gaussian_kl(m, v, mean, covariance) for m, v in zip(z_mean, z_log_var, strict=True)]
    trained = layer([z_mean.astype("float32"), z_log_var.astype("float32")])
    np.testing.assert_allclose(np.asarray(trained), expected, rtol=1e-4)

    class Model:  # what vae.prior_parameters reads
        prior = layer

    parameters = vae_module.prior_parameters(Model)
    # What the evaluation reports as the KL: the training loss's own.
    np.testing.assert_allclose(vae_module.latent_kl(Model, z_mean, z_log_var), expected, rtol=1e-4)
    z = rng.normal(size=(6, SIZE))
    np.testing.assert_allclose(
        evaluation.log_prior(z, parameters), multivariate_normal(mean, covariance).logpdf(z)
    )
    # Each dimension against the prior's marginal of it, N(mean_d, covariance_dd).
    marginal = evaluation.marginal_kl_per_dimension(z_mean, z_log_var, parameters)
    for d in range(SIZE):
        np.testing.assert_allclose(
            marginal[:, d],
            [
                gaussian_kl(m[[d]], v[[d]], mean[[d]], covariance[[d]][:, [d]])
                for m, v in zip(z_mean, z_log_var, strict=True)
            ],
        )


def test_the_saved_prior_draws_from_the_learned_gaussian(tmp_path):
    layer, mean, covariance = prior_layer(seed=3)

    class Model:
        prior = layer

    vae_module.prior_sampler(Model).save(tmp_path / "prior.keras")
    sampler = keras.saving.load_model(tmp_path / "prior.keras")  # plain Keras
    noise = np.random.default_rng(4).standard_normal((200_000, SIZE)).astype("float32")
    z = sampler.predict(noise, batch_size=50_000, verbose=0)
    # 200,000 draws: the sample moments are within a few hundredths of the true ones.
    spread = np.sqrt(np.diag(covariance))
    np.testing.assert_allclose(z.mean(axis=0), mean, atol=0.02 * spread.max())
    np.testing.assert_allclose(np.cov(z.T), covariance, atol=0.02 * covariance.max())
    np.testing.assert_allclose(vae_module.prior_transform(Model)(noise[:10]), z[:10], atol=1e-5)


def test_the_prior_learns_the_moments_of_the_codes_it_is_trained_on():
    """Trained on the KL alone from fixed codes, a Gaussian prior's best fit is their
    aggregate's mean and covariance: that of the z_means plus the mean posterior variance."""
    rng = np.random.default_rng(5)
    mixing = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [-0.5, 0.3, 0.4]])
    z_mean = (rng.normal(size=(4000, 3)) @ mixing.T + [1.0, -0.5, 0.0]).astype("float32")
    z_log_var = np.full_like(z_mean, np.log(0.05))
    layer = vae_module.GaussianPrior(dtype="float32")
    layer.build([(None, 3), (None, 3)])
    optimizer = keras.optimizers.Adam(0.05)
    optimizer.build(layer.trainable_variables)
    import tensorflow as tf  # the gradient tape: this test trains the layer alone

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = keras.ops.mean(layer([z_mean, z_log_var]))
        optimizer.apply(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables)

    for _ in range(300):
        step()
    whitening = keras.ops.convert_to_numpy(layer.whitening()).astype(np.float64)
    learned = np.linalg.inv(whitening.T @ whitening)
    expected = np.cov(z_mean.T.astype(np.float64), bias=True) + 0.05 * np.eye(3)
    np.testing.assert_allclose(np.asarray(layer.mean), z_mean.mean(axis=0), atol=0.02)
    np.testing.assert_allclose(learned, expected, atol=0.03)


def test_colour_models_learn_their_prior_and_grey_ones_keep_n01(tmp_path):
    import run_folder

    colour = small_vae(colour="rgb", spatial_latent=True, image_size=16)
    assert isinstance(colour.prior, vae_module.GaussianPrior)
    assert small_vae().prior is None
    assert small_vae(colour="rgb", prior="standard").prior is None
    colour.prior.lower.assign(np.tril(np.full((64, 64), 0.01, "float32"), -1))
    models = tmp_path / "models"
    run_folder.save_models(colour, str(models))
    restored = keras.saving.load_model(models / "vae.keras")
    np.testing.assert_array_equal(restored.prior.lower, colour.prior.lower)
    assert keras.saving.load_model(models / "prior.keras").output.shape == (None, 64)
    # A later run without a learned prior leaves no prior.keras of an earlier one behind.
    run_folder.save_models(small_vae(), str(models))
    assert not (models / "prior.keras").exists()


@pytest.mark.parametrize("prior", ["standard", "gaussian"])
def test_samples_are_drawn_through_the_prior(prior):
    import plotting

    model = small_vae(colour="rgb", spatial_latent=True, image_size=16, prior=prior)
    shift = 0.0
    if prior == "gaussian":  # a prior centred at 2 everywhere, of unit variances
        shift = 2.0
        model.prior.mean.assign(np.full(64, shift, "float32"))
    transform = vae_module.prior_transform(model)
    z = plotting.prior_draws(model.decoder, 4, np.random.default_rng(0), transform)
    noise = np.random.default_rng(0).standard_normal((4, 64)).astype("float32")
    np.testing.assert_allclose(z, noise + shift, atol=1e-6)


def test_the_evaluation_reports_the_learned_priors_kl():
    model = small_vae(
        colour="rgb", spatial_latent=True, image_size=16, likelihood="discretized_logistic"
    )
    size = model.prior.mean.shape[0]
    rng = np.random.default_rng(6)
    model.prior.mean.assign(rng.normal(size=size).astype("float32") * 0.3)
    model.prior.lower.assign(rng.normal(size=(size, size)).astype("float32") * 0.05)
    whitening = keras.ops.convert_to_numpy(model.prior.whitening()).astype(np.float64)
    covariance = np.linalg.inv(whitening.T @ whitening)
    images = rng.uniform(size=(5, 16, 16, 3)).astype("float32")
    z_mean, z_log_var = (
        np.asarray(t, np.float64) for t in model.encoder.predict(images, verbose=0)
    )
    mean = np.asarray(model.prior.mean, np.float64)
    expected = np.mean(
        [gaussian_kl(m, v, mean, covariance) for m, v in zip(z_mean, z_log_var, strict=True)]
    )
    figures = evaluation.evaluate(model, images, samples=2, verbose=False)
    assert figures["kl_loss"] == pytest.approx(expected, rel=1e-4)
