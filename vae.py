"""The model: a convolutional encoder, the Sampling layer, a Conv2DTranspose decoder, and
the VAE that trains them on the negative ELBO (its loss below it), read top to bottom.

The encoder and decoder are plain Functional models of built-in layers, so their saved
files load anywhere with nothing but `import keras`. Sampling and the loss live in the
VAE, which needs this module imported to load (`import vae`). How training is made fast
(the dtype, the optimizer, XLA) is in training.py.

The builders take a `config` (settings.Config, settled: every value chosen), as nanoGPT's
model takes its GPTConfig: a new model setting is declared in settings.py and read here.

p(x|z), for each pixel and channel, from the decoder's layer "logits" (`likelihood`):
- "bernoulli": binary cross-entropy against the grey levels in [0, 1], one logit per value;
- "discretized_logistic": a probability for each of the 256 levels of 8-bit data, from a
  logistic's location and log-scale per pixel and channel (Kingma et al., 2016; Salimans et
  al., 2017, PixelCNN++), two numbers per value;
- "autoregressive": a mixture of logistics per pixel from pixel_head.py, which also reads
  the pixels above and to the left; the decoder's own logistic image trains beside it.
The decoder's output for users is the image in [0, 1]: the Bernoulli's probabilities, or
the logistic's location clipped to [0, 1] (each value's most likely level).
"""

import math

import keras
import numpy as np
from keras import layers, ops
from keras.saving import deserialize_keras_object, serialize_keras_object

import fused_adam  # noqa: F401  (registers the optimizer a saved VAE names)
import pixel_head
from data import CHANNELS
from distribution import scale_for_replicas
from pixel_head import LEVELS, discretized_logistic_log_probability
from settings import LIKELIHOOD_PARAMETERS, latent_map_side

PACKAGE = "vae"  # the namespace of our classes in saved .keras files
# The autoregressive likelihood's pixel head: its width, depth and logistics per pixel.
PIXEL_HEAD = {"width": 32, "depth": 2, "components": 5}
# The weight of the decoder's own image (its likelihood given z alone) in a pixel head's
# training loss (VAE.compute_loss). The head predicts most of a pixel from its neighbours
# and would learn to code the images without z; the decoder cannot, so weighted above the
# KL term, z keeps what the decoder needs to draw the picture. The higher the weight, the
# more z carries (and costs in the code length); towards 0 it carries nothing (posterior
# collapse). docs/colour.md gives what each weight reached.
DECODER_IMAGE_WEIGHT = 2.0
PARTS = ("encoder", "decoder", "pixel_head", "prior")  # the VAE's parts, saved in its config


def layer_options(config):
    """The hidden layers' compute dtype ("float32" or "mixed_bfloat16"; the heads stay
    float32) and the convolutions' options."""
    if config.dtype_policy == "auto":
        raise ValueError("choose the dtype policy first (training.resolve_dtype_policy)")
    hidden = {"dtype": config.dtype_policy}
    conv = {"padding": "same", "activation": "relu", "use_bias": config.conv_bias, **hidden}
    return hidden, conv


def build_encoder(config, num_classes=0):
    """x -> (z_mean, z_log_var): two stride-2 ReLU convolutions of `filters` and twice as
    many channels, then either `hidden_layers` dense layers of `hidden_units` (a vector z)
    or, with `spatial_latent`, one more convolution and a map of z at a quarter of the
    image's size, flattened (`latent_map_shape`).

    With `num_classes` (a conditional VAE) the one-hot label joins the first dense layer
    (or every position of the map), and the model takes `[image, one_hot_label]`."""
    hidden, conv = layer_options(config)
    shape = (config.image_size, config.image_size, CHANNELS[config.colour])
    inputs = [keras.Input(shape=shape, name="image")]
    x = layers.Conv2D(config.filters, 3, strides=2, **conv)(inputs[0])
    x = layers.Conv2D(2 * config.filters, 3, strides=2, **conv)(x)
    if num_classes:
        inputs.append(keras.Input(shape=(num_classes,), name="label"))
    if config.spatial_latent:
        if num_classes:
            x = layers.Concatenate(**hidden)([x, label_map(inputs[1], x.shape[1], hidden)])
        # A wider view for each position: it codes its own patch knowing the patches round it.
        x = layers.Conv2D(2 * config.filters, 3, **conv)(x)
        channels = latent_map_shape(config)[-1]
        # float32 heads: the KL term and the sampling noise are sensitive to rounding.
        heads = [layers.Conv2D(channels, 1, dtype="float32")(x) for _ in range(2)]
        z_mean, z_log_var = (
            layers.Flatten(name=name, dtype="float32")(head)
            for name, head in zip(("z_mean", "z_log_var"), heads, strict=True)
        )
        return keras.Model(
            inputs if num_classes else inputs[0], [z_mean, z_log_var], name="encoder"
        )
    x = layers.Flatten(**hidden)(x)
    if num_classes:
        x = layers.Concatenate(**hidden)([x, inputs[1]])
    # A smooth activation next to z: the dense layers hold most of the mapping between
    # image features and the few latent coordinates, and learn it faster than with relu.
    for _ in range(config.hidden_layers):
        x = layers.Dense(config.hidden_units, activation=config.dense_activation, **hidden)(x)
    # float32 heads: the KL term and the sampling noise are sensitive to rounding.
    z_mean = layers.Dense(config.latent_dim, name="z_mean", dtype="float32")(x)
    z_log_var = layers.Dense(config.latent_dim, name="z_log_var", dtype="float32")(x)
    return keras.Model(inputs if num_classes else inputs[0], [z_mean, z_log_var], name="encoder")


def latent_map_shape(config):
    """A spatial z's (rows, columns, channels): a quarter of the image's size on each side,
    with `latent_dim` split evenly over the positions."""
    side = latent_map_side(config.image_size)
    if config.latent_dim % (side * side):
        raise ValueError(
            f"a spatial latent at --image-size {config.image_size} has {side}x{side} positions: "
            f"--latent-dim must be a multiple of {side * side}, got {config.latent_dim}"
        )
    return side, side, config.latent_dim // (side * side)


def label_map(one_hot_label, side, hidden):
    """The one-hot label as a `side` x `side` map of as many channels, the same everywhere,
    to join a spatial layer."""
    repeated = layers.RepeatVector(side * side, **hidden)(one_hot_label)
    return layers.Reshape((side, side, one_hot_label.shape[-1]), **hidden)(repeated)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Sampling(layers.Layer):
    """The reparameterisation trick: z = z_mean + exp(z_log_var / 2) * epsilon."""

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        # A SeedGenerator keeps the noise repeatable and backend-neutral.
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(
            ops.shape(z_mean), dtype=z_mean.dtype, seed=self.seed_generator
        )
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


def build_decoder(config, num_classes=0):
    """z -> image in [0, 1]: the encoder's mirror image, with Conv2DTranspose.

    Its layer "logits" gives the likelihood's parameters (LIKELIHOOD_PARAMETERS per pixel
    and channel), which the loss reads; its layer "features" is what a pixel head reads.
    With `num_classes` the model takes `[z, one_hot_label]`."""
    if config.image_size % 4:
        raise ValueError(
            f"image_size must be divisible by 4 (two stride-2 layers), got {config.image_size}"
        )
    hidden, conv = layer_options(config)
    base_size, filters = config.image_size // 4, config.filters
    inputs = [keras.Input(shape=(config.latent_dim,), name="z")]
    if num_classes:
        inputs.append(keras.Input(shape=(num_classes,), name="label"))
    if config.spatial_latent:
        x = layers.Reshape(latent_map_shape(config), **hidden)(inputs[0])
        if num_classes:
            x = layers.Concatenate(**hidden)([x, label_map(inputs[1], base_size, hidden)])
        x = layers.Conv2D(2 * filters, 3, **conv)(x)
    else:
        x = layers.Concatenate(**hidden)(inputs) if num_classes else inputs[0]
        # Depth is cheap here (these layers are small beside the convolutions), and the map
        # from a few latent coordinates to a whole image needs it.
        for _ in range(config.hidden_layers):
            x = layers.Dense(config.hidden_units, activation=config.dense_activation, **hidden)(x)
        x = layers.Dense(
            base_size * base_size * 2 * filters, activation=config.dense_activation, **hidden
        )(x)
        x = layers.Reshape((base_size, base_size, 2 * filters), **hidden)(x)
    x = layers.Conv2DTranspose(2 * filters, 3, strides=2, **conv)(x)
    x = layers.Conv2DTranspose(filters, 3, strides=2, name="features", **conv)(x)
    image = likelihood_head(x, config)
    return keras.Model(inputs if num_classes else inputs[0], image, name="decoder")


def likelihood_head(x, config):
    """A decoder's last layers, on full-resolution features `x`: the layer "logits", whose
    output is the likelihood's parameters (what the loss reads), and the float32 image
    those parameters make (what users get)."""
    if config.likelihood not in LIKELIHOOD_PARAMETERS:
        raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOOD_PARAMETERS)}")
    channels, size = CHANNELS[config.colour], config.image_size
    if config.likelihood == "bernoulli":
        # The loss reads these logits directly (a stable cross-entropy); users get
        # probabilities. The logits compute in the hidden layers' dtype, as the layer reads the
        # full-resolution activations; the VAE casts them to float32 for the sigmoid and loss.
        logits = layers.Conv2DTranspose(
            channels, 3, padding="same", name="logits", dtype=config.dtype_policy
        )(x)
        return layers.Activation("sigmoid", name="image", dtype="float32")(logits)
    # The locations (first `channels`) and log-scales, in float32: bfloat16 keeps 8
    # significant bits, so between 0.5 and 1 it rounds a location by up to half a level.
    logits = layers.Conv2DTranspose(
        2 * channels, 3, padding="same", name="logits", dtype="float32"
    )(x)
    # The image: the locations clipped to [0, 1]. Keras has no layer that picks channels;
    # cropping the channel axis, seen as a third spatial axis, picks the first `channels`.
    both = layers.Reshape((size, size, 2 * channels, 1), dtype="float32")(logits)
    location = layers.Cropping3D(((0, 0), (0, 0), (0, channels)), dtype="float32")(both)
    location = layers.Reshape((size, size, channels), dtype="float32")(location)
    return layers.ReLU(max_value=1.0, name="image", dtype="float32")(location)


"""
## The loss: the negative ELBO, -log p(x|z) + KL(q(z|x) || p(z)), in nats per image
"""


def kl_divergence(z_mean, z_log_var):
    """KL(q(z|x) || N(0, I)) per image, summed over the latent dimensions."""
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GaussianPrior(layers.Layer):
    """A learned prior over all of z's dimensions together: p(z) = N(mean, (W^T W)^-1), W
    lower triangular with a positive diagonal, so that u = W (z - mean) is N(0, I) under it.
    N(0, I) draws each dimension (each position of a spatial map) on its own, where pictures'
    patches agree with one another: this prior learns how they go together, so that the
    patches of z drawn from it agree too, and what z carries costs fewer bits. It starts as
    N(0, I). Called on [z_mean, z_log_var], it gives KL(q(z|x) || p(z)) per image."""

    def build(self, input_shape):
        size = input_shape[0][-1]
        self.mean = self.add_weight(shape=(size,), initializer="zeros", name="mean")
        # W's entries below the diagonal (those above are not used) and its diagonal's logs.
        self.lower = self.add_weight(shape=(size, size), initializer="zeros", name="lower")
        self.log_diagonal = self.add_weight(shape=(size,), initializer="zeros", name="log_diagonal")

    def whitening(self):
        """W: z - mean -> u, N(0, I) under the prior."""
        return ops.tril(self.lower, -1) + ops.diag(ops.exp(self.log_diagonal))

    def call(self, inputs):
        z_mean, z_log_var = (ops.cast(tensor, "float32") for tensor in inputs)
        whitening = self.whitening()
        whitened_mean = ops.matmul(z_mean - self.mean, ops.transpose(whitening))
        # E_q ||W (z - mean)||^2 = ||W (z_mean - mean)||^2 + sum_ij W_ij^2 var_j, q diagonal.
        spread = ops.sum(ops.exp(z_log_var) * ops.sum(ops.square(whitening), axis=0), axis=-1)
        size = ops.shape(z_mean)[-1]
        expected_energy = ops.sum(ops.square(whitened_mean), axis=-1) + spread
        entropy_terms = ops.cast(size, "float32") + ops.sum(z_log_var, axis=-1)
        return 0.5 * (expected_energy - entropy_terms) - ops.sum(self.log_diagonal)


def latent_kl(vae, z_mean, z_log_var):
    """KL(q(z|x) || p(z)) per image: against N(0, I), or the VAE's learned prior."""
    if vae.prior is None:
        return kl_divergence(z_mean, z_log_var)
    return vae.prior([z_mean, z_log_var])


def reconstruction_nats(images, logits, likelihood="bernoulli"):
    """-log p(x|z) per image in nats, summed over pixels and channels, from the decoder's
    logits: Bernoulli cross-entropy, or the discretized logistic's -log P of the 8-bit values
    (its logits: the locations, then the log-scales, along the channel axis)."""
    logits = ops.cast(logits, "float32")  # bfloat16 logits would round the loss too
    images = ops.convert_to_tensor(images, "float32")  # numpy arrays too, on every backend
    if likelihood == "bernoulli":
        nats = ops.binary_crossentropy(images, logits, from_logits=True)
    else:
        location, log_scale = ops.split(logits, 2, axis=-1)
        nats = -discretized_logistic_log_probability(images, location, log_scale)
    return ops.sum(nats, axis=tuple(range(1, len(nats.shape))))


def decoded_image(logits, likelihood="bernoulli"):
    """The image the decoder outputs, from its float32 logits: probabilities or locations."""
    if likelihood == "bernoulli":
        return ops.sigmoid(logits)
    location, _ = ops.split(logits, 2, axis=-1)
    return ops.clip(location, 0.0, 1.0)


@keras.saving.register_keras_serializable(package=PACKAGE)
class VAE(keras.Model):
    """Encoder + Sampling + decoder, trained on the negative ELBO in nats per image by
    `compute_loss`, which Keras' own `train_step` and `test_step` call on every backend. A
    conditional VAE (its decoder reads `[z, label]`) is called on `(images, one_hot_labels)`."""

    def __init__(
        self, encoder, decoder, pixel_head, likelihood, beta=1.0, seed=None, prior=None, **kwargs
    ):
        super().__init__(**kwargs)
        check_parts(encoder, decoder, likelihood, pixel_head)
        self.encoder, self.decoder, self.pixel_head = encoder, decoder, pixel_head
        self.prior = prior  # None: N(0, I)
        if prior is not None and not prior.built:  # its weights exist before any are loaded
            latent_dim = encoder.outputs[0].shape[-1]
            prior.build([(None, latent_dim), (None, latent_dim)])
        self.beta, self.seed, self.likelihood = beta, seed, likelihood
        self.sampling = Sampling(seed=seed, name="sampling")
        self.conditional = len(decoder.inputs) == 2  # the decoder reads [z, label]
        self.num_classes = decoder.inputs[1].shape[-1] if self.conditional else 0
        self.channels = encoder.inputs[0].shape[-1]
        self.dimensions = math.prod(encoder.inputs[0].shape[1:])  # what bits/dim divide by
        self.mixture_components = mixture_components(pixel_head, self.channels)
        self.decoder_logits = logits_model(decoder, pixel_head)
        # Multiplies the KL term while training (beta-VAE, KL warm-up); validation uses 1.
        # A model variable, so a resumed run's warm-up goes on where it stopped; only the
        # first replica's update counts under tf.distribute (they are all the same).
        self.kl_weight = keras.Variable(
            beta, trainable=False, name="kl_weight", aggregation="only_first_replica"
        )
        self.kl_warmup_steps = 0  # the steps over which the weight rises to beta; 0: none
        self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

    def call(self, inputs, training=False):
        z_mean, z_log_var = self.encoder(inputs, training=training)
        z = self.sampling([z_mean, z_log_var])
        images = inputs[0] if self.conditional else inputs
        outputs = decode_for_loss(self, [z, inputs[1]] if self.conditional else z, images, training)
        return {**outputs, "z_mean": z_mean, "z_log_var": z_log_var}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        images = ops.cast(x[0] if self.conditional else x, "float32")
        reconstruction_loss = ops.mean(image_nats(self, images, y_pred))
        kl_loss = ops.mean(latent_kl(self, y_pred["z_mean"], y_pred["z_log_var"]))
        # Weighted by batch size so each epoch's figure is the exact mean per image.
        batch_size = ops.shape(images)[0]
        self.reconstruction_loss_tracker.update_state(reconstruction_loss, sample_weight=batch_size)
        self.kl_loss_tracker.update_state(kl_loss, sample_weight=batch_size)
        if not training:  # validation: the true negative ELBO, whatever the KL weight
            return scale_for_replicas(reconstruction_loss + kl_loss)
        loss = reconstruction_loss + ops.copy(self.kl_weight) * kl_loss  # before it rises
        if self.pixel_head is not None:
            loss = loss + decoder_image_loss(self, images, y_pred)
        raise_kl_weight(self)
        return scale_for_replicas(loss)

    def get_config(self):
        parts = {name: serialize_keras_object(getattr(self, name)) for name in PARTS}
        chosen = {"beta": self.beta, "seed": self.seed, "likelihood": self.likelihood}
        return {**super().get_config(), **parts, **chosen}

    @classmethod
    def from_config(cls, config):
        parts = {name: deserialize_keras_object(config.pop(name, None)) for name in PARTS}
        return cls(**parts, **config)


def start_kl_warmup(vae, steps):
    """Train the first `steps` steps with a KL weight rising linearly from 0 to beta: the
    encoder first spreads the images out in z, then the prior pulls them in gradually."""
    vae.kl_warmup_steps = int(steps)
    vae.kl_weight.assign(0.0 if steps else vae.beta)


def raise_kl_weight(vae):
    """One training step's rise of the KL weight during a warm-up. Inside the step, so the
    weight rises smoothly on every backend (a callback setting it each batch would force JAX
    to copy the whole state every step)."""
    if vae.kl_warmup_steps:
        raised = vae.kl_weight + vae.beta / vae.kl_warmup_steps
        vae.kl_weight.assign(ops.minimum(vae.beta, raised))


def prior_parameters(vae):
    """The learned prior's mean and W (GaussianPrior) as float64 numpy arrays; None for
    N(0, I)."""
    if vae.prior is None:
        return None
    mean = ops.convert_to_numpy(vae.prior.mean)
    return np.asarray(mean, np.float64), np.asarray(
        ops.convert_to_numpy(vae.prior.whitening()), np.float64
    )


def prior_colouring(vae):
    """The learned prior as z = mean + C noise, noise from N(0, I) (C = W^-1): (mean, C) in
    float64; None for N(0, I)."""
    parameters = prior_parameters(vae)
    if parameters is None:
        return None
    mean, whitening = parameters
    return mean, np.linalg.inv(whitening)


def prior_transform(vae):
    """A function taking noise from N(0, I) (numpy, images x latent) to z from the VAE's
    learned prior; None for N(0, I)."""
    colouring = prior_colouring(vae)
    if colouring is None:
        return None
    mean, matrix = colouring
    return lambda noise: (mean + np.asarray(noise, np.float64) @ matrix.T).astype(np.float32)


def prior_sampler(vae):
    """`prior_transform` as a model of one Dense layer, which loads with plain `import
    keras` (models/prior.keras): noise from N(0, I) -> z. None for N(0, I)."""
    colouring = prior_colouring(vae)
    if colouring is None:
        return None
    mean, matrix = colouring
    noise = keras.Input(shape=mean.shape, name="noise")
    dense = layers.Dense(len(mean), dtype="float32", name="noise_to_z")
    sampler = keras.Model(noise, dense(noise), name="prior")
    dense.set_weights([matrix.T.astype("float32"), mean.astype("float32")])
    return sampler


def logits_model(decoder, head):
    """The decoder up to what the loss reads (its logits, and with a pixel `head` the
    features the head reads), sharing its layers and so its weights."""
    outputs = decoder.get_layer("logits").output
    if head is not None:
        outputs = [outputs, decoder.get_layer("features").output]
    return keras.Model(decoder.input, outputs, name="decoder_logits")


def decode_for_loss(vae, decoder_inputs, images, training=False):
    """What the loss reads of `decoder_inputs` (z, or [z, label]): the decoder's float32
    logits, its image and, with a pixel head, each pixel's mixture given `images`."""
    outputs = vae.decoder_logits(decoder_inputs, training=training)
    logits = outputs[0] if vae.pixel_head is not None else outputs
    logits = ops.cast(logits, "float32")  # the image and the loss in float32
    decoded = {"reconstruction": decoded_image(logits, vae.likelihood), "logits": logits}
    if vae.pixel_head is not None:
        decoded["pixels"] = vae.pixel_head([outputs[1], images], training=training)
    return decoded


def image_nats(vae, images, decoded):
    """-log p(x|z) in nats per image, from `decode_for_loss`'s outputs."""
    if vae.pixel_head is None:
        return reconstruction_nats(images, decoded["logits"], vae.likelihood)
    return pixel_head.mixture_nats(images, decoded["pixels"], vae.mixture_components)


def decoder_image_loss(vae, images, decoded):
    """The decoder's own image, trained beside a pixel head with DECODER_IMAGE_WEIGHT: it is
    what the saved decoder draws in one pass, and what makes z carry the picture."""
    nats = reconstruction_nats(images, decoded["logits"], vae.likelihood)
    return DECODER_IMAGE_WEIGHT * ops.mean(nats)


def draw_images(vae, decoder_inputs, seed=0):
    """Images for `decoder_inputs` (z, or [z, one-hot label]; numpy): the decoder's image
    or, with a pixel head, a draw of every pixel in turn (pixel_head.sample_images)."""
    if vae.pixel_head is None:
        return np.asarray(vae.decoder.predict(decoder_inputs, verbose=0))
    # One batch, so one compiled shape: a smaller last batch would be compiled again.
    features = np.asarray(vae.decoder_logits.predict_on_batch(decoder_inputs)[1])
    return pixel_head.sample_images(
        vae.pixel_head, features, vae.channels, vae.mixture_components, seed
    )


def check_parts(encoder, decoder, likelihood, head):
    """Refuse an encoder, decoder and pixel head that do not make a VAE of `likelihood`."""
    if (likelihood == "autoregressive") != (head is not None):
        raise ValueError("the autoregressive likelihood, and it alone, needs a pixel head")
    expected = LIKELIHOOD_PARAMETERS[likelihood] * encoder.inputs[0].shape[-1]
    found = decoder.get_layer("logits").output.shape[-1]
    if found != expected:
        raise ValueError(
            f"the decoder's logits have {found} channels; a {likelihood} likelihood of these "
            f"images needs {expected}"
        )


def mixture_components(head, channels):
    """Logistics in each pixel's mixture of a pixel `head` (0 without one)."""
    if head is None:
        return 0
    return head.output.shape[-1] // pixel_head.parameter_count(channels, 1)


def start_likelihood_from_data(vae, images):
    """Start a discretized logistic where the `images` are: every value's location at its
    channel's mean level, its scale that of a logistic with the channel's spread (standard
    deviation x sqrt(3) / pi). From the decoder's first biases, 0, the logistic would
    spread over far more than the levels' range, and the first hundreds of steps would
    go into narrowing it rather than into the images. A Bernoulli model is left as built.
    """
    if vae.likelihood == "bernoulli":
        return
    sample = np.asarray(images[:10000], np.float64)  # plenty for two numbers per channel
    mean, spread = sample.mean(axis=(0, 1, 2)), sample.std(axis=(0, 1, 2))
    # A channel of one level has no spread; half a level keeps the scale finite.
    log_scale = np.log(np.maximum(spread, 0.5 / (LEVELS - 1)) * math.sqrt(3) / math.pi)
    bias = vae.decoder.get_layer("logits").bias
    bias.assign(np.concatenate([mean, log_scale]).astype(bias.dtype))
    if vae.pixel_head is not None:
        pixel_head.start_from_data(vae.pixel_head, images, vae.channels, vae.mixture_components)


def build_vae(config, num_classes=0):
    """The VAE that `config` describes (settled, its dtype policy chosen), reading the label
    of `num_classes` classes if config.conditional; every weight created at once, so that it
    can be saved and restored."""
    num_classes = num_classes if config.conditional else 0
    # In this order: the layers draw their first weights from Keras' seeded generator.
    encoder, decoder = build_encoder(config, num_classes), build_decoder(config, num_classes)
    head = None
    if config.likelihood == "autoregressive":
        head = pixel_head.build_pixel_head(
            channels=CHANNELS[config.colour],
            features=config.filters,
            dtype_policy=config.dtype_policy,
            **PIXEL_HEAD,
        )
    prior = None
    if config.prior == "gaussian":  # float32: its KL sums hundreds of squares
        prior = GaussianPrior(dtype="float32", name="prior")
    vae = VAE(
        encoder,
        decoder,
        prior=prior,
        beta=config.beta,
        seed=config.seed,
        likelihood=config.likelihood,
        pixel_head=head,
        name="vae",
    )
    images = ops.zeros((1, config.image_size, config.image_size, CHANNELS[config.colour]))
    vae((images, ops.zeros((1, num_classes))) if num_classes else images)
    return vae
