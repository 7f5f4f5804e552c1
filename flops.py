"""FLOPs counted from a model's layer shapes: what a training step or an evaluation costs,
whatever the machine.

main.py prices the evaluation from them when it estimates a run's time; the benchmark
divides them by the seconds a step takes and compares that with a matrix-multiply peak
(benchmarks/peak.py).
"""

import math

TRAINING_FLOPS_PER_FORWARD = 3  # forward + backward (gradients for inputs and weights) ~ 3x forward


def _spatial(shape, data_format):
    """Product of the spatial sizes of a (batch, ..., channels) or (batch, channels, ...) shape."""
    dims = shape[1:-1] if data_format == "channels_last" else shape[2:]
    return math.prod(dims)


def _channels(shape, data_format):
    return shape[-1] if data_format == "channels_last" else shape[1]


def layer_multiply_adds(layer):
    """Multiply-adds of one image through `layer`: Conv2D, Conv2DTranspose and Dense; else 0.

    Conv2D: kernel height x width x input channels (per group) x filters, once per OUTPUT
    position. Conv2DTranspose: kernel height x width x input channels x filters, once per
    INPUT position (each input pixel scatters one kernel). Dense: inputs x units, once per
    position of any leading non-batch axes. Biases and activations are not counted.
    """
    from keras import layers

    if isinstance(layer, layers.Conv2DTranspose):
        kernel_h, kernel_w = layer.kernel_size
        in_shape = tuple(layer.input.shape)
        return (
            kernel_h
            * kernel_w
            * _channels(in_shape, layer.data_format)
            * layer.filters
            * _spatial(in_shape, layer.data_format)
        )
    if isinstance(layer, layers.Conv2D):
        kernel_h, kernel_w = layer.kernel_size
        in_shape, out_shape = tuple(layer.input.shape), tuple(layer.output.shape)
        in_channels = _channels(in_shape, layer.data_format) // layer.groups
        return (
            kernel_h
            * kernel_w
            * in_channels
            * layer.filters
            * _spatial(out_shape, layer.data_format)
        )
    if isinstance(layer, layers.Dense):
        in_shape = tuple(layer.input.shape)
        return in_shape[-1] * layer.units * math.prod(in_shape[1:-1])
    return 0


def _walk_layers(models):
    """Every layer of the given models, nested models opened, each shared layer once."""
    import keras

    seen, stack = set(), list(reversed(models))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if isinstance(layer, keras.Model):
            stack.extend(reversed(layer.layers))
        else:
            yield layer


def forward_flops(*models):
    """FLOPs (2 per multiply-add) of one image's forward pass through `models`, per layer too.

    Returns (total, {layer name: FLOPs}) counting only layers that do multiply-adds.
    """
    per_layer = {}
    for layer in _walk_layers(models):
        flops = 2 * layer_multiply_adds(layer)
        if flops:
            name = layer.name
            while name in per_layer:
                name += "_"
            per_layer[name] = flops
    return sum(per_layer.values()), per_layer


def pixel_head_flops(head, pixels):
    """FLOPs of one image's forward pass through a pixel head (pixel_head.py). Its spatial
    size is left open, so its layers' shapes cannot say it: each convolution keeps the
    image's size, so it costs its multiply-adds per position times the `pixels`."""
    from keras import layers

    return (
        2
        * pixels
        * sum(
            math.prod(layer.kernel_size) * layer.input.shape[-1] * layer.filters
            for layer in _walk_layers([head])
            if isinstance(layer, layers.Conv2D)
        )
    )


def decoder_flops(vae):
    """FLOPs of one decoding of an image: the decoder and, if the VAE has one, its pixel
    head."""
    forward = forward_flops(vae.decoder)[0]
    if getattr(vae, "pixel_head", None) is not None:
        forward += pixel_head_flops(vae.pixel_head, math.prod(vae.decoder.output.shape[1:-1]))
    return forward


def vae_flops(vae):
    """(forward FLOPs per image, training FLOPs per image, per-layer forward FLOPs) of a VAE
    (per layer: the encoder's and decoder's; the total counts a pixel head too)."""
    _, per_layer = forward_flops(vae.encoder, vae.decoder)
    forward = forward_flops(vae.encoder)[0] + decoder_flops(vae)
    return forward, TRAINING_FLOPS_PER_FORWARD * forward, per_layer
