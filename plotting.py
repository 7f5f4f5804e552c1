"""Plots: the latent space and what the decoder makes of it, written as PNG files.

Every figure is drawn on matplotlib's file-only Agg backend and closed after saving,
so plotting never opens a window and works on a server with no screen.
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import norm  # noqa: E402

PREDICT_BATCH_SIZE = 500  # large batches: prediction holds no gradients


def principal_components(points, count=2):
    """Project points onto their first `count` principal axes (numpy SVD)."""
    centred = points - points.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    return centred @ axes[:count].T


def _tile(images, rows, columns):
    """(rows*columns, h, w, 1) -> one (rows*h, columns*w) picture."""
    height, width = images.shape[1:3]
    grid = images[..., 0].reshape(rows, columns, height, width)
    return grid.transpose(0, 2, 1, 3).reshape(rows * height, columns * width)


def _save(figure, path):
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def plot_latent_space(z_mean, labels, class_names, path):
    """Test-set z_mean coloured by class (first two principal components above 2-D)."""
    latent_dim = z_mean.shape[1]
    points = z_mean if latent_dim == 2 else principal_components(z_mean)
    figure, axes = plt.subplots(figsize=(8, 7))
    scatter = axes.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", vmin=-0.5, vmax=9.5, s=3)
    colour_bar = figure.colorbar(scatter, ticks=range(len(class_names)))
    colour_bar.ax.set_yticklabels(class_names)
    if latent_dim == 2:
        axes.set(title="Test images in the latent space (z_mean)", xlabel="z[0]", ylabel="z[1]")
    else:
        axes.set(
            title=f"Test images: first two principal components of {latent_dim}-D z_mean",
            xlabel="principal component 1",
            ylabel="principal component 2",
        )
    _save(figure, path)


def plot_manifold(decoder, latent_dim, path, grid_size=20):
    """Decode a grid of z at evenly spaced Gaussian quantiles in [0.05, 0.95]."""
    values = norm.ppf(np.linspace(0.05, 0.95, grid_size))
    z = np.zeros((grid_size * grid_size, latent_dim), dtype=np.float32)
    # Rows run from high z[1] at the top to low at the bottom, like a plot's y axis.
    z[:, 0] = np.tile(values, grid_size)
    z[:, 1] = np.repeat(values[::-1], grid_size)
    images = decoder.predict(z, batch_size=len(z), verbose=0)  # one batched call
    size = images.shape[1]
    figure, axes = plt.subplots(figsize=(10, 10))
    axes.imshow(_tile(images, grid_size, grid_size), cmap="Greys_r", vmin=0, vmax=1)
    ticks = np.arange(grid_size) * size + size / 2
    axes.set_xticks(ticks[::2], [f"{v:.2f}" for v in values[::2]], rotation=90)
    axes.set_yticks(ticks[::2], [f"{v:.2f}" for v in values[::-1][::2]])
    axes.set(xlabel="z[0]", ylabel="z[1]")
    if latent_dim == 2:
        axes.set_title("Decoded latent manifold")
    else:
        axes.set_title(f"Decoded manifold: z[0] and z[1] varied, other {latent_dim - 2} dimensions 0")
    _save(figure, path)


def plot_reconstructions(images, reconstructions, path):
    """Originals in the top row, their reconstructions below."""
    count = len(images)
    figure, axes = plt.subplots(2, count, figsize=(1.2 * count, 2.8))
    for column in range(count):
        for row, picture in enumerate((images[column], reconstructions[column])):
            axes[row, column].imshow(picture[..., 0], cmap="Greys_r", vmin=0, vmax=1)
            axes[row, column].axis("off")
    axes[0, 0].set_title("original", loc="left")
    axes[1, 0].set_title("reconstruction", loc="left")
    _save(figure, path)


def plot_samples(decoder, latent_dim, path, grid_size=10, seed=0):
    """Decodes of z drawn from the prior N(0, I)."""
    z = np.random.default_rng(seed).standard_normal((grid_size * grid_size, latent_dim)).astype(np.float32)
    images = decoder.predict(z, batch_size=len(z), verbose=0)
    figure, axes = plt.subplots(figsize=(8, 8))
    axes.imshow(_tile(images, grid_size, grid_size), cmap="Greys_r", vmin=0, vmax=1)
    axes.axis("off")
    axes.set_title("Samples: z drawn from N(0, I), decoded")
    _save(figure, path)


def plot_all(encoder, decoder, test_images, test_labels, class_names, plots_dir, seed=0):
    """Write latent_space.png, manifold.png, reconstructions.png and samples.png."""
    os.makedirs(plots_dir, exist_ok=True)
    latent_dim = decoder.inputs[0].shape[-1]
    z_mean, _ = encoder.predict(test_images, batch_size=PREDICT_BATCH_SIZE, verbose=0)
    plot_latent_space(z_mean, test_labels, class_names, os.path.join(plots_dir, "latent_space.png"))
    plot_manifold(decoder, latent_dim, os.path.join(plots_dir, "manifold.png"))
    shown = slice(0, 10)
    reconstructions = decoder.predict(z_mean[shown], verbose=0)
    plot_reconstructions(test_images[shown], reconstructions, os.path.join(plots_dir, "reconstructions.png"))
    plot_samples(decoder, latent_dim, os.path.join(plots_dir, "samples.png"), seed=seed)
