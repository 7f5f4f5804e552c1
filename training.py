"""How the VAE is trained, and trained fast: the model a config describes with its
optimizer and step-size schedule (`make_model`), the compute dtype chosen by timing a few
steps (`resolve_dtype_policy`) and where XLA pays (`jit_compile`). Adam in one kernel per
weight is fused_adam.py; the loss's scaling over replicas, distribution.py; the model and
its loss, vae.py.
"""

import dataclasses
import functools
import time

import keras
import numpy as np

import data
import vae as vae_module
from fused_adam import FusedAdam
from settings import Config, settled, steps_per_epoch

# bfloat16 is chosen only where its steps take less than this share of float32's: a
# closer call is not worth its rounding, and should not flip between runs on one machine.
BFLOAT16_SPEED_MARGIN = 0.9
# A conditional model's label width when no data says otherwise: that of the data sets.
DEFAULT_CLASSES = data.NUM_CLASSES


def build_model(config, num_classes=DEFAULT_CLASSES):
    """The VAE that `config` describes (settled here for its default colour where the data
    has not settled it), with every weight created, not compiled."""
    return vae_module.build_vae(resolve_dtype_policy(settled(config), num_classes), num_classes)


def make_model(config, train_size, num_classes=DEFAULT_CLASSES):
    """The VAE, compiled with FusedAdam. Two warm-ups, each over its own number of epochs:
    the step size rises from a tenth of --learning-rate before the cosine (if asked), and
    the KL weight rises from 0 to --beta."""
    config = settled(config, train_count=train_size)
    vae = build_model(config, num_classes)
    epoch_steps = steps_per_epoch(config, train_size)
    vae_module.start_kl_warmup(vae, config.kl_warmup_epochs * epoch_steps)
    total_steps = config.epochs * epoch_steps
    warmup_steps = min(config.lr_warmup_epochs * epoch_steps, total_steps)
    learning_rate = config.learning_rate
    if config.cosine_decay or warmup_steps:
        # Keras' CosineDecay does both: a linear warm-up from its first argument to
        # warmup_target, then the cosine to 0 (or, with alpha=1, a constant step size).
        learning_rate = keras.optimizers.schedules.CosineDecay(
            learning_rate / 10 if warmup_steps else learning_rate,
            decay_steps=max(1, total_steps - warmup_steps),
            alpha=0.0 if config.cosine_decay else 1.0,
            warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    vae.compile(optimizer=FusedAdam(learning_rate), jit_compile=jit_compile(vae))
    return vae


def jit_compile(vae):
    """What `compile(jit_compile=...)` should say for this VAE: XLA for a pixel head on
    TensorFlow, where it fuses the mixture's dozens of element-wise steps per value into a
    few passes; elsewhere Keras' own choice ("auto": XLA on JAX; TensorFlow's kernels on a
    CPU, which the other likelihoods were tuned on; none on PyTorch)."""
    if vae.pixel_head is not None and keras.backend.backend() == "tensorflow":
        return True
    return "auto"


def resolve_dtype_policy(config, num_classes=DEFAULT_CLASSES):
    """`config` (settled) with --dtype-policy auto replaced by the one that trains faster
    on this machine (`fastest_dtype_policy`); others unchanged."""
    config = settled(config)
    if config.dtype_policy != "auto":
        return config
    # Timed once per process and model shape: runs that differ only in their schedule, seed
    # or folders take the same dtype.
    shape = dataclasses.replace(
        config, **{name: getattr(Config(), name) for name in UNTIMED_SETTINGS}
    )
    return dataclasses.replace(config, dtype_policy=fastest_dtype_policy(shape, num_classes))


# Settings that leave a training step's work as it is.
UNTIMED_SETTINGS = (
    "dataset",
    "data_dir",
    "limit",
    "test_split",
    "beta",
    "kl_warmup_epochs",
    "epochs",
    "learning_rate",
    "lr_warmup_epochs",
    "cosine_decay",
    "seed",
    "iw_samples",
    "output_dir",
    "run_name",
    "fresh",
    "plots",
    "plot_class",
    "image_every",
    "evaluate_only",
)


@functools.cache
def fastest_dtype_policy(config, num_classes):
    """ "mixed_bfloat16" where this machine trains the VAE of `config` clearly faster in
    bfloat16 (a CPU with AVX512-BF16 or AMX and kernels that use them, a recent GPU), else
    "float32". Measured rather than read off the CPU's flags, because a CPU may report
    bfloat16 instructions that the kernels do not use."""
    seconds = {
        policy: step_seconds(dataclasses.replace(config, dtype_policy=policy), num_classes)
        for policy in ("float32", "mixed_bfloat16")
    }
    faster = seconds["mixed_bfloat16"] < BFLOAT16_SPEED_MARGIN * seconds["float32"]
    return "mixed_bfloat16" if faster else "float32"


def step_seconds(config, num_classes, rounds=3, steps=2):
    """Seconds per training step of the VAE of `config` on this machine, on blank images:
    the best of `rounds`."""
    model = vae_module.build_vae(config, num_classes)
    model.compile(optimizer=FusedAdam())
    size, channels = config.image_size, model.channels
    images = np.zeros((config.batch_size, size, size, channels), "float32")
    labels = np.zeros((config.batch_size, model.num_classes), "float32")
    batch = (images, labels) if model.conditional else images
    model.train_on_batch(batch)  # traces / compiles
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(batch)  # returns numbers: the step has finished
        best = min(best, (time.perf_counter() - started) / steps)
    return best
