"""Model: a convolutional encoder and decoder, the Sampling layer, the VAE that trains them,
the likelihoods of its loss and FusedAdam, the Adam it trains with.

The encoder and decoder are plain Functional models of built-in layers, so their saved
files load anywhere with nothing but `import keras`. Sampling and the loss live in the
VAE, which needs this module imported to load (`import vae`).

Two likelihoods p(x|z) for the pixels, each computed from the decoder's layer "logits":
- "bernoulli": binary cross-entropy against the grey levels in [0, 1], one logit per value;
- "discretized_logistic": a probability for each of the 256 levels of 8-bit data, from a
  logistic's location and log-scale per pixel and channel (Kingma et al., 2016; Salimans et
  al., 2017, PixelCNN++), two numbers per value.
The decoder's output for users is the image in [0, 1]: the Bernoulli's probabilities, or
the logistic's location clipped to [0, 1] (each value's most likely level).
"""

import functools
import math
import time

import keras
import numpy as np
from keras import layers, ops

import pixel_head
from pixel_head import LEVELS, discretized_logistic_log_probability

PACKAGE = "vae"  # the namespace of our classes in saved .keras files
# The decoder's "logits" give this many numbers per pixel and channel for each likelihood.
# "autoregressive" also reads the decoder's "logits" as a discretized logistic: its image.
LIKELIHOOD_PARAMETERS = {"bernoulli": 1, "discretized_logistic": 2, "autoregressive": 2}
# bfloat16 is chosen only where its steps take less than this share of float32's: a
# closer call is not worth its rounding, and should not flip between runs on one machine.
BFLOAT16_SPEED_MARGIN = 0.9
# The autoregressive likelihood's pixel head: its width, depth and logistics per pixel, and
# the weight of the decoder's own image in its training loss (VAE).
PIXEL_HEAD = {"width": 32, "depth": 2, "components": 5}
DECODER_IMAGE_WEIGHT = 0.1


def build_encoder(
    *,
    image_size,
    channels,
    latent_dim,
    filters,
    hidden_units,
    hidden_layers,
    dense_activation,
    conv_bias,
    num_classes=0,
    dtype_policy=None,
):
    """x -> (z_mean, z_log_var): two stride-2 ReLU convolutions, then `hidden_layers` dense
    layers of `hidden_units`.

    With `num_classes` (a conditional VAE) the one-hot label joins the first dense layer, and
    the model takes `[image, one_hot_label]`. `dtype_policy` ("mixed_bfloat16") sets the
    hidden layers' compute dtype; the heads stay float32. None: Keras' global policy.
    `conv_bias` gives the convolutions biases (the dense layers always have them).
    """
    hidden = {"dtype": dtype_policy}
    conv = {"padding": "same", "activation": "relu", "use_bias": conv_bias, **hidden}
    inputs = [keras.Input(shape=(image_size, image_size, channels), name="image")]
    x = layers.Conv2D(filters, 3, strides=2, **conv)(inputs[0])
    x = layers.Conv2D(2 * filters, 3, strides=2, **conv)(x)
    x = layers.Flatten(**hidden)(x)
    if num_classes:
        inputs.append(keras.Input(shape=(num_classes,), name="label"))
        x = layers.Concatenate(**hidden)([x, inputs[1]])
    # A smooth activation next to z: the dense layers hold most of the mapping between
    # image features and the few latent coordinates, and learn it faster than with relu.
    for _ in range(hidden_layers):
        x = layers.Dense(hidden_units, activation=dense_activation, **hidden)(x)
    # float32 heads: the KL term and the sampling noise are sensitive to rounding.
    z_mean = layers.Dense(latent_dim, name="z_mean", dtype="float32")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var", dtype="float32")(x)
    return keras.Model(inputs if num_classes else inputs[0], [z_mean, z_log_var], name="encoder")


def build_decoder(
    *,
    image_size,
    channels,
    latent_dim,
    filters,
    hidden_units,
    hidden_layers,
    dense_activation,
    conv_bias,
    likelihood,
    num_classes=0,
    dtype_policy=None,
):
    """z -> image in [0, 1]: the encoder's mirror image, with Conv2DTranspose.

    Its layer "logits" gives the `likelihood`'s parameters (LIKELIHOOD_PARAMETERS per pixel
    and channel), which the loss reads; the output is the image those parameters make.
    With `num_classes` the model takes `[z, one_hot_label]`. The other arguments as in
    `build_encoder`, here for every layer up to the logits (which keep their bias); the
    image is float32.
    """
    if image_size % 4:
        raise ValueError(
            f"image_size must be divisible by 4 (two stride-2 layers), got {image_size}"
        )
    base_size = image_size // 4
    hidden = {"dtype": dtype_policy}
    conv = {"padding": "same", "activation": "relu", "use_bias": conv_bias, **hidden}
    inputs = [keras.Input(shape=(latent_dim,), name="z")]
    x = inputs[0]
    if num_classes:
        inputs.append(keras.Input(shape=(num_classes,), name="label"))
        x = layers.Concatenate(**hidden)(inputs)
    # Depth is cheap here (these layers are small beside the convolutions), and the map
    # from a few latent coordinates to a whole image needs it.
    for _ in range(hidden_layers):
        x = layers.Dense(hidden_units, activation=dense_activation, **hidden)(x)
    x = layers.Dense(base_size * base_size * 2 * filters, activation=dense_activation, **hidden)(x)
    x = layers.Reshape((base_size, base_size, 2 * filters), **hidden)(x)
    x = layers.Conv2DTranspose(2 * filters, 3, strides=2, **conv)(x)
    x = layers.Conv2DTranspose(filters, 3, strides=2, name="features", **conv)(x)
    image = likelihood_head(
        x, image_size=image_size, channels=channels, likelihood=likelihood, dtype=dtype_policy
    )
    return keras.Model(inputs if num_classes else inputs[0], image, name="decoder")


def likelihood_head(x, *, image_size, channels, likelihood, dtype=None):
    """A decoder's last layers, on full-resolution features `x`: the layer "logits", whose
    output is the `likelihood`'s parameters (what the loss reads), and the float32 image
    those parameters make (what users get)."""
    if likelihood not in LIKELIHOOD_PARAMETERS:
        raise ValueError(f"likelihood must be one of {', '.join(LIKELIHOOD_PARAMETERS)}")
    if likelihood == "bernoulli":
        # The loss reads these logits directly (a stable cross-entropy); users get
        # probabilities. The logits compute in the hidden layers' dtype, as the layer reads the
        # full-resolution activations; the VAE casts them to float32 for the sigmoid and loss.
        logits = layers.Conv2DTranspose(channels, 3, padding="same", name="logits", dtype=dtype)(x)
        return layers.Activation("sigmoid", name="image", dtype="float32")(logits)
    # The locations (first `channels`) and log-scales, in float32: bfloat16 keeps 8
    # significant bits, so between 0.5 and 1 it rounds a location by up to half a level.
    logits = layers.Conv2DTranspose(
        2 * channels, 3, padding="same", name="logits", dtype="float32"
    )(x)
    # The image: the locations clipped to [0, 1]. Keras has no layer that picks channels;
    # cropping the channel axis, seen as a third spatial axis, picks the first `channels`.
    both = layers.Reshape((image_size, image_size, 2 * channels, 1), dtype="float32")(logits)
    location = layers.Cropping3D(((0, 0), (0, 0), (0, channels)), dtype="float32")(both)
    location = layers.Reshape((image_size, image_size, channels), dtype="float32")(location)
    return layers.ReLU(max_value=1.0, name="image", dtype="float32")(location)


def step_seconds(dtype_policy, batch_size, likelihood, rounds=3, steps=2, **architecture):
    """Seconds per training step of a VAE of this `architecture` (build_vae's arguments) and
    `likelihood` in `dtype_policy` on this machine, on blank images: the best of `rounds`."""
    model = build_vae(
        **architecture, beta=1.0, seed=0, likelihood=likelihood, dtype_policy=dtype_policy
    )
    model.compile(optimizer=FusedAdam())
    size = architecture["image_size"]
    images = np.zeros((batch_size, size, size, architecture["channels"]), "float32")
    labels = np.zeros((batch_size, architecture.get("num_classes", 0)), "float32")
    batch = (images, labels) if model.conditional else images
    model.train_on_batch(batch)  # traces / compiles
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(batch)  # returns numbers: the step has finished
        best = min(best, (time.perf_counter() - started) / steps)
    return best


@functools.cache
def fastest_dtype_policy(batch_size, likelihood, **architecture):
    """ "mixed_bfloat16" where this machine trains a VAE of this `architecture` clearly faster
    in bfloat16 (a CPU with AVX512-BF16 or AMX and kernels that use them, a recent GPU),
    else "float32". Measured rather than read off the CPU's flags, because a CPU may report
    bfloat16 instructions that the kernels do not use. Once per process and shape."""
    seconds = {
        policy: step_seconds(policy, batch_size, likelihood, **architecture)
        for policy in ("float32", "mixed_bfloat16")
    }
    faster = seconds["mixed_bfloat16"] < BFLOAT16_SPEED_MARGIN * seconds["float32"]
    return "mixed_bfloat16" if faster else "float32"


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


def kl_divergence(z_mean, z_log_var):
    """KL(q(z|x) || N(0, I)) per image, summed over the latent dimensions."""
    return -0.5 * ops.sum(1.0 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=-1)


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


def scale_for_replicas(loss):
    """Divide a replica's loss by the number of replicas under tf.distribute.

    tf.distribute sums the replicas' gradients; with each replica's mean loss divided by
    their number, the sum is the gradient of the whole batch's mean, as on one device.
    Keras does this for compiled losses but not for a hand-written `compute_loss`, and
    undoes it for the reported loss. On JAX (DataParallel) and on one device each step
    sees the whole batch: nothing to do.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss / replicas
    return loss


@keras.saving.register_keras_serializable(package=PACKAGE)
class VAE(keras.Model):
    """Encoder + Sampling + decoder, trained on the negative ELBO in nats per image.

    `compute_loss` is the one override: Keras' own `train_step` and `test_step` call
    it, so training and validation share it on every backend. A conditional VAE (its
    decoder takes `[z, label]`) is called on `(images, one_hot_labels)`. `likelihood` names
    p(x|z) (LIKELIHOOD_PARAMETERS); files saved before there was a choice used "bernoulli".

    The "autoregressive" likelihood has a `pixel_head` (pixel_head.py): it scores each pixel
    given z and the pixels before it. The decoder's own image, a logistic per value given z
    alone, is then trained beside it with weight DECODER_IMAGE_WEIGHT: it is what the saved
    decoder draws in one pass, and it gives z a reason to carry the picture, which a head
    that sees the neighbours can otherwise code without z.
    """

    def __init__(
        self,
        encoder,
        decoder,
        beta=1.0,
        seed=None,
        likelihood="bernoulli",
        pixel_head=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.pixel_head = pixel_head
        if (likelihood == "autoregressive") != (pixel_head is not None):
            raise ValueError("the autoregressive likelihood, and it alone, needs a pixel head")
        self.beta = beta
        self.seed = seed
        self.likelihood = likelihood
        expected = LIKELIHOOD_PARAMETERS[likelihood] * encoder.inputs[0].shape[-1]
        if decoder.get_layer("logits").output.shape[-1] != expected:
            raise ValueError(
                f"the decoder's logits have {decoder.get_layer('logits').output.shape[-1]} "
                f"channels; a {likelihood} likelihood of these images needs {expected}"
            )
        self.sampling = Sampling(seed=seed, name="sampling")
        # The decoder up to its logits (and, for the pixel head, its features), sharing its
        # layers and so its weights.
        outputs = decoder.get_layer("logits").output
        if pixel_head is not None:
            outputs = [outputs, decoder.get_layer("features").output]
        self.decoder_logits = keras.Model(decoder.input, outputs, name="decoder_logits")
        # Multiplies the KL term while training (beta-VAE, KL warm-up); validation uses 1.
        # A model variable, so a resumed run's warm-up goes on where it stopped. Only the
        # first replica's update counts under tf.distribute (they are all the same).
        self.kl_weight = keras.Variable(
            beta, trainable=False, name="kl_weight", aggregation="only_first_replica"
        )
        # KL warm-up (`start_kl_warmup`): the weight rises by beta / kl_warmup_steps each
        # training step, from 0 to beta. 0: no warm-up.
        self.kl_warmup_steps = 0
        self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

    @property
    def conditional(self):
        return len(self.decoder.inputs) == 2

    @property
    def num_classes(self):
        """Classes a conditional VAE's label tells apart (0 if it reads no label)."""
        return self.decoder.inputs[1].shape[-1] if self.conditional else 0

    @property
    def dimensions(self):
        """Values per image (pixels x channels): what bits per dimension divide by."""
        return math.prod(self.encoder.inputs[0].shape[1:])

    @property
    def mixture_components(self):
        """Logistics in each pixel's mixture (0 without a pixel head)."""
        if self.pixel_head is None:
            return 0
        channels = self.encoder.inputs[0].shape[-1]
        return self.pixel_head.output.shape[-1] // pixel_head.parameter_count(channels, 1)

    def call(self, inputs, training=False):
        z_mean, z_log_var = self.encoder(inputs, training=training)
        z = self.sampling([z_mean, z_log_var])
        images = inputs[0] if self.conditional else inputs
        outputs = self.decode_for_loss([z, inputs[1]] if self.conditional else z, images, training)
        return {**outputs, "z_mean": z_mean, "z_log_var": z_log_var}

    def decode_for_loss(self, decoder_inputs, images, training=False):
        """What the loss reads of `decoder_inputs` (z, or [z, label]): the decoder's float32
        logits, its image and, with a pixel head, each pixel's mixture given `images`."""
        outputs = self.decoder_logits(decoder_inputs, training=training)
        logits = outputs[0] if self.pixel_head is not None else outputs
        # The image and the loss in float32, whatever the dtype policy.
        logits = ops.cast(logits, "float32")
        decoded = {"reconstruction": decoded_image(logits, self.likelihood), "logits": logits}
        if self.pixel_head is not None:
            decoded["pixels"] = self.pixel_head([outputs[1], images], training=training)
        return decoded

    def reconstruction_nats(self, images, decoded):
        """-log p(x|z) in nats per image, from `decode_for_loss`'s outputs."""
        if self.pixel_head is not None:
            return pixel_head.mixture_nats(images, decoded["pixels"], self.mixture_components)
        return reconstruction_nats(images, decoded["logits"], self.likelihood)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        images = ops.cast(x[0] if self.conditional else x, "float32")
        reconstruction_loss = ops.mean(self.reconstruction_nats(images, y_pred))
        kl_loss = ops.mean(kl_divergence(y_pred["z_mean"], y_pred["z_log_var"]))
        # Weighted by batch size so each epoch's figure is the exact mean per image.
        batch_size = ops.shape(images)[0]
        self.reconstruction_loss_tracker.update_state(reconstruction_loss, sample_weight=batch_size)
        self.kl_loss_tracker.update_state(kl_loss, sample_weight=batch_size)
        kl_weight = (
            ops.copy(self.kl_weight) if training else 1.0
        )  # this step's, a copy: it changes below
        loss = reconstruction_loss + kl_weight * kl_loss
        if training and self.pixel_head is not None:
            decoder_image_nats = reconstruction_nats(images, y_pred["logits"], self.likelihood)
            loss = loss + DECODER_IMAGE_WEIGHT * ops.mean(decoder_image_nats)
        if training and self.kl_warmup_steps:
            # Inside the step, so the weight rises smoothly on every backend (a callback
            # setting it each batch would force JAX to copy the whole state every step).
            self.kl_weight.assign(
                ops.minimum(self.beta, self.kl_weight + self.beta / self.kl_warmup_steps)
            )
        return scale_for_replicas(loss)

    def start_from_data(self, images):
        """Start a discretized logistic where the `images` are: every value's location at its
        channel's mean level, its scale that of a logistic with the channel's spread (standard
        deviation x sqrt(3) / pi). From the decoder's first biases, 0, the logistic would
        spread over far more than the levels' range, and the first hundreds of steps would
        go into narrowing it rather than into the images. A Bernoulli model is left as built.
        """
        if self.likelihood == "bernoulli":
            return
        sample = np.asarray(images[:10000], np.float64)  # plenty for two numbers per channel
        mean, spread = sample.mean(axis=(0, 1, 2)), sample.std(axis=(0, 1, 2))
        # A channel of one level has no spread; half a level keeps the scale finite.
        log_scale = np.log(np.maximum(spread, 0.5 / (LEVELS - 1)) * math.sqrt(3) / math.pi)
        bias = self.decoder.get_layer("logits").bias
        bias.assign(np.concatenate([mean, log_scale]).astype(bias.dtype))
        if self.pixel_head is not None:
            pixel_head.start_from_data(
                self.pixel_head, images, sample.shape[-1], self.mixture_components
            )

    def start_kl_warmup(self, steps):
        """Train the first `steps` steps with a KL weight rising linearly from 0 to beta.

        The encoder first learns to spread the images out in z, and the KL term pulls them
        towards the prior gradually rather than from the first step.
        """
        self.kl_warmup_steps = int(steps)
        self.kl_weight.assign(0.0 if steps else self.beta)

    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "beta": self.beta,
            "seed": self.seed,
            "likelihood": self.likelihood,
            "pixel_head": (
                None
                if self.pixel_head is None
                else keras.saving.serialize_keras_object(self.pixel_head)
            ),
        }

    @classmethod
    def from_config(cls, config):
        for part in ("encoder", "decoder", "pixel_head"):
            if config.get(part) is not None:
                config[part] = keras.saving.deserialize_keras_object(config[part])
        return cls(**config)

    def draw(self, decoder_inputs, seed=0):
        """Images for `decoder_inputs` (z, or [z, one-hot label]; numpy): the decoder's image
        or, with a pixel head, a draw of every pixel in turn (pixel_head.sample_images)."""
        if self.pixel_head is None:
            return np.asarray(self.decoder.predict(decoder_inputs, verbose=0))
        features = self.decoder_logits.predict(decoder_inputs, verbose=0)[1]
        channels = self.encoder.inputs[0].shape[-1]
        return pixel_head.sample_images(
            self.pixel_head, features, channels, self.mixture_components, seed
        )


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, with each weight's update in one TensorFlow kernel on TensorFlow.

    Keras writes Adam's update as about ten element-wise operations, each a pass over the
    weights, and the dense layers next to `z` hold millions of them. TensorFlow's
    `ResourceApplyAdam` kernel computes the same update (same formula, same epsilon) in one
    pass. Other backends, and the cases that kernel does not cover (AMSGrad, sparse
    gradients), use Keras' own code.
    """

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=ops.power(beta_1, step),
            beta2_power=ops.power(beta_2, step),
            lr=ops.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=ops.cast(self.epsilon, dtype),
            grad=ops.cast(gradient, dtype),
        )


def jit_compile(vae):
    """What `compile(jit_compile=...)` should say for this VAE: XLA for a pixel head on
    TensorFlow, where it fuses the mixture's dozens of element-wise steps per value into a
    few passes; elsewhere Keras' own choice ("auto": XLA on JAX; TensorFlow's kernels on a
    CPU, which the other likelihoods were tuned on; none on PyTorch)."""
    if vae.pixel_head is not None and keras.backend.backend() == "tensorflow":
        return True
    return "auto"


def build_vae(*, beta, seed, likelihood, dtype_policy=None, **architecture):
    """The VAE with its encoder and decoder (build_encoder's keyword arguments) and
    `likelihood`, every weight created at once, so that it can be saved and restored."""
    encoder = build_encoder(**architecture, dtype_policy=dtype_policy)
    decoder = build_decoder(**architecture, likelihood=likelihood, dtype_policy=dtype_policy)
    head = None
    if likelihood == "autoregressive":
        head = pixel_head.build_pixel_head(
            channels=architecture["channels"],
            features=architecture["filters"],
            dtype_policy=dtype_policy,
            **PIXEL_HEAD,
        )
    vae = VAE(
        encoder, decoder, beta=beta, seed=seed, likelihood=likelihood, pixel_head=head, name="vae"
    )
    size, num_classes = architecture["image_size"], architecture.get("num_classes", 0)
    images = keras.ops.zeros((1, size, size, architecture["channels"]))
    vae((images, keras.ops.zeros((1, num_classes))) if num_classes else images)
    return vae
