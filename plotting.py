"""Plots: the latent space and what the decoder makes of it, written as PNG files.

Every figure is drawn on matplotlib's file-only Agg backend and closed after saving,
so plotting never opens a window and works on a server with no screen. The functions
take the encoder and decoder (plain or conditional) as saved in models/, and draw grey
or colour images as they are. Labels and class names are None for unlabelled images.
"""

import io
import math
import os

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import norm  # noqa: E402

from data import one_hot  # noqa: E402
from evaluation import ACTIVE_UNIT_NATS, kl_per_dimension  # noqa: E402

# samples.png (and pixel_head_samples.png) show this many pictures a side.
SAMPLES_GRID = 10

PREDICT_BATCH_SIZE = 500  # large batches: prediction holds no gradients


def run_model(model, inputs, batch_size=PREDICT_BATCH_SIZE):
    """model(inputs) as numpy, in batches. A direct call, not `predict`: a model trained under
    a distribution strategy then still runs on this device alone, where its `predict` would
    split every batch over the replicas and wait for the other workers to do the same."""
    inputs = inputs if isinstance(inputs, list) else [inputs]
    outputs = []
    for start in range(0, len(inputs[0]), batch_size):
        batch = [array[start : start + batch_size] for array in inputs]
        result = model(batch if len(batch) > 1 else batch[0], training=False)
        outputs.append(
            [keras.ops.convert_to_numpy(tensor) for tensor in keras.tree.flatten(result)]
        )
    merged = [np.concatenate(parts) for parts in zip(*outputs, strict=True)]
    return merged if len(merged) > 1 else merged[0]


def is_conditional(model):
    """A conditional encoder or decoder takes the one-hot label as its second input."""
    return len(model.inputs) == 2


def posterior(encoder, images, labels):
    """(z_mean, z_log_var) of each image (a conditional encoder also reads the labels)."""
    if is_conditional(encoder):
        return run_model(encoder, [images, one_hot(labels, encoder.inputs[1].shape[-1])])
    return run_model(encoder, images)


def encode(encoder, images, labels):
    """z_mean of each image."""
    return posterior(encoder, images, labels)[0]


def decode(decoder, z, labels=None, draw=None):
    """Images decoded from z, in batches; `labels` (ints or one-hot rows) if conditional.
    `draw`: a function of the decoder's inputs that draws the images instead of the decoder
    (a VAE with a pixel head draws them pixel by pixel: vae.VAE.draw)."""
    inputs = z
    if is_conditional(decoder):
        labels = np.asarray(labels)
        conditions = labels if labels.ndim == 2 else one_hot(labels, decoder.inputs[1].shape[-1])
        inputs = [z, conditions.astype(np.float32)]
    return draw(inputs) if draw else run_model(decoder, inputs)


def take(labels, index):
    """labels[index], or None for unlabelled images."""
    return None if labels is None else labels[index]


def principal_plane(points, count=2):
    """(mean, axes): the points' mean and their first `count` principal axes, one per row
    (numpy SVD); a point's coordinates in that plane are (point - mean) @ axes.T."""
    mean = points.mean(axis=0)
    _, _, axes = np.linalg.svd(points - mean, full_matrices=False)
    return mean, axes[:count]


def principal_components(points, count=2):
    """Project points onto their first `count` principal axes (numpy SVD)."""
    mean, axes = principal_plane(points, count)
    return (points - mean) @ axes.T


def show(axes, picture):
    """Draw an (h, w, channels) picture in [0, 1]: grey on a grey scale, or in colour."""
    if picture.shape[-1] == 1:
        axes.imshow(picture[..., 0], cmap="Greys_r", vmin=0, vmax=1)
    else:
        axes.imshow(np.clip(picture, 0, 1))


def image_grid(images, columns, gap=0, gap_value=0.5):
    """(N, height, width, channels) -> one (rows * height, columns * width, channels)
    picture, row by row, with `gap` pixels of `gap_value` between the tiles; the last row
    is filled with the gap's value where the images run out."""
    count, height, width, channels = images.shape
    rows = max(1, math.ceil(count / columns))
    tiles = np.full((rows * columns, height + gap, width + gap, channels), gap_value, np.float32)
    tiles[:count, :height, :width] = images
    grid = tiles.reshape(rows, columns, height + gap, width + gap, channels)
    grid = grid.transpose(0, 2, 1, 3, 4).reshape(
        rows * (height + gap), columns * (width + gap), channels
    )
    return grid[: grid.shape[0] - gap, : grid.shape[1] - gap]  # no gap after the last tile


def _save(figure, path):
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def figure_png(figure):
    """The figure as PNG bytes (for TensorBoard), closed afterwards."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def class_colours(count):
    """(colour map, its top value) giving each of `count` classes a distinct colour, for a
    scatter coloured by label from 0 to count - 1: tab10's first colours up to ten."""
    if count <= 10:
        return "tab10", 9.5
    name = "tab20" if count <= 20 else "turbo"
    colours = matplotlib.colors.ListedColormap(plt.get_cmap(name)(np.linspace(0, 1, count)))
    return colours, count - 0.5


def as_text(name):
    """A class name (a folder's name) drawn as it is written: matplotlib reads text between
    two `$` as mathematics, and one it cannot parse stops the drawing. A tab (which no font
    draws) becomes a space."""
    return str(name).replace("$", r"\$").replace("\t", " ")


def latent_space_figure(z_mean, labels, class_names, title_suffix=""):
    """Test-set z_mean coloured by class (first two principal components above 2-D); one
    colour for unlabelled images."""
    latent_dim = z_mean.shape[1]
    points = z_mean if latent_dim == 2 else principal_components(z_mean)
    figure, axes = plt.subplots(figsize=(8, 7))
    if class_names:
        colours, top = class_colours(len(class_names))
        scatter = axes.scatter(
            points[:, 0], points[:, 1], c=labels, cmap=colours, vmin=-0.5, vmax=top, s=3
        )
        colour_bar = figure.colorbar(scatter, ticks=range(len(class_names)))
        colour_bar.ax.set_yticklabels([as_text(name) for name in class_names])
    else:
        axes.scatter(points[:, 0], points[:, 1], s=3)
    if latent_dim == 2:
        axes.set(
            title="Test images in the latent space (z_mean)" + title_suffix,
            xlabel="z[0]",
            ylabel="z[1]",
        )
    else:
        axes.set(
            title=f"Test images: first two principal components of {latent_dim}-D z_mean"
            + title_suffix,
            xlabel="principal component 1",
            ylabel="principal component 2",
        )
    return figure


def plot_manifold(decoder, path, label=None, class_name=None, grid_size=20):
    """Decode a grid of z at evenly spaced Gaussian quantiles in [0.05, 0.95]."""
    latent_dim = decoder.inputs[0].shape[-1]
    values = norm.ppf(np.linspace(0.05, 0.95, grid_size))
    z = np.zeros((grid_size * grid_size, latent_dim), dtype=np.float32)
    # Rows run from high z[1] at the top to low at the bottom, like a plot's y axis.
    z[:, 0] = np.tile(values, grid_size)
    z[:, 1] = np.repeat(values[::-1], grid_size)
    images = decode(decoder, z, np.full(len(z), label))
    size = images.shape[1]
    figure, axes = plt.subplots(figsize=(10, 10))
    show(axes, image_grid(images, grid_size))
    ticks = np.arange(grid_size) * size + size / 2
    axes.set_xticks(ticks[::2], [f"{v:.2f}" for v in values[::2]], rotation=90)
    axes.set_yticks(ticks[::2], [f"{v:.2f}" for v in values[::-1][::2]])
    axes.set(xlabel="z[0]", ylabel="z[1]")
    title = "Decoded latent manifold"
    if latent_dim > 2:
        title = f"Decoded manifold: z[0] and z[1] varied, other {latent_dim - 2} dimensions 0"
    if class_name is not None:
        title += f", class {as_text(class_name)}"
    axes.set_title(title)
    _save(figure, path)


def plot_reconstructions(images, reconstructions, path):
    """Originals in the top row, their reconstructions below."""
    count = len(images)
    figure, axes = plt.subplots(2, count, figsize=(1.2 * count + 1, 2.8), squeeze=False)
    for column in range(count):
        for row, picture in enumerate((images[column], reconstructions[column])):
            show(axes[row, column], picture)
            axes[row, column].axis("off")
    axes[0, 0].set_title("original", loc="left")
    axes[1, 0].set_title("reconstruction", loc="left")
    _save(figure, path)


def prior_draws(decoder, count, rng, prior=None):
    """`count` z drawn from the prior: N(0, I), or through `prior`, a function that takes
    noise from N(0, I) to z from a learned prior (vae.prior_transform)."""
    noise = rng.standard_normal((count, decoder.inputs[0].shape[-1])).astype(np.float32)
    return noise if prior is None else prior(noise)


def prior_name(prior):
    return "N(0, I)" if prior is None else "the learned prior"


def prior_samples(decoder, count, seed=0, labels=None, draw=None, prior=None):
    """Decodes of z drawn from the prior (`prior_draws`), with random labels if conditional."""
    rng = np.random.default_rng(seed)
    z = prior_draws(decoder, count, rng, prior)
    if labels is None and is_conditional(decoder):
        labels = rng.integers(0, decoder.inputs[1].shape[-1], count)
    return decode(decoder, z, labels, draw)


def plot_samples(decoder, path, grid_size=SAMPLES_GRID, seed=0, draw=None, prior=None):
    images = prior_samples(decoder, grid_size * grid_size, seed, draw=draw, prior=prior)
    figure, axes = plt.subplots(figsize=(8, 8))
    show(axes, image_grid(images, grid_size))
    axes.axis("off")
    title = f"Samples: z drawn from {prior_name(prior)}"
    title += (", random classes" if is_conditional(decoder) else "") + ", decoded"
    axes.set_title(title + (" and drawn pixel by pixel" if draw else ""))
    _save(figure, path)


def _save_grid_with_row_labels(images, rows, columns, row_labels, title, path):
    figure, axes = plt.subplots(figsize=(columns, rows + 1))
    show(axes, image_grid(images, columns))
    size = images.shape[1]
    axes.set_yticks(np.arange(rows) * size + size / 2, row_labels)
    axes.set_xticks([])
    axes.set_title(title)
    _save(figure, path)


def plot_class_samples(decoder, class_names, path, per_class=10, seed=0, prior=None):
    """Conditional VAE: one row per class, the same `per_class` z values in every row."""
    z = prior_draws(decoder, per_class, np.random.default_rng(seed), prior)
    classes = len(class_names)
    images = decode(decoder, np.tile(z, (classes, 1)), np.repeat(np.arange(classes), per_class))
    _save_grid_with_row_labels(
        images,
        classes,
        per_class,
        [as_text(name) for name in class_names],
        f"Each row: one class; each column: one z from {prior_name(prior)}",
        path,
    )


def interpolation_pairs(labels, count, seed=0):
    """Up to `count` pairs of two distinct test images, drawn at random; the two are of
    different classes wherever the test set has another class; none for a single image."""
    labels = np.asarray(labels)
    if len(labels) < 2:
        return []
    order = np.random.default_rng(seed).permutation(len(labels))
    pairs = []
    for position, first in enumerate(order[:count]):
        others = np.roll(order, -position - 1)[:-1]  # every other image, from the next one on
        other_class = others[labels[others] != labels[first]]
        pairs.append((first, other_class[0] if len(other_class) else others[0]))
    return pairs


def plot_interpolation(decoder, z_mean, labels, class_names, path, pairs=6, steps=10, seed=0):
    """Decodes along the straight line between the z_mean of two test images of different
    classes (of any two images, if unlabelled). Returns False, drawing nothing, when there
    are not two test images."""
    chosen = interpolation_pairs(
        np.zeros(len(z_mean), int) if labels is None else labels, pairs, seed
    )
    if not chosen:
        return False
    pairs = len(chosen)
    first, second = np.array(chosen).T
    weights = np.linspace(0, 1, steps)[None, :, None]  # (pair, step, dimension)
    z = (1 - weights) * z_mean[first][:, None] + weights * z_mean[second][:, None]
    conditions = None
    if is_conditional(decoder):
        # The label moves along the line too, from one class to the other.
        classes = decoder.inputs[1].shape[-1]
        conditions = (1 - weights) * one_hot(labels[first], classes)[:, None] + weights * one_hot(
            labels[second], classes
        )[:, None]
        conditions = conditions.reshape(pairs * steps, -1)
    images = decode(decoder, z.reshape(pairs * steps, -1).astype(np.float32), conditions)
    if class_names:
        names = [as_text(name) for name in class_names]
        row_labels = [f"{names[labels[a]]} -> {names[labels[b]]}" for a, b in chosen]
    else:
        row_labels = [f"image {a} -> {b}" for a, b in chosen]
    _save_grid_with_row_labels(
        images,
        pairs,
        steps,
        row_labels,
        "Straight lines in the latent space between two test images (z_mean)",
        path,
    )
    return True


def plot_traversals(
    decoder,
    z_mean,
    z_log_var,
    test_labels,
    path,
    image_index=0,
    steps=11,
    limit=3.0,
    max_rows=16,
):
    """One row per active latent dimension (mean KL over the test images' posteriors above
    ACTIVE_UNIT_NATS), most informative first, at most `max_rows` of them (a colour model's
    128 dimensions would make a picture too tall to read): that dimension set to values from
    -limit to limit, the others held at one test image's z_mean. With no active dimension,
    the one with the largest KL is shown."""
    mean_kl = kl_per_dimension(z_mean, z_log_var).mean(axis=0)
    order = np.argsort(-mean_kl)
    active = [d for d in order if mean_kl[d] > ACTIVE_UNIT_NATS]
    dimensions = (active or list(order[:1]))[:max_rows]
    values = np.linspace(-limit, limit, steps)
    z = np.repeat(z_mean[image_index][None], len(dimensions) * steps, axis=0).reshape(
        len(dimensions), steps, -1
    )
    for row, dimension in enumerate(dimensions):
        z[row, :, dimension] = values
    images = decode(
        decoder,
        z.reshape(len(dimensions) * steps, -1).astype(np.float32),
        np.full(len(dimensions) * steps, take(test_labels, image_index)),
    )
    row_labels = [f"z[{d}] (KL {mean_kl[d]:.2f})" for d in dimensions]
    _save_grid_with_row_labels(
        images,
        len(dimensions),
        steps,
        row_labels,
        f"Each row: one latent dimension set to {-limit:g} ... {limit:g}, the others at test image "
        f"{image_index}'s z_mean\n({len(active)} of {z_mean.shape[1]} dimensions active (mean KL > "
        f"{ACTIVE_UNIT_NATS:g} nats), ordered by mean KL"
        + (f"; the first {max_rows} shown)" if len(active) > max_rows else ")"),
        path,
    )


def plot_all(
    encoder,
    decoder,
    test_images,
    test_labels,
    class_names,
    plots_dir,
    seed=0,
    plot_class=None,
    draw=None,
    prior=None,
):
    """Write every plot of a trained model into `plots_dir`, each of the decoder's own
    images. `draw` (see `decode`), for a VAE with a pixel head: samples drawn pixel by pixel
    as well, in pixel_head_samples.png. `prior`: see `prior_draws`."""
    os.makedirs(plots_dir, exist_ok=True)
    z_mean, z_log_var = posterior(encoder, test_images, test_labels)  # once for every plot
    suffix = ", conditional VAE" if is_conditional(decoder) else ""
    _save(
        latent_space_figure(z_mean, test_labels, class_names, suffix),
        os.path.join(plots_dir, "latent_space.png"),
    )
    shown = slice(0, 10)
    reconstructions = decode(decoder, z_mean[shown], take(test_labels, shown))
    plot_reconstructions(
        test_images[shown], reconstructions, os.path.join(plots_dir, "reconstructions.png")
    )
    plot_samples(decoder, os.path.join(plots_dir, "samples.png"), seed=seed, prior=prior)
    if draw:
        path = os.path.join(plots_dir, "pixel_head_samples.png")
        plot_samples(decoder, path, seed=seed, draw=draw, prior=prior)
    drawn = plot_interpolation(
        decoder,
        z_mean,
        test_labels,
        class_names,
        os.path.join(plots_dir, "interpolation.png"),
        seed=seed,
    )
    if not drawn:
        print("One test image only: interpolation.png, a path between two, is left out.")
    if z_mean.shape[1] > 2:  # two dimensions are already drawn whole by the manifold
        plot_traversals(
            decoder, z_mean, z_log_var, test_labels, os.path.join(plots_dir, "traversals.png")
        )
    if not is_conditional(decoder):
        plot_manifold(decoder, os.path.join(plots_dir, "manifold.png"))
        return
    plot_class_samples(
        decoder, class_names, os.path.join(plots_dir, "class_samples.png"), seed=seed, prior=prior
    )
    if decoder.inputs[0].shape[-1] == 2:  # one manifold per class shows how style varies
        for label in range(len(class_names)) if plot_class is None else [plot_class]:
            plot_manifold(
                decoder,
                os.path.join(plots_dir, f"manifold_class{label}.png"),
                label,
                class_names[label],
            )
