"""Evaluation: the test negative ELBO and an importance-weighted estimate of -log p(x).

For each image, K latent samples z_k are drawn from q(z|x) and decoded in one batch:
    log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)
    negative ELBO = mean_k[-log p(x|z_k)] + KL(q(z|x) || p(z))     (KL exact, as in training)
    importance-weighted NLL = -(logsumexp_k log w_k - log K)
The IW estimate is a tighter bound: it falls towards the true -log p(x) as K grows
(Burda et al., 2016). Everything is in nats per image, Bernoulli pixels, as the loss.
"""

import math
import time

import keras
import numpy as np
from scipy.special import logsumexp

from data import one_hot
from vae import kl_divergence, reconstruction_nats

LOG_2PI = math.log(2 * math.pi)


def _log_normal(z, mean, log_var):
    """log N(z; mean, exp(log_var)), summed over the latent dimensions."""
    return -0.5 * np.sum(LOG_2PI + log_var + (z - mean) ** 2 / np.exp(log_var), axis=-1)


def evaluate(vae, images, labels=None, samples=64, images_per_batch=32, seed=0, verbose=True):
    """Negative ELBO (with its parts) and IW negative log-likelihood on `images`.

    A conditional VAE needs the `labels`; the figures are then of -log p(x | label).
    """
    rng = np.random.default_rng(seed)
    reconstruction, kl, iw_nll = [], [], []
    started = time.perf_counter()
    progress = keras.utils.Progbar(len(images), unit_name="image") if verbose else None
    for start in range(0, len(images), images_per_batch):
        batch = images[start:start + images_per_batch]
        conditions = one_hot(labels[start:start + images_per_batch]) if vae.conditional else None
        encoded = vae.encoder.predict_on_batch([batch, conditions] if vae.conditional else batch)
        z_mean, z_log_var = (np.asarray(t, np.float64) for t in encoded)
        epsilon = rng.standard_normal((len(batch), samples, z_mean.shape[1]))
        z = (z_mean[:, None] + np.exp(0.5 * z_log_var[:, None]) * epsilon).reshape(-1, z_mean.shape[1])
        z = z.astype(np.float32)  # (batch * K, latent): all K samples decoded in one call
        logits = vae.decoder_logits.predict_on_batch(
            [z, np.repeat(conditions, samples, axis=0)] if vae.conditional else z
        )
        repeated = np.repeat(batch, samples, axis=0)
        nats = keras.ops.convert_to_numpy(reconstruction_nats(repeated, logits)).reshape(len(batch), samples)
        z = z.reshape(len(batch), samples, -1).astype(np.float64)
        log_weights = (
            -nats.astype(np.float64)
            + _log_normal(z, 0.0, 0.0)
            - _log_normal(z, z_mean[:, None], z_log_var[:, None])
        )
        reconstruction.append(nats.mean(axis=1))
        posterior = (keras.ops.convert_to_tensor(z_mean), keras.ops.convert_to_tensor(z_log_var))
        kl.append(keras.ops.convert_to_numpy(kl_divergence(*posterior)))
        iw_nll.append(-(logsumexp(log_weights, axis=1) - math.log(samples)))
        if progress:
            progress.add(len(batch))
    reconstruction, kl, iw_nll = (np.concatenate(parts) for parts in (reconstruction, kl, iw_nll))
    return {
        "negative_elbo": float(np.mean(reconstruction + kl)),
        "reconstruction_loss": float(np.mean(reconstruction)),
        "kl_loss": float(np.mean(kl)),
        "iw_nll": float(np.mean(iw_nll)),
        "iw_samples": samples,
        "images": len(images),
        "seconds": round(time.perf_counter() - started, 1),
    }
