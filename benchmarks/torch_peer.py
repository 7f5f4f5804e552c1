"""The benchmark's peer: the program's default grey model written in plain PyTorch.

The same layers as vae.build_encoder and vae.build_decoder for a vector z: two 3x3 stride-2
ReLU convolutions without biases, `hidden_layers` dense layers of `hidden_units` on each
side of z (the decoder's last one to the map the transposed convolutions start from), two
stride-2 ReLU transposed convolutions without biases and a 3x3 one to a Bernoulli logit per
pixel; the loss is the cross-entropy summed over the pixels plus the KL divergence from
N(0, I), trained with Adam. The heads and the loss stay float32 under bfloat16 autocast, as
the program's do under mixed_bfloat16.

It trains as the program's backend rows do (benchmarks/workers.py): whole epochs over the
images in batches, reshuffled each epoch, the last batch smaller, validation on the test
images after each epoch; an epoch's seconds leave the validation out. Its FLOPs are counted
from its own layers' shapes, with flops.py's rules, so that the two counts can be compared.

It needs torch; the benchmark checks that it is installed before importing this module.
"""

import dataclasses
import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from flops import TRAINING_FLOPS_PER_FORWARD

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}  # None: no autocast
MODES = ("eager", "compiled")


@dataclasses.dataclass(frozen=True)
class PeerShape:
    """The model's sizes; the defaults are the program's default grey model's."""

    image_size: int = 32
    channels: int = 1
    filters: int = 24
    hidden_units: int = 256
    hidden_layers: int = 3
    latent_dim: int = 2
    dense_activation: str = "gelu"


def shape_of(config):
    """The PeerShape of a settled settings.Config (a grey or colour image, a vector z)."""
    from data import CHANNELS

    return PeerShape(
        image_size=config.image_size,
        channels=CHANNELS[config.colour],
        filters=config.filters,
        hidden_units=config.hidden_units,
        hidden_layers=config.hidden_layers,
        latent_dim=config.latent_dim,
        dense_activation=config.dense_activation,
    )


def dense_stack(sizes, activation):
    """Dense layers from sizes[0] through each of sizes[1:], each followed by `activation`."""
    layers = []
    for inputs, outputs in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(inputs, outputs), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class PeerVAE(nn.Module):
    """Encoder, sampling and decoder; called on NCHW images, it returns (logits, z_mean,
    z_log_var), the logits and heads in float32."""

    def __init__(self, shape=PeerShape()):
        super().__init__()
        small, large = shape.filters, 2 * shape.filters
        self.base = shape.image_size // 4
        flat = self.base * self.base * large
        hidden = [shape.hidden_units] * shape.hidden_layers
        # padding 1 and, transposed, output_padding 1 give TensorFlow's "same" sizes.
        self.encoder = nn.Sequential(
            nn.Conv2d(shape.channels, small, 3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(small, large, 3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.Flatten(),
            dense_stack([flat, *hidden], shape.dense_activation),
        )
        self.z_mean = nn.Linear(shape.hidden_units, shape.latent_dim)
        self.z_log_var = nn.Linear(shape.hidden_units, shape.latent_dim)
        self.decoder_dense = dense_stack([shape.latent_dim, *hidden, flat], shape.dense_activation)
        self.decoder_maps = nn.Sequential(
            nn.ConvTranspose2d(large, large, 3, 2, padding=1, output_padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(large, small, 3, 2, padding=1, output_padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(small, shape.channels, 3, 1, padding=1),
        )
        for module in self.modules():  # Keras' initializers: Glorot uniform, zero biases
            if isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, images):
        features = self.encoder(images)
        # The heads, the noise and the logits in float32, as the program keeps them.
        with torch.autocast("cpu", enabled=False):
            features = features.float()
            z_mean, z_log_var = self.z_mean(features), self.z_log_var(features)
            z = z_mean + torch.exp(0.5 * z_log_var) * torch.randn_like(z_mean)
        maps = self.decoder_dense(z).unflatten(1, (-1, self.base, self.base))
        logits = self.decoder_maps(maps.contiguous(memory_format=torch.channels_last))
        return logits.float(), z_mean, z_log_var


def negative_elbo(images, logits, z_mean, z_log_var):
    """The batch's mean negative ELBO in nats per image: the Bernoulli cross-entropy summed
    over the pixels plus KL(q(z|x) || N(0, I))."""
    nats = functional.binary_cross_entropy_with_logits(logits, images, reduction="none")
    kl = -0.5 * torch.sum(1.0 + z_log_var - z_mean.square() - z_log_var.exp(), dim=1)
    return (nats.flatten(1).sum(dim=1) + kl).mean()


"""
## FLOPs and weights, from the model's own layers
"""


def multiply_adds(module, inputs, output):
    """Multiply-adds of one image through `module`, by flops.layer_multiply_adds' rules:
    a convolution's kernel once per output position, a transposed one's once per input
    position, a dense layer's inputs x outputs; 0 for anything else."""
    if isinstance(module, nn.ConvTranspose2d):
        kernel = math.prod(module.kernel_size)
        return kernel * module.in_channels * module.out_channels * math.prod(inputs.shape[2:])
    if isinstance(module, nn.Conv2d):
        per_position = math.prod(module.kernel_size) * module.in_channels // module.groups
        return per_position * module.out_channels * math.prod(output.shape[2:])
    if isinstance(module, nn.Linear):
        return module.in_features * module.out_features
    return 0


def peer_flops(model, shape):
    """(forward FLOPs per image, training FLOPs per image): 2 per multiply-add, counted on
    one image's pass through `model`, training as flops.py counts it."""
    counts = []

    def count(module, inputs, output):
        counts.append(multiply_adds(module, inputs[0], output))

    hooks = [module.register_forward_hook(count) for module in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros(1, shape.channels, shape.image_size, shape.image_size))
    finally:
        for hook in hooks:
            hook.remove()
    forward = 2 * sum(counts)
    return forward, TRAINING_FLOPS_PER_FORWARD * forward


def parameter_count(model):
    return sum(parameter.numel() for parameter in model.parameters())


"""
## Training, timed
"""


def as_tensor(images):
    """NHWC numpy images as the NCHW float32 tensor the model reads, channels-last in
    memory (the layout oneDNN's convolutions run fastest in, as the program's NHWC)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return tensor.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)


def make_steps(model, optimizer, dtype, compiled):
    """(training step, validation loss) on a batch, under `dtype`'s autocast, compiled
    with torch.compile if asked (it compiles on its first call)."""
    autocast = DTYPES[dtype]

    def loss_of(images):
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            return negative_elbo(images, *model(images))

    if compiled:
        loss_of = torch.compile(loss_of)

    def train_step(images):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(images)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def validation_loss(images):
        with torch.no_grad():
            return loss_of(images)

    return train_step, validation_loss


def make_optimizer(model, learning_rate):
    """Adam, as one fused kernel per weight where this torch build has one for the CPU (as
    the program's FusedAdam), else its multi-tensor form."""
    try:
        return torch.optim.Adam(model.parameters(), learning_rate, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(model.parameters(), learning_rate, foreach=True)


def epoch_loss(step, images, order, batch_size):
    """The mean of `step`'s loss over `images` in batches of `batch_size` (the last one
    smaller), taken in `order`."""
    total = torch.zeros(())
    for start in range(0, len(images), batch_size):
        batch = images[order[start : start + batch_size]]
        total += step(batch) * len(batch)
    return float(total) / len(images)


def train_timed(model, train, test, batch_size, epochs, dtype, compiled, learning_rate=1e-3):
    """Train `model` for `epochs` on `train`, validating on `test` after each epoch, both
    NCHW tensors: a record per epoch (training wall and CPU seconds, validation excluded;
    its losses). On a machine shared with other work, the CPU seconds leave theirs out."""
    optimizer = make_optimizer(model, learning_rate)
    train_step, validation_loss = make_steps(model, optimizer, dtype, compiled)
    in_order = torch.arange(len(test))
    records = []
    for epoch in range(epochs):
        started, cpu_started = time.perf_counter(), time.process_time()
        loss = epoch_loss(train_step, train, torch.randperm(len(train)), batch_size)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        validation_started = time.perf_counter()
        val_loss = epoch_loss(validation_loss, test, in_order, batch_size)
        records.append(
            {
                "epoch": epoch + 1,
                "epoch_seconds": seconds,
                "epoch_cpu_seconds": cpu_seconds,
                "validation_seconds": time.perf_counter() - validation_started,
                "loss": loss,
                "val_loss": val_loss,
            }
        )
    return records


def time_variant(shape, train, test, batch_size, epochs, variant, seed=1, learning_rate=1e-3):
    """One (dtype, mode) `variant` trained from fresh weights: images/s over its last epoch
    (the first one compiles), or the error in one line where it failed (torch.compile may)."""
    dtype, mode = variant
    torch.manual_seed(seed)
    model = PeerVAE(shape).to(memory_format=torch.channels_last)
    compiled = mode == "compiled"
    try:
        records = train_timed(
            model, train, test, batch_size, epochs, dtype, compiled, learning_rate
        )
    except Exception as error:  # noqa: BLE001  (compilation fails in many ways; say how)
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        return {"dtype": dtype, "mode": mode, "error": f"{type(error).__name__}: {first_line}"}
    last = records[-1]["epoch_seconds"]
    return {
        "dtype": dtype,
        "mode": mode,
        "epochs": records,
        "seconds_per_epoch": last,
        "train_images_per_second": len(train) / last,
        "train_images_per_cpu_second": len(train) / records[-1]["epoch_cpu_seconds"],
        "final_val_loss": records[-1]["val_loss"],
    }


def run_peer(
    shape, train_images, test_images, batch_size, epochs, seed=1, learning_rate=1e-3, variants=None
):
    """Every dtype and mode (or the (dtype, mode) pairs of `variants`) on the same images:
    the model's FLOPs and weights, each variant's timing, torch's version and threads."""
    train, test = as_tensor(train_images), as_tensor(test_images)
    model = PeerVAE(shape)
    forward, training = peer_flops(model, shape)
    variants = variants or [(dtype, mode) for dtype in DTYPES for mode in MODES]
    results = []
    for dtype, mode in variants:
        print(f"[peer] {dtype} {mode}: {len(train)} training images", flush=True)
        timed = time_variant(
            shape, train, test, batch_size, epochs, (dtype, mode), seed, learning_rate
        )
        results.append(timed)
        print(f"[peer] {dtype} {mode}: {describe_variant(results[-1])}", flush=True)
    return {
        "parameters": parameter_count(model),
        "forward_flops_per_image": forward,
        "train_flops_per_image": training,
        "train_images": len(train),
        "batch_size": batch_size,
        "variants": results,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def describe_variant(result):
    if "error" in result:
        return f"failed: {result['error']}"
    return f"{result['train_images_per_second']:,.0f} images/s"
