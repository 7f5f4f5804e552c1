"""The pixel head: each pixel's 8-bit colour given z and the pixels above and to its left.

A decoder whose pixels are independent given z pays in full for every edge and for the
colour channels' agreement; a general-purpose coder like PNG predicts each pixel from its
neighbours first. The pixel head does the same inside the likelihood (PixelCNN, van den
Oord et al., 2016; PixelVAE, Gulrajani et al., 2016): a few convolutions that only see
pixels before the current one in reading order, added to the decoder's features, give each
pixel a mixture of discretized logistics whose colour channels depend on each other
linearly (PixelCNN++, Salimans et al., 2017). Training and evaluation score every pixel of
an image in one pass, since the image itself is the input; drawing an image goes pixel by
pixel (`sample_images`).

The head is a Functional model of built-in layers: `[features, image] -> parameters`, with
the spatial size left open so that drawing can run it on the few rows it needs.
"""

import keras
import numpy as np
from keras import layers, ops

LEVELS = 256  # 8-bit data: the values k / 255 for k = 0 ... 255
ABOVE_ROWS = 3  # the first layer sees this many rows above the pixel ...
ABOVE_COLUMNS = 7  # ... over this many columns centred on it ...
LEFT_COLUMNS = 3  # ... and this many pixels to its left in its own row


def discretized_logistic_log_probability(values, location, log_scale):
    """log P(value) of each 8-bit value (k / 255, k = 0 ... 255) under a logistic of this
    location and log-scale, discretized to the 256 levels.

    Level k takes the logistic's mass within half a level of k / 255; the two end levels
    take their whole tail as well, so the 256 probabilities sum to 1. With
    upper = (x + half - location) / scale and lower = (x - half - location) / scale:
        P = sigmoid(upper) - sigmoid(lower)
          = sigmoid(upper) * sigmoid(-lower) * (1 - exp(-(upper - lower)))
    computed in logs, which stays exact where both sigmoids are near 0 or near 1.
    """
    half_level = 0.5 / (LEVELS - 1)
    # A scale beyond exp(+-20) has no use at this resolution; the bound keeps exp finite.
    log_scale = ops.clip(log_scale, -20.0, 20.0)
    inverse_scale = ops.exp(-log_scale)
    centred = values - location
    upper = inverse_scale * (centred + half_level)
    lower = inverse_scale * (centred - half_level)
    log_below_upper = -ops.softplus(-upper)  # log sigmoid(upper): the lowest level's
    log_above_lower = -ops.softplus(lower)  # log (1 - sigmoid(lower)): the highest level's
    log_width = ops.log(-ops.expm1(-2.0 * half_level * inverse_scale))
    middle = log_below_upper + log_above_lower + log_width
    return ops.where(
        values < half_level,
        log_below_upper,
        ops.where(values > 1.0 - half_level, log_above_lower, middle),
    )


def parameter_count(channels, components):
    """Numbers per pixel for a mixture of `components` logistics over `channels` values:
    each component's weight, then for each channel a location and a log-scale, and one
    coefficient for each pair of channels (how an earlier channel moves a later one)."""
    return components * (1 + 2 * channels + channels * (channels - 1) // 2)


def build_pixel_head(*, channels, features, width, depth, components, dtype_policy=None):
    """`[features, image] -> parameters`: the decoder's full-resolution `features` and the
    image being scored give each pixel its mixture's parameters (`parameter_count`).

    The first layer reads the image through two shifted convolutions: `ABOVE_ROWS` rows
    strictly above (layers "above_1"), and `LEFT_COLUMNS` pixels strictly to the left
    ("left_1"), so a pixel never sees itself. Each further layer of `depth` widens that view
    by two rows and two columns, keeping the same rule (the gated PixelCNN's two stacks,
    without gates). `width` channels throughout; the parameters are float32.
    """
    hidden = {"dtype": dtype_policy}
    feature_input = keras.Input(shape=(None, None, features), name="features")
    image = keras.Input(shape=(None, None, channels), name="image")
    centred = layers.Rescaling(2.0, offset=-1.0, **hidden)(image)
    above = _shifted_convolution(centred, width, ABOVE_ROWS, ABOVE_COLUMNS, "above_1", hidden)
    left = _shifted_convolution(centred, width, 1, LEFT_COLUMNS, "left_1", hidden)
    from_z = layers.Conv2D(width, 1, name="from_features", **hidden)(feature_input)
    row = layers.Activation("gelu", **hidden)(layers.Add(**hidden)([above, left, from_z]))
    above = layers.Activation("gelu", **hidden)(above)
    for layer in range(2, depth + 1):
        # `above` at row i has seen rows before i only, so it may now read its own row i;
        # `row` at column j has seen columns before j only, so it may read its own column j.
        above = layers.ZeroPadding2D(((2, 0), (1, 1)), **hidden)(above)
        above = layers.Conv2D(width, 3, activation="gelu", name=f"above_{layer}", **hidden)(above)
        leftwards = layers.ZeroPadding2D(((0, 0), (2, 0)), **hidden)(row)
        leftwards = layers.Conv2D(width, (1, 3), name=f"left_{layer}", **hidden)(leftwards)
        downwards = layers.Conv2D(width, 1, **hidden)(above)
        row = layers.Activation("gelu", **hidden)(layers.Add(**hidden)([row, leftwards, downwards]))
    row = layers.Conv2D(width, 1, activation="gelu", **hidden)(row)
    parameters = layers.Conv2D(
        parameter_count(channels, components), 1, name="parameters", dtype="float32"
    )(row)
    return keras.Model([feature_input, image], parameters, name="pixel_head")


def _shifted_convolution(x, width, rows, columns, name, hidden):
    """A convolution of `rows` x `columns` whose output at a pixel reads only pixels before
    it: the rows above it (columns centred on it) or, with `rows` 1, the pixels to its left.
    Zero padding on the leading side, then dropping the last row or column, shifts it."""
    if rows > 1:
        padding, cropping = ((rows, 0), (columns // 2, columns // 2)), ((0, 1), (0, 0))
    else:
        padding, cropping = ((0, 0), (columns, 0)), ((0, 0), (0, 1))
    x = layers.ZeroPadding2D(padding, **hidden)(x)
    x = layers.Conv2D(width, (rows, columns), name=name, **hidden)(x)
    return layers.Cropping2D(cropping, **hidden)(x)


def start_from_data(head, images, channels, components):
    """Start every component's scale at that of the images' steps from one pixel to the
    next, per channel (standard deviation x sqrt(3) / pi), and its location at the left
    neighbour (offset 0). From zero biases each logistic would spread over the whole
    range of levels, and the first hundreds of steps would go into narrowing it."""
    sample = np.asarray(images[:2000], np.float64)
    steps = sample[:, :, 1:] - sample[:, :, :-1]
    log_scale = np.log(np.maximum(steps.std(axis=(0, 1, 2)), 0.5 / (LEVELS - 1)))
    log_scale += np.log(np.sqrt(3) / np.pi)
    pairs = parameter_count(channels, 1) - 1 - 2 * channels
    per_component = np.concatenate([np.zeros(channels), log_scale, np.zeros(pairs)])
    bias = head.get_layer("parameters").bias
    start = np.concatenate([np.zeros(components), np.tile(per_component, components)])
    bias.assign(start.astype(bias.dtype))


def rows_seen_above(head):
    """How many rows above a pixel the `head` reads: what drawing must keep around it."""
    rows, layer = 0, 1
    while True:
        try:
            kernel_rows = head.get_layer(f"above_{layer}").kernel_size[0]
        except ValueError:
            return rows
        rows += kernel_rows if layer == 1 else kernel_rows - 1
        layer += 1


def drawing_window_rows(head, height):
    """The rows each pass of a pixel-by-pixel draw runs the `head` on: the pixel's own and
    those it sees above (`rows_seen_above`), at most the image's `height`. Every pass takes
    as many, so the head is compiled once, not once per height."""
    return min(rows_seen_above(head) + 1, height)


def _split(parameters, channels, components):
    """The mixture's weights' logits (..., components) and, each (..., components,
    channels or pairs): locations, log-scales and the channels' coefficients in (-1, 1)."""
    logits = parameters[..., :components]
    per_component = ops.reshape(
        parameters[..., components:],
        (-1, *parameters.shape[1:-1], components, parameter_count(channels, 1) - 1),
    )
    locations = per_component[..., :channels]
    log_scales = per_component[..., channels : 2 * channels]
    coefficients = ops.tanh(per_component[..., 2 * channels :])
    return logits, locations, log_scales, coefficients


def _coupled(locations, coefficients, earlier_values, channel):
    """The location of `channel`, moved by each earlier channel's value times its
    coefficient (the pairs in order (1, 0), (2, 0), (2, 1), ...)."""
    first_pair = channel * (channel - 1) // 2
    location = locations[..., channel]
    for earlier in range(channel):
        location = location + coefficients[..., first_pair + earlier] * earlier_values[earlier]
    return location


def left_neighbours(images):
    """Each pixel's left neighbour (0 in the first column): where its locations start."""
    return ops.pad(images[:, :, :-1], ((0, 0), (0, 0), (1, 0), (0, 0)))


def mixture_nats(images, parameters, components):
    """-log P(image) in nats per image, summed over pixels and channels, under each pixel's
    mixture (`parameters`, as the head gives them) of the 8-bit `images` in [0, 1].

    The head's locations are offsets from the pixel's left neighbour: a head that knows
    nothing yet predicts "as before", which flat regions and smooth gradients mostly are,
    as PNG's Sub filter does."""
    parameters = ops.cast(parameters, "float32")
    images = ops.convert_to_tensor(images, "float32")
    channels = images.shape[-1]
    logits, locations, log_scales, coefficients = _split(parameters, channels, components)
    locations = locations + left_neighbours(images)[..., None, :]
    values = images[..., None, :]  # one copy for each component
    earlier = [values[..., channel] for channel in range(channels)]
    coupled = ops.stack(
        [_coupled(locations, coefficients, earlier, channel) for channel in range(channels)],
        axis=-1,
    )
    log_probability = ops.sum(
        discretized_logistic_log_probability(values, coupled, log_scales), axis=-1
    )
    per_pixel = ops.logsumexp(log_probability + ops.log_softmax(logits, axis=-1), axis=-1)
    return -ops.sum(per_pixel, axis=tuple(range(1, len(per_pixel.shape))))


def sample_pixel(parameters, left, channels, components, rng):
    """One draw of each pixel's 8-bit value from its mixture (numpy `parameters` of shape
    (pixels, parameter_count), `left`: the left neighbours' values, (pixels, channels)): a
    component by the Gumbel-max trick, then each channel in turn from its logistic, moved by
    the channels already drawn."""
    logits, locations, log_scales, coefficients = (
        np.asarray(part, np.float64) for part in _split(parameters, channels, components)
    )
    locations = locations + np.asarray(left, np.float64)[:, None, :]
    gumbel = -np.log(-np.log(rng.uniform(1e-9, 1.0, logits.shape)))
    chosen = np.argmax(logits + gumbel, axis=-1)[:, None, None]
    locations, log_scales, coefficients = (
        np.take_along_axis(part, chosen, axis=1)[:, 0]
        for part in (locations, log_scales, coefficients)
    )
    values = []
    for channel in range(channels):
        location = _coupled(locations, coefficients, values, channel)
        uniform = rng.uniform(1e-5, 1.0 - 1e-5, location.shape)
        scale = np.exp(np.clip(log_scales[:, channel], -20.0, 20.0))
        value = location + scale * (np.log(uniform) - np.log1p(-uniform))
        values.append(np.round(np.clip(value, 0.0, 1.0) * (LEVELS - 1)) / (LEVELS - 1))
    return np.stack(values, axis=-1)


def sample_images(head, features, channels, components, seed=0):
    """Images drawn pixel by pixel in reading order from the `head`, given the decoder's
    `features` (numpy, (count, size, size, feature channels)): float32 in [0, 1].

    Each pixel runs the head on the rows it can see (`rows_seen_above`) rather than on the
    whole image, so a 32x32 image costs 1,024 small passes. Each pass goes through
    `predict_on_batch`, which compiles the head for the passes' shape, where a direct call
    would run it layer by layer; the head must then be on one device (as main.py's copy
    and a loaded model are)."""
    rng = np.random.default_rng(seed)
    count, height, width = features.shape[:3]
    images = np.zeros((count, height, width, channels), np.float32)
    reach = rows_seen_above(head)
    # A row near the top is drawn from the image's first rows, as a row reads none below it.
    rows = drawing_window_rows(head, height)
    for row in range(height):
        top = max(0, row - reach)
        window_features = features[:, top : top + rows]
        for column in range(width):
            parameters = head.predict_on_batch([window_features, images[:, top : top + rows]])
            parameters = np.asarray(parameters)[:, row - top, column]
            left = images[:, row, column - 1] if column else np.zeros((count, channels))
            images[:, row, column] = sample_pixel(parameters, left, channels, components, rng)
    return images
