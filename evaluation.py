"""Evaluation: the test negative ELBO and an importance-weighted estimate of -log p(x).

For each image, K latent samples z_k are drawn from q(z|x) and decoded in one batch:
    log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)
    negative ELBO = mean_k[-log p(x|z_k)] + KL(q(z|x) || p(z))     (KL exact, as in training)
    importance-weighted NLL = -(logsumexp_k log w_k - log K)
The IW estimate is a tighter bound: it falls towards the true -log p(x) as K grows
(Burda et al., 2016). Everything is in nats per image, with the model's likelihood, as the
loss; and in bits per dimension, the figure papers on colour images report:
    bits per dimension = nats per image / (values per image x ln 2)
With the discretized logistic, p(x|z) is a probability of the 8-bit values, and the figure
is a true code length. The Bernoulli cross-entropy against a grey level x is not -log of a
probability of the 256 levels: p^x (1 - p)^(1 - x) summed over them is not 1 (for p = 0.5
it is 128). Its figure, converted the same way, compares runs with one another, not with
the bits per dimension that papers report.

More figures put these in context. The data's floor (Bernoulli only): the
cross-entropy against a grey-level target x can never fall below the target's own
Bernoulli entropy -(x log x + (1 - x) log(1 - x)), so no model reaches 0 nats. What z
carries: the rate (the KL term, also in bits per dimension and as its share of the total),
the active units (a latent dimension whose KL term is ~0 for every image carries no
information: posterior collapse), and the PSNR of the decoder's one-pass image at z_mean
against the image, beside that of the images' mean image.
"""

import io
import math
import os
import time

import keras
import numpy as np
from scipy.special import entr, logsumexp

from data import one_hot
from training import jit_compile
from vae import decode_for_loss, image_nats, kl_divergence, latent_kl, prior_parameters

LOG_2PI = math.log(2 * math.pi)
ACTIVE_UNIT_NATS = 0.01  # a dimension whose mean KL over the test set is above this is in use
# Below this share of the negative ELBO in the KL term, z carries almost nothing of the
# images: the likelihood codes them on its own (posterior collapse), and the run says so.
COLLAPSED_RATE_SHARE = 0.005


def data_entropy_floor(images):
    """Mean over images of the summed Bernoulli entropy of each pixel's grey level, in nats:
    the lowest cross-entropy any model can reach on them. Pixels at 0 or 1 (padding) add 0."""
    targets = np.asarray(images, np.float64).reshape(len(images), -1)
    return float(np.mean(np.sum(entr(targets) + entr(1.0 - targets), axis=1)))


def kl_per_dimension(z_mean, z_log_var):
    """KL(q(z_d|x) || N(0, 1)) of every image and latent dimension d: shape (images, latent)."""
    # The training loss's own KL, summed over a trailing axis of length 1.
    per_dimension = kl_divergence(
        keras.ops.convert_to_tensor(z_mean)[..., None],
        keras.ops.convert_to_tensor(z_log_var)[..., None],
    )
    return keras.ops.convert_to_numpy(per_dimension)


def bits_per_dimension(nats_per_image, dimensions):
    """Nats per image as bits per dimension: divided by the values per image and by ln 2."""
    return nats_per_image / (dimensions * math.log(2))


def active_units(mean_kl_per_dimension, threshold=ACTIVE_UNIT_NATS):
    """How many latent dimensions have a mean KL (over the images) above `threshold` nats."""
    return int(np.sum(np.asarray(mean_kl_per_dimension) > threshold))


def psnr(images, references):
    """Peak signal-to-noise ratio in dB of `images` against `references` (values in [0, 1]):
    10 log10(1 / mean squared error), the error averaged over every value of every image."""
    error = (np.asarray(images, np.float64) - np.asarray(references, np.float64)) ** 2
    return psnr_of_error(error)


def psnr_of_error(squared_errors):
    """The PSNR in dB of these squared errors of values in [0, 1], averaged."""
    return float(10 * math.log10(1.0 / max(float(np.mean(squared_errors)), 1e-12)))


def mean_image_psnr(images):
    """The PSNR of the images' own mean image against them: what a z that carries nothing
    reaches at best, beside which the decoder's PSNR at z_mean says what z carries."""
    mean_image = np.mean(images, axis=0, keepdims=True)
    return psnr(np.broadcast_to(mean_image, images.shape), images)


def _log_normal(z, mean, log_var):
    """log N(z; mean, exp(log_var)), summed over the latent dimensions."""
    return -0.5 * np.sum(LOG_2PI + log_var + (z - mean) ** 2 / np.exp(log_var), axis=-1)


def log_prior(z, prior=None):
    """log p(z), summed over the latent dimensions: N(0, I), or the learned prior's
    `(mean, W)` (vae.prior_parameters), under which W (z - mean) is N(0, I)."""
    if prior is None:
        return _log_normal(z, 0.0, 0.0)
    mean, whitening = prior
    whitened = (z - mean) @ whitening.T
    return _log_normal(whitened, 0.0, 0.0) + np.sum(np.log(np.diag(whitening)))


def marginal_kl_per_dimension(z_mean, z_log_var, prior=None):
    """Each image's and latent dimension's KL from the prior's marginal of that dimension:
    what each dimension carries (for the active units). Under N(0, I) these sum to the KL;
    under a learned prior, whose dimensions go together, they need not."""
    if prior is None:
        return kl_per_dimension(z_mean, z_log_var)
    mean, whitening = prior
    variance = np.sum(np.linalg.inv(whitening) ** 2, axis=1)  # the diagonal of (W^T W)^-1
    return 0.5 * (
        (np.exp(z_log_var) + (z_mean - mean) ** 2) / variance - 1.0 - z_log_var + np.log(variance)
    )


def sample_nats_model(vae):
    """-log p(x|z) of each (z, image) pair in one compiled pass: the decoder's logits and the
    likelihood together, so that the per-sample logits never leave the graph. Inputs
    `[z, image]` (`[z, one_hot_label, image]` if conditional); output: nats per pair."""
    decoder_inputs = [keras.Input(shape=tensor.shape[1:]) for tensor in vae.decoder_logits.inputs]
    image = keras.Input(shape=vae.encoder.inputs[0].shape[1:])
    decoded = decode_for_loss(vae, decoder_inputs if vae.conditional else decoder_inputs[0], image)
    scorer = keras.Model(
        [*decoder_inputs, image], image_nats(vae, image, decoded), name="sample_nats"
    )
    scorer.compile(jit_compile=jit_compile(vae))  # as in training
    return scorer


def evaluate(vae, images, labels=None, samples=64, images_per_batch=32, seed=0, verbose=True):
    """Negative ELBO (with its parts) and IW negative log-likelihood on `images`.

    A conditional VAE needs the `labels`; the figures are then of -log p(x | label).
    Also: both in bits per dimension, each latent dimension's mean KL, the number of active
    units, for a Bernoulli likelihood the data's floor, and what PNG and WebP spend on the
    same images (`coder_bits_per_dimension`, outside the timed `seconds`).
    """
    rng = np.random.default_rng(seed)
    parts = {
        "reconstruction": [],
        "kl": [],
        "kl_per_dimension": [],
        "iw_nll": [],
        "squared_error": [],
    }
    started = time.perf_counter()
    scorer = sample_nats_model(vae)
    progress = keras.utils.Progbar(len(images), unit_name="image") if verbose else None
    for start in range(0, len(images), images_per_batch):
        batch = slice(start, start + images_per_batch)
        scores = score_batch(
            vae, scorer, images[batch], labels, batch, samples, rng, images_per_batch
        )
        for name, values in zip(parts, scores, strict=True):
            parts[name].append(values)
        if progress:
            progress.add(len(images[batch]))
    reconstruction, kl, kl_per_dim, iw_nll, squared_error = (
        np.concatenate(v) for v in parts.values()
    )
    mean_kl_per_dimension = kl_per_dim.mean(axis=0)
    negative_elbo, iw_nll = float(np.mean(reconstruction + kl)), float(np.mean(iw_nll))
    seconds = round(time.perf_counter() - started, 1)
    return {
        "negative_elbo": negative_elbo,
        "reconstruction_loss": float(np.mean(reconstruction)),
        "kl_loss": float(np.mean(kl)),
        "kl_per_dimension": [round(float(value), 4) for value in mean_kl_per_dimension],
        "active_units": active_units(mean_kl_per_dimension),
        "data_entropy_floor": (
            data_entropy_floor(images) if vae.likelihood == "bernoulli" else None
        ),
        "iw_nll": iw_nll,
        "bits_per_dim": bits_per_dimension(negative_elbo, vae.dimensions),
        # The rate: what z carries, in the code length's units and as its share.
        "rate_bits_per_dim": bits_per_dimension(float(np.mean(kl)), vae.dimensions),
        "rate_share": float(np.mean(kl)) / negative_elbo,
        # How much of the picture z carries: the decoder's one-pass image at z_mean.
        "decoder_psnr": psnr_of_error(squared_error),
        "mean_image_psnr": mean_image_psnr(images),
        "iw_bits_per_dim": bits_per_dimension(iw_nll, vae.dimensions),
        "likelihood": vae.likelihood,
        "dimensions": vae.dimensions,
        "iw_samples": samples,
        "images": len(images),
        "seconds": seconds,
        **coder_bits_per_dimension(images),
    }


def score_batch(vae, scorer, batch, labels, where, samples, rng, rows=None):
    """For each image of `batch` (at `where` among the `labels`): its mean -log p(x|z) over
    `samples` draws of z, its KL, each latent dimension's (marginal_kl_per_dimension), its
    importance-weighted NLL and the mean squared error of the decoder's image at z_mean. The
    models run on batches padded to `rows` images (`predict_padded`)."""
    rows = rows or len(batch)
    conditions = one_hot(labels[where], vae.num_classes) if vae.conditional else None
    encoded = predict_padded(vae.encoder, [batch, conditions] if vae.conditional else [batch], rows)
    # Called directly: one more compiled prediction, so close to the others, would have
    # TensorFlow warn of retracing.
    decoder_inputs = [encoded[0], conditions] if vae.conditional else encoded[0]
    decoded = keras.ops.convert_to_numpy(vae.decoder(decoder_inputs, training=False))
    squared_error = np.mean((decoded - batch) ** 2, axis=tuple(range(1, batch.ndim)))
    z_mean, z_log_var = (np.asarray(t, np.float64) for t in encoded)
    epsilon = rng.standard_normal((len(batch), samples, z_mean.shape[1]))
    z = (z_mean[:, None] + np.exp(0.5 * z_log_var[:, None]) * epsilon).reshape(-1, z_mean.shape[1])
    z = z.astype(np.float32)  # (batch * K, latent): all K samples decoded in one call
    repeated = np.repeat(batch, samples, axis=0)
    if vae.conditional:
        inputs = [z, np.repeat(conditions, samples, axis=0), repeated]
    else:
        inputs = [z, repeated]
    nats = predict_padded(scorer, inputs, rows * samples)[0].reshape(len(batch), samples)
    z = z.reshape(len(batch), samples, -1).astype(np.float64)
    prior = prior_parameters(vae)
    log_weights = (
        -nats.astype(np.float64)
        + log_prior(z, prior)
        - _log_normal(z, z_mean[:, None], z_log_var[:, None])
    )
    iw_nll = -(logsumexp(log_weights, axis=1) - math.log(samples))
    # The training loss's own KL: against N(0, I) or the learned prior.
    as_tensors = (keras.ops.convert_to_tensor(part) for part in (z_mean, z_log_var))
    kl = np.asarray(keras.ops.convert_to_numpy(latent_kl(vae, *as_tensors)), np.float64)
    kl_per_dim = marginal_kl_per_dimension(z_mean, z_log_var, prior)
    return nats.mean(axis=1), kl, kl_per_dim, iw_nll, squared_error


def predict_padded(model, inputs, rows):
    """The outputs (a list) of `model.predict_on_batch(inputs)`, `inputs` (a list) padded
    with zeros to `rows`: every batch then has one shape, traced once, where a smaller last
    batch would be traced again (and TensorFlow warns of retracing when traces of several
    models' predictions come close together)."""
    count = len(inputs[0])
    padded = [
        np.concatenate([array, np.zeros((rows - count, *array.shape[1:]), array.dtype)])
        for array in inputs
    ]
    outputs = model.predict_on_batch(padded if len(padded) > 1 else padded[0])
    return [np.asarray(output)[:count] for output in keras.tree.flatten(outputs)]


# Each coder's header bytes, the same for every image of one shape: what the file format
# spends on saying what it is, not on the pixels. PNG: signature, IHDR, IDAT's length, type
# and checksum, IEND. Lossless WebP: RIFF and VP8L headers.
CODER_HEADER_BYTES = {"png": 57, "webp": 20}
# The coders read at most this many test images, evenly spaced: their average is steady
# well before that, and WebP's encoder takes milliseconds per image.
CODER_IMAGES = 1000


def coder_bits_per_dimension(images, limit=CODER_IMAGES):
    """What general-purpose lossless coders spend on `images` (floats in [0, 1], 8-bit
    levels), each image coded alone, less the headers: {"png_bits_per_dim": ...,
    "webp_bits_per_dim": ..., "coder_images": how many were coded}. PNG with Pillow's
    `optimize`; WebP lossless at Pillow's default effort. A likelihood model that spends
    more than PNG has learnt less about the images than PNG's filters and deflate."""
    from PIL import Image  # Pillow comes with matplotlib

    chosen = np.linspace(0, len(images) - 1, min(limit, len(images))).round().astype(int)
    pixels = np.round(np.asarray(images)[chosen] * 255).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = pixels[..., 0]  # grey: PNG's one-channel mode
    spent = dict.fromkeys(CODER_HEADER_BYTES, 0)
    for image in pixels:
        picture = Image.fromarray(image)
        for coder, options in (("png", {"optimize": True}), ("webp", {"lossless": True})):
            stream = io.BytesIO()
            picture.save(stream, coder.upper(), **options)
            spent[coder] += len(stream.getvalue()) - CODER_HEADER_BYTES[coder]
    values = pixels.size
    return {
        **{f"{coder}_bits_per_dim": 8 * spent[coder] / values for coder in spent},
        "coder_images": len(pixels),
    }


# Test figures for TensorBoard: the Scalars tab and the HParams tab's columns.
SUMMARY_FIGURES = (
    "negative_elbo",
    "reconstruction_loss",
    "kl_loss",
    "iw_nll",
    "bits_per_dim",
    "iw_bits_per_dim",
    "active_units",
    "rate_bits_per_dim",
    "rate_share",
    "decoder_psnr",
    "data_entropy_floor",
    "png_bits_per_dim",
    "webp_bits_per_dim",
)


def write_tensorboard_summary(run_dir, settings, metrics, training):
    """The run's settings for TensorBoard's HParams tab (in `run_dir`) and its test figures
    as scalars (in `run_dir`/evaluation), so that `tensorboard --logdir logs` lists every
    run in one sortable table. Settings that are None (unset) are left out of the table."""
    import tensorflow as tf  # TensorBoard's writer
    from tensorboard.plugins.hparams import api as hparams_api

    step = training.get("epochs_trained", 0)
    writer = tf.summary.create_file_writer(run_dir)
    with writer.as_default():
        hparams_api.hparams(
            {
                name: value
                for name, value in settings.items()
                if isinstance(value, (bool, int, float, str))
            },
            trial_id=os.path.basename(os.path.normpath(run_dir)),
        )
    writer.close()
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "evaluation"))
    with writer.as_default():
        for name in SUMMARY_FIGURES:
            if metrics.get(name) is not None:  # the data's floor is the Bernoulli's alone
                tf.summary.scalar(f"test/{name}", metrics[name], step=step)
        if "training_seconds" in training:
            tf.summary.scalar("training/seconds", training["training_seconds"], step=step)
    writer.close()
