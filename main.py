"""Train a convolutional Variational Autoencoder (VAE) on MNIST, CIFAR-10 or your own images.

    python main.py                                  # MNIST via Keras' download cache
    python main.py --data-dir path/to/mnist         # offline, from the four original IDX files
    python main.py --dataset fashion_mnist --conditional   # clothes, one decoder per class
    python main.py --dataset cifar10                # colour photos (docs/colour.md)
    python main.py --dataset folder --data-dir DIR  # your own PNG / JPEG images
    python main.py --evaluate-only                  # evaluate and plot the saved model again
    python main.py --distribute mirrored            # every local GPU (docs/distributed.md)
    KERAS_BACKEND=jax python main.py                # or torch: the same program on another backend
    python main.py --help                           # every setting and its default

MNIST digits are padded from 28x28 to 32x32 and scaled to [0, 1]. A conv encoder maps
each image to z_mean and z_log_var; the Sampling layer draws z with the
reparameterisation trick; a Conv2DTranspose decoder maps z back to the parameters of
p(x|z), for each pixel and channel: Bernoulli probabilities (grey images), or a discretized
logistic over the 256 levels of 8-bit colour. The VAE minimises -log p(x|z) summed over the
pixels plus the KL divergence: the negative ELBO, in nats per image (and bits per
dimension). The test images are the validation set.

Outputs (under --output-dir, default here):
    checkpoint.keras                 best epoch so far (lowest val_loss)
    logs/<run name>/                 TensorBoard: curves, pictures, test figures, the Projector
    models/vae.keras                 the whole VAE (load after `import vae`)
    models/encoder.keras, decoder.keras   load with plain `import keras`
    models/metrics.json              test negative ELBO and importance-weighted NLL
    plots/*.png                      latent space, manifold, reconstructions, samples, ...
    plots/explorer.html              the latent-space explorer: decodes wherever you point
    backup/                          state of an unfinished run; the same command resumes it

This file is the settings, the command line and the story of a run, in the order the
program runs: Config (every setting, and the flags made from it), Data, Model, Training
(`train`; `evaluate_saved_model` for --evaluate-only), Evaluation (`report`, and
`show_in_projector`), Plots and Command line (`main`). The parts it tells the story with
live beside it: data.py (reading and checking the images), vae.py (the model), callbacks.py
(the Keras callbacks of a run), run_folder.py (the output folder's lock, resuming, and
saves that are never half-written), evaluation.py, plotting.py, explorer.py (the explorer
page), projector.py (TensorBoard's Projector), flops.py (what a step costs, for the time
estimate) and distribution.py (--distribute).
"""

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import signal
import sys
from dataclasses import dataclass, field

# TensorFlow turns its oneDNN kernels on by default only on some Intel CPUs, although they
# run this model's convolutions faster on other x86 CPUs too (docs/performance.md). Read when
# TensorFlow is first imported, so it is set before `import keras`; TF_ENABLE_ONEDNN_OPTS=0
# in the environment turns it off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import keras  # noqa: E402  (after the setting above)
import numpy as np

import data
import distribution
import evaluation
import explorer
import plotting
from callbacks import (
    AtomicModelCheckpoint,
    FiniteBackupAndRestore,
    LogBitsPerDimension,
    LogKLWeight,
    StopOnSignal,
    TensorBoardImages,
    Terminated,
    TimeEstimate,
    all_finite,
    plural,
    raise_terminated,
)
from data import DataError
from flops import decoder_flops, forward_flops, vae_flops
from projector import projector_sample, write_projector
from run_folder import (
    RunError,
    check_writable,
    finish_run,
    load_model_file,
    output_lock,
    prepare_run,
    read_metrics,
    read_progress,
    save_models,
    write_atomically,
)
from vae import (
    LIKELIHOOD_PARAMETERS,
    FusedAdam,
    build_vae,
    fastest_dtype_policy,
    jit_compile,
)

"""
## Config

One dataclass holds every setting, each with a comment on why it has its value.
`parse_args` makes a command-line flag of each field, with that comment as its help.
"""


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive number, got {text}")
    return value


def fraction(text):
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def setting(default, help, type=None, choices=None):
    """A Config field that also describes its command-line flag."""
    return field(default=default, metadata={"help": help, "type": type, "choices": choices})


# Settings whose best value depends on the images' colour, for a run that leaves them unset:
# grey digits and clothes are drawn in a 2-D latent space with the classic Bernoulli loss,
# in large batches; colour pictures need more than two numbers, a likelihood of their 8-bit
# values that reads each pixel's neighbours, and smaller batches, as colour data sets are
# often a few thousand images. Epochs: at least `epochs`, and enough for `steps` steps.
COLOUR_DEFAULTS = {
    "grey": {
        "latent_dim": 2,
        "likelihood": "bernoulli",
        "batch_size": 256,
        "learning_rate": 4e-3,
        "epochs": 14,
        "steps": 3000,
    },
    "rgb": {
        "latent_dim": 128,
        "likelihood": "autoregressive",
        "batch_size": 64,
        "learning_rate": 2e-3,
        "epochs": 1,
        "steps": 1300,
    },
}
# An automatic batch size is halved, down to MIN_BATCH_SIZE images, until an epoch makes at
# least MIN_EPOCH_STEPS steps: many epochs of a few large steps learn less for their time.
MIN_EPOCH_STEPS, MIN_BATCH_SIZE = 16, 16
# TensorBoard's pictures about this many times in a run, when --image-every is left unset.
IMAGE_LOGS = 20


@dataclass
class Config:
    # Data
    dataset: str = setting(
        "mnist",
        "which images to learn: folder is a folder of your own images (--data-dir)",
        choices=list(data.DATASETS),
    )
    data_dir: str = setting(
        None,
        "offline data: the four IDX files (or mnist.npz); CIFAR-10's cifar-10-batches-py, its "
        "parent or cifar-10-python.tar.gz; for --dataset folder, the folder of images (one "
        "sub-folder per class, or none). Default: Keras' download",
    )
    limit: int = setting(
        None, "use only the first N training and N // 6 test images (quick tries)", positive_int
    )
    image_size: int = setting(
        32,
        "the model's image size, a multiple of 4 (two stride-2 layers): MNIST's 28x28 digits "
        "are padded to it, other images resized",
        positive_int,
    )
    colour: str = setting(
        "auto",
        "grey (one channel) or rgb (three): images are converted to it; auto keeps the data's "
        "own (a folder is grey if every image is)",
        choices=["auto", "grey", "rgb"],
    )
    test_split: float = setting(
        0.2,
        "--dataset folder: the share of its images held out, by --seed, as the test set",
        fraction,
    )
    # Model
    latent_dim: int = setting(
        None,
        f"dimensions of z; default {COLOUR_DEFAULTS['grey']['latent_dim']} for grey images "
        "(the latent space drawn directly), "
        f"{COLOUR_DEFAULTS['rgb']['latent_dim']} for colour ones (above 2 the plots show "
        "principal components and traversals)",
        positive_int,
    )
    likelihood: str = setting(
        "auto",
        "p(x|z): bernoulli (cross-entropy of grey levels, the classic MNIST loss) or "
        "discretized_logistic (a probability for each of the 256 levels of 8-bit data); auto: "
        f"{COLOUR_DEFAULTS['grey']['likelihood']} for grey images, "
        f"{COLOUR_DEFAULTS['rgb']['likelihood']} for colour ones",
        choices=["auto", *LIKELIHOOD_PARAMETERS],
    )
    filters: int = setting(
        24, "channels of the first convolution (the second has twice as many)", positive_int
    )
    hidden_units: int = setting(256, "width of the dense layers next to z", positive_int)
    hidden_layers: int = setting(
        3,
        "dense layers on each side of z: they are small, so depth there costs little "
        "arithmetic, and it lets a few latent coordinates bend into a whole image",
        positive_int,
    )
    dense_activation: str = setting(
        "gelu",
        "activation of the dense layers next to z (the convolutions use relu)",
        choices=["gelu", "relu", "silu"],
    )
    conv_bias: bool = setting(
        False,
        "give the hidden convolutions biases; off by default: a ReLU after a convolution needs no "
        "bias to learn well, and adding and differentiating one costs a pass over every pixel",
    )
    conditional: bool = setting(
        False, "conditional VAE: encoder and decoder also read the one-hot class label"
    )
    beta: float = setting(
        1.0,
        "weight of the KL term while training (beta-VAE); val_loss always uses 1",
        non_negative_float,
    )
    kl_warmup_epochs: int = setting(
        1,
        "raise the KL weight step by step from 0 to --beta over this many epochs, so the "
        "encoder spreads the images out in z before the prior pulls them in",
        non_negative_int,
    )
    # Training
    epochs: int = setting(
        None,
        "passes over the training set; default: enough for "
        f"{COLOUR_DEFAULTS['grey']['steps']:,} steps and at least "
        f"{COLOUR_DEFAULTS['grey']['epochs']} epochs for grey images, "
        f"{COLOUR_DEFAULTS['rgb']['steps']:,} steps for colour ones, so a small data set still "
        "gets enough steps to learn",
        positive_int,
    )
    batch_size: int = setting(
        None,
        "images per gradient step; default "
        f"{COLOUR_DEFAULTS['grey']['batch_size']} for grey images (large batches keep a CPU's "
        f"vector units busy), {COLOUR_DEFAULTS['rgb']['batch_size']} for colour ones, halved "
        f"for a data set of fewer than {MIN_EPOCH_STEPS} batches",
        positive_int,
    )
    learning_rate: float = setting(
        None,
        "Adam's step size after the warm-up; default "
        f"{COLOUR_DEFAULTS['grey']['learning_rate']:g} for grey images, "
        f"{COLOUR_DEFAULTS['rgb']['learning_rate']:g} for colour ones",
        positive_float,
    )
    lr_warmup_epochs: int = setting(
        1,
        "raise the step size linearly from a tenth of --learning-rate to it over this many "
        "epochs, so that large batches start with gentle steps",
        non_negative_int,
    )
    cosine_decay: bool = setting(
        True, "decay the step size to 0 along a cosine over the run: a lower final loss"
    )
    dtype_policy: str = setting(
        "auto",
        "compute dtype of the hidden layers: mixed_bfloat16 computes them in bfloat16 (weights, "
        "z heads and loss stay float32); auto times a few steps of each at start and takes "
        "bfloat16 only where it is clearly faster on this machine",
        choices=["auto", "float32", "mixed_bfloat16"],
    )
    seed: int = setting(
        1337, "seeds weights, shuffling and sampling: the same seed repeats a run", int
    )
    distribute: str = setting(
        "none",
        "split each batch over every local GPU (mirrored) or over machines named in "
        "TF_CONFIG (multi-worker); see docs/distributed.md",
        choices=distribution.MODES,
    )
    # Evaluation
    iw_samples: int = setting(
        32, "z samples per test image for the importance-weighted NLL (K)", positive_int
    )
    evaluate_only: bool = setting(
        False, "evaluate and plot the saved models/vae.keras instead of training"
    )
    # Outputs
    output_dir: str = setting(".", "where checkpoint.keras, logs/, models/, plots/ and backup/ go")
    run_name: str = setting(
        None, "TensorBoard folder name under logs/; default: dataset, latent size and start time"
    )
    fresh: bool = setting(False, "discard an unfinished run's backup and start over")
    plots: bool = setting(True, "draw the PNG plots after training")
    plot_class: int = setting(
        None,
        "conditional, 2-D latent: draw the manifold of this class only (default: every class)",
        non_negative_int,
    )
    image_every: int = setting(
        None,
        "log reconstructions, samples and the latent scatter to TensorBoard every N epochs "
        f"(0: never); default: about {IMAGE_LOGS} times in a run",
        non_negative_int,
    )


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's help with its default, except where the default is None: those helps
    say what happens without the flag."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    """Map the command line onto Config: one flag per field, with its comment as help."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    for config_field in dataclasses.fields(Config):
        flag = "--" + config_field.name.replace("_", "-")
        options = config_field.metadata
        if config_field.type is bool:
            parser.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=config_field.default,
                help=options["help"],
            )
        else:
            value_type = options["type"] or config_field.type
            parser.add_argument(
                flag,
                type=value_type,
                default=config_field.default,
                choices=options["choices"],
                help=options["help"],
            )
    arguments = parser.parse_args(argv)
    config = Config(**vars(arguments))
    if config.limit is not None and config.limit < 6:
        parser.error(
            f"--limit keeps N training and N // 6 test images: use 6 or more, not {config.limit}"
        )
    if config.plot_class is not None and not config.evaluate_only:
        # --evaluate-only checks it against the saved model, which says what it is.
        if not config.conditional:
            parser.error("--plot-class draws one class of a conditional VAE: add --conditional")
        if config.latent_dim not in (None, 2):
            parser.error("--plot-class draws a class's 2-D manifold: it needs --latent-dim 2")
    # Digits are padded to the size, so it cannot be below theirs; other images are resized.
    smallest = data.ORIGINAL_SIZE if config.dataset in data.PADDED_DATASETS else 4
    if config.image_size % 4 or config.image_size < smallest:
        parser.error(
            f"--image-size must be a multiple of 4 and at least {smallest} for --dataset "
            f"{config.dataset}, got {config.image_size}"
        )
    return config


def settled(config, colour=None, train_count=None):
    """`config` with the settings left to the data filled in: the images' `colour` (as
    loaded; MNIST's, Fashion-MNIST's and CIFAR-10's is known from their name), then the
    settings for that colour (COLOUR_DEFAULTS) and, given the number of training images,
    the epochs and how often TensorBoard gets pictures."""
    if config.colour == "auto":
        colour = colour or data.STORED_COLOUR.get(config.dataset)
        if colour is None:
            raise ValueError("a folder's colour is known once it is read: pass its images' colour")
        config = dataclasses.replace(config, colour=colour)
    defaults = COLOUR_DEFAULTS[config.colour]
    batch_size = config.batch_size or defaults["batch_size"]
    if train_count is not None and not config.batch_size:
        # A small data set takes smaller batches: an epoch of at least MIN_EPOCH_STEPS steps.
        while batch_size > MIN_BATCH_SIZE and train_count < MIN_EPOCH_STEPS * batch_size:
            batch_size //= 2
    config = dataclasses.replace(
        config,
        latent_dim=config.latent_dim or defaults["latent_dim"],
        likelihood=defaults["likelihood"] if config.likelihood == "auto" else config.likelihood,
        learning_rate=config.learning_rate or defaults["learning_rate"],
        batch_size=batch_size,
    )
    if train_count is None:
        return config
    steps_per_epoch = math.ceil(train_count / config.batch_size)
    epochs = config.epochs or max(
        defaults["epochs"], math.ceil(defaults["steps"] / steps_per_epoch)
    )
    image_every = config.image_every
    if image_every is None:
        image_every = max(1, round(epochs / IMAGE_LOGS))
    return dataclasses.replace(config, epochs=epochs, image_every=image_every)


def chosen_schedule(given, config, train_count):
    """One line that says the epochs and batch size this run chose for its data, or None
    where the command line gave both."""
    if given.epochs and given.batch_size:
        return None
    steps = config.epochs * math.ceil(train_count / config.batch_size)
    return (
        f"Training {plural(config.epochs, 'epoch')} of {train_count:,} images in batches of "
        f"{config.batch_size}: {steps:,} steps, chosen for {config.colour} images of this "
        "number (--epochs and --batch-size choose otherwise)"
    )


"""
## Data

The images, brought to --image-size and scaled to [0, 1], with their labels and class
names; data.py reads and checks the files.
"""


def load_images(config, test_only=False):
    """The data set of `config` as the model reads it (data.ImageData)."""
    return data.load_images(
        config.dataset,
        config.data_dir,
        config.limit,
        image_size=config.image_size,
        colour=config.colour,
        seed=config.seed,
        test_split=config.test_split,
        test_only=test_only,
    )


def check_output_outside_images(config):
    """A folder of images is read with its sub-folders (hidden ones aside): an --output-dir
    in it would make the run's folders classes, or its plots training images, next time."""
    if config.dataset != "folder" or not config.data_dir:
        return
    images, output = os.path.realpath(config.data_dir), os.path.realpath(config.output_dir)
    first_folder = os.path.relpath(output, images).split(os.sep)[0]
    hidden = first_folder.startswith(".") and first_folder != "."  # not read as images
    if os.path.commonpath([images, output]) == images and not hidden:
        raise RunError(
            f"--output-dir {config.output_dir} is inside --data-dir {config.data_dir}: the "
            "run's models/, logs/ and plots/ would be read as classes or images; choose an "
            "--output-dir outside it"
        )


def check_labels(config, images):
    """Refuse settings that need class labels the images do not have."""
    if config.conditional and not images.num_classes:
        raise DataError(
            f"--conditional needs labelled images, and {config.data_dir} has no class "
            "sub-folders: put each class's images in a sub-folder of its own"
        )
    if config.plot_class is not None and config.plot_class >= max(images.num_classes, 1):
        raise DataError(
            f"--plot-class {config.plot_class}: the images have {images.num_classes} classes, "
            f"numbered 0 to {images.num_classes - 1}"
        )
    latent_dim = settled(config, images.colour).latent_dim
    if config.plot_class is not None and latent_dim != 2:
        raise DataError(
            f"--plot-class draws a class's 2-D manifold, and the latent size of these "
            f"{images.colour} images is {latent_dim}: add --latent-dim 2, or leave it out"
        )


"""
## Model

The encoder, the decoder and the VAE that joins them are in vae.py; here they take
their sizes from the config, and Adam its step size.
"""


def architecture(config, num_classes=data.NUM_CLASSES):
    """The model's shape, as vae.py's builders take it (`num_classes`: the data's, if the
    model is conditional)."""
    config = settled(config)
    return {
        "image_size": config.image_size,
        "channels": data.CHANNELS[config.colour],
        "latent_dim": config.latent_dim,
        "filters": config.filters,
        "hidden_units": config.hidden_units,
        "hidden_layers": config.hidden_layers,
        "dense_activation": config.dense_activation,
        "conv_bias": config.conv_bias,
        "num_classes": num_classes if config.conditional else 0,
    }


def resolve_dtype_policy(config, num_classes=data.NUM_CLASSES):
    """`config` with --dtype-policy auto replaced by the one that trains faster on this
    machine (a few seconds of timed steps, vae.fastest_dtype_policy); others unchanged."""
    if config.dtype_policy != "auto":
        return config
    policy = fastest_dtype_policy(
        settled(config).batch_size, settled(config).likelihood, **architecture(config, num_classes)
    )
    return dataclasses.replace(config, dtype_policy=policy)


def build_model(config, num_classes=data.NUM_CLASSES):
    """The VAE that `config` describes, with every weight created, not compiled."""
    return build_vae(
        **architecture(config, num_classes),
        beta=config.beta,
        seed=config.seed,
        likelihood=settled(config).likelihood,
        dtype_policy=resolve_dtype_policy(config, num_classes).dtype_policy,
    )


def make_model(config, train_size, num_classes=data.NUM_CLASSES):
    """The VAE, compiled with Adam. Two warm-ups, each over its own number of epochs: the
    step size rises from a tenth of --learning-rate before the cosine (if asked), and the KL
    weight rises from 0 to --beta."""
    config = settled(config, train_count=train_size)
    vae = build_model(config, num_classes)
    steps_per_epoch = math.ceil(train_size / config.batch_size)
    vae.start_kl_warmup(config.kl_warmup_epochs * steps_per_epoch)
    total_steps = config.epochs * steps_per_epoch
    warmup_steps = min(config.lr_warmup_epochs * steps_per_epoch, total_steps)
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


"""
## Training

`train` is the whole run: place it on the devices, lock the output folder, load the
data, build the model, resume or start the run, fit it with the callbacks of callbacks.py,
then save, evaluate and plot. The folder's lock, the resume and the saves are in
run_folder.py. `evaluate_saved_model` is the same ending for a model saved earlier.
"""


# Below this many optimizer steps in all, the model learns little more than the average
# image (docs/performance.md, "How to check", has the quick try's measurements): a run
# that short says how to get more steps.
FEW_STEPS = 400


def few_steps_advice(config, train_count):
    """One line of advice when the run takes too few steps to learn, else None."""
    steps = config.epochs * math.ceil(train_count / config.batch_size)
    if steps >= FEW_STEPS:
        return None
    smaller = max(16, config.batch_size // 4)
    fix = f"a smaller --batch-size (such as {smaller}) or " if config.batch_size > 16 else ""
    return (
        f"Only {plural(steps, 'training step')} in all: {train_count} images at --batch-size "
        f"{config.batch_size} for {plural(config.epochs, 'epoch')}. So few steps learn little "
        f"more than the average image; {fix}more --epochs give more."
    )


class TrainingDiverged(RunError):
    """The loss became NaN or infinite."""


def make_callbacks(config, run_name, vae, train_count, images, progress, is_chief=True):
    """The run's callbacks (callbacks.py): the chief checkpoints, backs up and logs to
    TensorBoard, with pictures of `images` (data.ImageData). `progress` is the record of
    the epochs a resumed run has already done."""
    backup_dir = os.path.join(config.output_dir, "backup")
    if not is_chief:  # multi-worker: only the chief writes; the others resume from its backup
        callbacks = [LogKLWeight(), LogBitsPerDimension(), keras.callbacks.TerminateOnNaN()]
        if not config.fresh:
            callbacks.append(FiniteBackupAndRestore(backup_dir, write=False))
        return callbacks
    log_dir = os.path.join(config.output_dir, "logs", run_name)
    checkpoint = os.path.join(config.output_dir, "checkpoint.keras")
    # A resumed run's checkpoint must beat the best epoch before the interruption.
    best = progress.get("best_val_loss") if os.path.exists(checkpoint) else None
    callbacks = [
        LogKLWeight(),  # first: the others see kl_weight and val_bits_per_dim in the logs
        LogBitsPerDimension(),
        keras.callbacks.TerminateOnNaN(),
        StopOnSignal(),
        AtomicModelCheckpoint(
            checkpoint, monitor="val_loss", save_best_only=True, initial_value_threshold=best
        ),
        keras.callbacks.TensorBoard(log_dir=log_dir, write_graph=False),
        # Double checkpoint: if a kill lands mid-write, the previous epoch's backup is used.
        FiniteBackupAndRestore(backup_dir, double_checkpoint=True, progress=progress),
        TimeEstimate(
            config.epochs,
            math.ceil(train_count / config.batch_size),
            config.batch_size,
            len(images.test_images),
            evaluation_flops(vae, config.iw_samples),
            vae_flops(vae)[1],
        ),
    ]
    if config.image_every:
        shown = slice(0, 2000)  # enough points for the scatter, quick to encode every epoch
        callbacks.append(
            TensorBoardImages(
                os.path.join(log_dir, "images"),
                images.test_images[shown],
                None if images.test_labels is None else images.test_labels[shown],
                images.class_names,
                config.image_every,
                config.seed,
            )
        )
    return callbacks


def evaluation_flops(vae, samples):
    """FLOPs of evaluation.py per test image: the encoder once, the decoder (with its pixel
    head) `samples` times."""
    return forward_flops(vae.encoder)[0] + samples * decoder_flops(vae)


def train(config):
    """Train a VAE as `config` says, then save, evaluate and plot it; return (vae, history)."""
    check_output_outside_images(config)
    # Before TensorFlow starts its runtime: MultiWorkerMirroredStrategy must exist first.
    placement = distribution.place(config.distribute, config.batch_size)
    if placement.is_chief:
        check_writable(config.output_dir)
    with output_lock(config.output_dir) if placement.is_chief else contextlib.nullcontext():
        images = load_images(config)
        check_labels(config, images)
        given = config
        config = settled(config, images.colour, len(images.train_images))
        # Before seeding: the timed steps draw no numbers that count.
        config = resolve_dtype_policy(config, images.num_classes)
        keras.utils.set_random_seed(config.seed)
        train_images, train_labels = images.train_images, images.train_labels
        test_images, test_labels = images.test_images, images.test_labels
        # All images, except where batches must split evenly over devices (JAX): then up to
        # replicas - 1 are left out of training and val_loss (the final evaluation uses all).
        train_count, test_count = (
            placement.usable(len(train_images)),
            placement.usable(len(test_images)),
        )
        train_dataset = data.make_dataset(
            train_images[:train_count],
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            labels=train_labels[:train_count] if config.conditional else None,
            num_classes=images.num_classes,
        )
        test_dataset = data.make_dataset(
            test_images[:test_count],
            config.batch_size,
            labels=test_labels[:test_count] if config.conditional else None,
            num_classes=images.num_classes,
        )

        with placement.scope():  # the model, its optimizer and metrics live on every replica
            vae = placement.prepare(make_model(config, train_count, images.num_classes))
            vae.start_from_data(train_images)  # a resumed run's backup replaces it
        run_name, resumed = prepare_run(config, placement.is_chief, images.fingerprint())
        progress = read_progress(config.output_dir, config.epochs) if resumed else {}
        log_dir = os.path.join(config.output_dir, "logs")
        print(
            f"{'Resuming' if resumed else 'Starting'} run {run_name} on {placement.describe()} in "
            f"{config.dtype_policy}: "
            f"{train_count} training and {test_count} test images. "
            f"Watch it with: tensorboard --logdir {log_dir}"
        )
        for line in (
            chosen_schedule(given, config, train_count),
            few_steps_advice(config, train_count),
        ):
            if line and not resumed:
                print(line)
        callbacks = make_callbacks(
            config, run_name, vae, train_count, images, progress, placement.is_chief
        )
        history = vae.fit(
            train_dataset,
            validation_data=test_dataset,
            epochs=config.epochs,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline already reshuffles every epoch
        )
        if not all_finite({name: values[-1] for name, values in history.history.items()}):
            raise TrainingDiverged(
                "training diverged (the loss became NaN or infinite) and was stopped; nothing "
                "was saved over earlier files. Run again with a smaller --learning-rate than "
                f"{config.learning_rate} and --fresh."
            )
        if not placement.is_chief:
            print(f"{placement.worker} finished; the chief writes the models, metrics and plots.")
            return vae, history
        save_models(vae, os.path.join(config.output_dir, "models"))
        trained = one_device_copy(vae, config, placement) if placement.mode != "none" else vae
        # The whole run's epochs and seconds, over every resume.
        progress = read_progress(config.output_dir, config.epochs)
        training = {
            "training_seconds": round(progress.get("training_seconds", 0.0), 1),
            "epochs_trained": progress.get("epochs_trained", 0),
        }
        report(trained, config, test_images, test_labels, run_name, training)
        show_in_projector(trained, images, config.output_dir, run_name)
        if config.plots:
            draw_plots(trained, config, images)
        finish_run(config.output_dir)  # only now: an interruption before this resumes
    return vae, history


def one_device_copy(vae, config, placement):
    """The trained weights in a VAE on one device, for evaluation and plots: a distributed
    model's predict splits every batch over the replicas (and gathers it from every worker)."""
    with placement.one_device():
        copy = build_model(config, vae.num_classes)
    copy.set_weights(vae.get_weights())
    return copy


def evaluate_saved_model(config):
    """--evaluate-only: evaluate and plot models/vae.keras without training.

    The model file says its image size and colour, its latent size, its likelihood and
    whether it is conditional; `--dataset` must name the data it learned. The record keeps
    the settings the model was trained with; the command line's --iw-samples, --seed,
    --limit and --data-dir steer this evaluation and are recorded as its own. A folder's
    test set is the one the training run held out (its --seed and --test-split).
    """
    check_output_outside_images(config)
    check_writable(config.output_dir)
    with output_lock(config.output_dir):
        vae = load_model_file(os.path.join(config.output_dir, "models", "vae.keras"))
        previous = read_metrics(config.output_dir)
        shape = model_shape(vae)
        # Without a record (deleted, or from another program), what the model itself says.
        trained = previous.get("config") or {"dataset": config.dataset, **shape}
        if config.colour == "auto":
            config = dataclasses.replace(config, colour=shape["colour"])
        # Evaluating on other data would mislead silently.
        for name in ("dataset", "image_size", "colour"):
            expected = shape.get(name, trained.get(name))
            if expected != getattr(config, name):
                flag = "--" + name.replace("_", "-")
                raise RunError(
                    f"models/vae.keras in {config.output_dir} was trained with "
                    f"{flag} {expected}; add {flag} {expected}"
                )
        if config.plot_class is not None and not (vae.conditional and shape["latent_dim"] == 2):
            raise RunError(
                "--plot-class draws one class's 2-D manifold, and models/vae.keras in "
                f"{config.output_dir} is not a conditional VAE of latent size 2: leave it out"
            )
        config = dataclasses.replace(
            config,
            latent_dim=shape["latent_dim"],
            likelihood=shape["likelihood"],
            conditional=shape["conditional"],
        )
        # Another --seed draws another test set from a folder, training images among them.
        held_out = dataclasses.replace(
            config,
            seed=trained.get("seed", config.seed),
            test_split=trained.get("test_split", config.test_split),
        )
        images = load_images(held_out, test_only=True)
        check_labels(config, images)
        if vae.conditional and images.num_classes != vae.num_classes:
            raise RunError(
                f"models/vae.keras tells {vae.num_classes} classes apart, the images in "
                f"{config.data_dir} have {images.num_classes}; evaluate it on the data it learned"
            )
        run_name = previous.get("run_name", "evaluation")
        report(
            vae,
            config,
            images.test_images,
            images.test_labels,
            run_name,
            previous.get("training", {}),
            trained,
        )
        show_in_projector(vae, images, config.output_dir, run_name)
        if config.plots:
            draw_plots(vae, config, images)
    return vae


def model_shape(vae):
    """The settings a saved VAE says itself: image size and colour, latent size,
    likelihood, conditional."""
    _, size, _, channels = vae.encoder.inputs[0].shape
    return {
        "image_size": size,
        "colour": "grey" if channels == 1 else "rgb",
        "latent_dim": vae.decoder.inputs[0].shape[-1],
        "likelihood": vae.likelihood,
        "conditional": vae.conditional,
    }


"""
## Evaluation

The test negative ELBO and importance-weighted NLL of evaluation.py: printed, written
to models/metrics.json and logged to TensorBoard.
"""


# Settings that steer an evaluation, not the model: recorded as the evaluation's own.
EVALUATION_SETTINGS = ("iw_samples", "seed", "limit", "data_dir")


def report(vae, config, test_images, test_labels, run_name, training, trained=None):
    """Evaluate on the test set; print, write models/metrics.json and log to TensorBoard.

    `trained`: the settings the model was trained with (default: `config`'s)."""
    print(f"Evaluating on {len(test_images)} test images with K = {config.iw_samples} samples each")
    metrics = evaluation.evaluate(
        vae, test_images, test_labels, samples=config.iw_samples, seed=config.seed
    )
    floor = metrics["data_entropy_floor"]
    print(
        f"Test negative ELBO {metrics['negative_elbo']:.2f} nats/image = "
        f"{metrics['bits_per_dim']:.3f} bits/dim (reconstruction "
        f"{metrics['reconstruction_loss']:.2f} + KL {metrics['kl_loss']:.2f}); importance-weighted "
        f"NLL {metrics['iw_nll']:.2f} = {metrics['iw_bits_per_dim']:.3f} bits/dim (K = "
        f"{metrics['iw_samples']}); {metrics['likelihood']} likelihood, "
        f"{metrics['dimensions']:,} dimensions per image"
        + ("" if floor is None else f"; the data's floor {floor:.2f}")
        + f"; {metrics['active_units']} of {len(metrics['kl_per_dimension'])} latent dimensions "
        "active"
    )
    print(
        f"Lossless coders on {metrics['coder_images']:,} of these test images, each alone: PNG "
        f"{metrics['png_bits_per_dim']:.3f} bits/dim, WebP {metrics['webp_bits_per_dim']:.3f} "
        f"(the model's importance-weighted figure: {metrics['iw_bits_per_dim']:.3f})"
    )
    trained = trained or dataclasses.asdict(config)
    record = {
        "run_name": run_name,
        "test": metrics,
        "training": training,
        "config": trained,
        "evaluation": {name: getattr(config, name) for name in EVALUATION_SETTINGS},
        "versions": {
            "python": platform.python_version(),
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "numpy": np.__version__,
        },
    }
    with contextlib.suppress(ImportError):
        import tensorflow as tf

        record["versions"]["tensorflow"] = tf.__version__
        evaluation.write_tensorboard_summary(
            os.path.join(config.output_dir, "logs", run_name), trained, metrics, training
        )
    write_atomically(
        os.path.join(config.output_dir, "models", "metrics.json"), json.dumps(record, indent=2)
    )
    return metrics


def show_in_projector(vae, images, output_dir, run_name):
    """The test images' z_mean, classes and pictures for TensorBoard's Projector
    (projector.py), in the run's folder under logs/."""
    count = projector_sample(*images.test_images.shape[:2])
    test_images = images.test_images[:count]
    labels = None if images.test_labels is None else images.test_labels[:count]
    z_mean = plotting.encode(vae.encoder, test_images, labels)
    log_dir = os.path.join(output_dir, "logs", run_name)
    with contextlib.suppress(ImportError):  # TensorFlow writes TensorBoard's files
        count = write_projector(log_dir, z_mean, test_images, labels, images.class_names)
        print(f"The latent space of {count} test images is in TensorBoard's Projector")


"""
## Plots

The PNG plots of plotting.py, in plots/ under --output-dir.
"""


def draw_plots(vae, config, images):
    """The plots of the test images in `images` (data.ImageData)."""
    plots_dir = os.path.join(config.output_dir, "plots")
    plotting.plot_all(
        vae.encoder,
        vae.decoder,
        images.test_images,
        images.test_labels,
        images.class_names,
        plots_dir,
        seed=config.seed,
        plot_class=config.plot_class,
        draw=None if vae.pixel_head is None else functools.partial(vae.draw, seed=config.seed),
    )
    explorer.write_explorer(
        vae.encoder,
        vae.decoder,
        images.test_images,
        images.test_labels,
        images.class_names,
        os.path.join(plots_dir, "explorer.html"),
    )
    print(f"Plots in {plots_dir}; open explorer.html in a browser to move through z")


"""
## Command line

`python main.py`: the flags, then a training run (or --evaluate-only). A mistake the
user can fix ends in one line, `error: ...`, with exit status 1.
"""


def main(argv=None):
    config = parse_args(argv)
    # docker stop, SLURM and Kubernetes send SIGTERM, then SIGKILL after a grace period:
    # stop at once, as for Ctrl-C, with the last finished epoch's backup whole.
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        if config.evaluate_only:
            evaluate_saved_model(config)
        else:
            train(config)
    except (DataError, RunError, distribution.DistributionError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (Terminated)
        stopped_by = "Terminated" if isinstance(interrupt, Terminated) else "Interrupted"
        again = "" if config.evaluate_only else " to resume from the last finished epoch"
        print(f"\n{stopped_by}. Run the same command again{again}.", file=sys.stderr)
        sys.exit(143 if isinstance(interrupt, Terminated) else 130)


if __name__ == "__main__":
    main()
