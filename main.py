"""Train a convolutional Variational Autoencoder (VAE) on MNIST.

    python main.py                                  # MNIST via Keras' download cache
    python main.py --data-dir path/to/mnist         # offline, from the four original IDX files
    python main.py --dataset fashion_mnist --conditional   # clothes, one decoder per class
    python main.py --evaluate-only                  # evaluate and plot the saved model again
    python main.py --distribute mirrored            # every local GPU (docs/distributed.md)
    KERAS_BACKEND=jax python main.py                # or torch: the same program on another backend
    python main.py --help                           # every setting and its default

MNIST digits are padded from 28x28 to 32x32 and scaled to [0, 1]. A conv encoder maps
each image to z_mean and z_log_var; the Sampling layer draws z with the
reparameterisation trick; a Conv2DTranspose decoder maps z back to pixel probabilities.
The VAE minimises binary cross-entropy summed over pixels plus the KL divergence: the
negative ELBO, in nats per image. The 10,000 test images are the validation set.

Outputs (under --output-dir, default here):
    checkpoint.keras                 best epoch so far (lowest val_loss)
    logs/<run name>/                 TensorBoard curves and pictures: tensorboard --logdir logs
    models/vae.keras                 the whole VAE (load after `import vae`)
    models/encoder.keras, decoder.keras   load with plain `import keras`
    models/metrics.json              test negative ELBO and importance-weighted NLL
    plots/*.png                      latent space, manifold, reconstructions, samples, ...
    backup/                          state of an unfinished run; the same command resumes it

This file is the settings, the command line and the story of a run, in the order the
program runs: Config (every setting, and the flags made from it), Data, Model, Training
(`train`; `evaluate_saved_model` for --evaluate-only), Evaluation (`report`), Plots and
Command line (`main`). The parts it tells the story with live beside it: data.py (reading
and checking the images), vae.py (the model), callbacks.py (the Keras callbacks of a run),
run_folder.py (the output folder's lock, resuming, and saves that are never half-written),
evaluation.py, plotting.py and distribution.py (--distribute).
"""

import argparse
import contextlib
import dataclasses
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
import plotting
from callbacks import (
    AtomicModelCheckpoint,
    FiniteBackupAndRestore,
    LogKLWeight,
    StopOnSignal,
    TensorBoardImages,
    Terminated,
    TimeEstimate,
    all_finite,
    raise_terminated,
)
from data import DataError
from flops import forward_flops, vae_flops
from projector import write_projector
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
from vae import FusedAdam, build_vae, fastest_dtype_policy

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


def class_index(text):
    value = int(text)
    if not 0 <= value < data.NUM_CLASSES:
        raise argparse.ArgumentTypeError(
            f"must be a class index from 0 to {data.NUM_CLASSES - 1}, got {text}"
        )
    return value


def positive_float(text):
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def setting(default, help, type=None, choices=None):
    """A Config field that also describes its command-line flag."""
    return field(default=default, metadata={"help": help, "type": type, "choices": choices})


@dataclass
class Config:
    # Data
    dataset: str = setting("mnist", "which images to learn", choices=sorted(data.CLASS_NAMES))
    data_dir: str = setting(
        None,
        "folder with the four IDX files (or mnist.npz) for offline use; default: Keras' download",
    )
    limit: int = setting(
        None, "use only the first N training and N // 6 test images (quick tries)", positive_int
    )
    image_size: int = setting(
        32, "pad the 28x28 images to this size; a multiple of 4 (two stride-2 layers)", positive_int
    )
    # Model
    latent_dim: int = setting(
        2, "dimensions of z; 2 lets the latent space be drawn directly", positive_int
    )
    filters: int = setting(
        32, "channels of the first convolution (the second has twice as many)", positive_int
    )
    hidden_units: int = setting(512, "width of the dense layers next to z", positive_int)
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
    epochs: int = setting(20, "passes over the training set", positive_int)
    batch_size: int = setting(
        256, "images per gradient step: large batches keep a CPU's vector units busy", positive_int
    )
    learning_rate: float = setting(4e-3, "Adam's step size after the warm-up", positive_float)
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
        class_index,
    )
    image_every: int = setting(
        1,
        "log reconstructions, samples and the latent scatter to TensorBoard every N epochs "
        "(0: never)",
        non_negative_int,
    )


def parse_args(argv=None):
    """Map the command line onto Config: one flag per field, with its comment as help."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
        if config.latent_dim != 2:
            parser.error("--plot-class draws a class's 2-D manifold: it needs --latent-dim 2")
    if config.image_size % 4 or config.image_size < data.ORIGINAL_SIZE:
        parser.error(
            f"--image-size must be a multiple of 4 and at least {data.ORIGINAL_SIZE}, "
            f"got {config.image_size}"
        )
    return config


"""
## Data

The images, padded to --image-size and scaled to [0, 1]; data.py reads and checks the files.
"""


def load_images(config):
    """Padded float32 train and test images with their labels."""
    (x_train, y_train), (x_test, y_test) = data.load_dataset(
        config.dataset, config.data_dir, config.limit
    )
    train_images = data.prepare_images(x_train, config.image_size)
    test_images = data.prepare_images(x_test, config.image_size)
    return (train_images, y_train), (test_images, y_test)


"""
## Model

The encoder, the decoder and the VAE that joins them are in vae.py; here they take
their sizes from the config, and Adam its step size.
"""


def architecture(config):
    """The model's shape, as vae.py's builders take it."""
    return {
        "image_size": config.image_size,
        "latent_dim": config.latent_dim,
        "filters": config.filters,
        "hidden_units": config.hidden_units,
        "dense_activation": config.dense_activation,
        "conv_bias": config.conv_bias,
        "num_classes": data.NUM_CLASSES if config.conditional else 0,
    }


def resolve_dtype_policy(config):
    """`config` with --dtype-policy auto replaced by the one that trains faster on this
    machine (a few seconds of timed steps, vae.fastest_dtype_policy); others unchanged."""
    if config.dtype_policy != "auto":
        return config
    policy = fastest_dtype_policy(config.batch_size, **architecture(config))
    return dataclasses.replace(config, dtype_policy=policy)


def build_model(config):
    """The VAE that `config` describes, with every weight created, not compiled."""
    return build_vae(
        **architecture(config),
        beta=config.beta,
        seed=config.seed,
        dtype_policy=resolve_dtype_policy(config).dtype_policy,
    )


def make_model(config, train_size):
    """The VAE, compiled with Adam. Two warm-ups, each over its own number of epochs: the
    step size rises from a tenth of --learning-rate before the cosine (if asked), and the KL
    weight rises from 0 to --beta."""
    vae = build_model(config)
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
    vae.compile(optimizer=FusedAdam(learning_rate))
    return vae


"""
## Training

`train` is the whole run: place it on the devices, lock the output folder, load the
data, build the model, resume or start the run, fit it with the callbacks of callbacks.py,
then save, evaluate and plot. The folder's lock, the resume and the saves are in
run_folder.py. `evaluate_saved_model` is the same ending for a model saved earlier.
"""


class TrainingDiverged(RunError):
    """The loss became NaN or infinite."""


def make_callbacks(
    config, run_name, vae, train_count, test_images, test_labels, progress, is_chief=True
):
    """The run's callbacks (callbacks.py): the chief checkpoints, backs up and logs to
    TensorBoard. `progress` is the record of the epochs a resumed run has already done."""
    backup_dir = os.path.join(config.output_dir, "backup")
    if not is_chief:  # multi-worker: only the chief writes; the others resume from its backup
        callbacks = [LogKLWeight(), keras.callbacks.TerminateOnNaN()]
        if not config.fresh:
            callbacks.append(FiniteBackupAndRestore(backup_dir, write=False))
        return callbacks
    log_dir = os.path.join(config.output_dir, "logs", run_name)
    checkpoint = os.path.join(config.output_dir, "checkpoint.keras")
    # A resumed run's checkpoint must beat the best epoch before the interruption.
    best = progress.get("best_val_loss") if os.path.exists(checkpoint) else None
    callbacks = [
        LogKLWeight(),  # first: the others see kl_weight in the logs
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
            len(test_images),
            evaluation_flops(vae, config.iw_samples),
            vae_flops(vae)[1],
        ),
    ]
    if config.image_every:
        shown = slice(0, 2000)  # enough points for the scatter, quick to encode every epoch
        callbacks.append(
            TensorBoardImages(
                os.path.join(log_dir, "images"),
                test_images[shown],
                test_labels[shown],
                data.CLASS_NAMES[config.dataset],
                config.image_every,
                config.seed,
            )
        )
    return callbacks


def evaluation_flops(vae, samples):
    """FLOPs of evaluation.py per test image: the encoder once, the decoder `samples` times."""
    return forward_flops(vae.encoder)[0] + samples * forward_flops(vae.decoder)[0]


def train(config):
    """Train a VAE as `config` says, then save, evaluate and plot it; return (vae, history)."""
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow starts its runtime.
    placement = distribution.place(config.distribute, config.batch_size)
    if placement.is_chief:
        check_writable(config.output_dir)
    with output_lock(config.output_dir) if placement.is_chief else contextlib.nullcontext():
        config = resolve_dtype_policy(
            config
        )  # before seeding: its timed steps draw no numbers that count
        keras.utils.set_random_seed(config.seed)
        (train_images, train_labels), (test_images, test_labels) = load_images(config)
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
        )
        test_dataset = data.make_dataset(
            test_images[:test_count],
            config.batch_size,
            labels=test_labels[:test_count] if config.conditional else None,
        )

        with placement.scope():  # the model, its optimizer and metrics live on every replica
            vae = placement.prepare(make_model(config, train_count))
        run_name, resumed = prepare_run(config, write=placement.is_chief)
        progress = read_progress(config.output_dir) if resumed else {}
        log_dir = os.path.join(config.output_dir, "logs")
        print(
            f"{'Resuming' if resumed else 'Starting'} run {run_name} on {placement.describe()} in "
            f"{config.dtype_policy}: "
            f"{train_count} training and {test_count} test images. "
            f"Watch it with: tensorboard --logdir {log_dir}"
        )
        callbacks = make_callbacks(
            config,
            run_name,
            vae,
            train_count,
            test_images,
            test_labels,
            progress,
            placement.is_chief,
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
        progress = read_progress(config.output_dir)
        training = {
            "training_seconds": round(progress.get("training_seconds", 0.0), 1),
            "epochs_trained": progress.get("epochs_trained", 0),
        }
        report(trained, config, test_images, test_labels, run_name, training)
        show_in_projector(trained, config, test_images, test_labels, run_name)
        if config.plots:
            draw_plots(trained, config, test_images, test_labels)
        finish_run(config.output_dir)  # only now: an interruption before this resumes
    return vae, history


def one_device_copy(vae, config, placement):
    """The trained weights in a VAE on one device, for evaluation and plots: a distributed
    model's predict splits every batch over the replicas (and gathers it from every worker)."""
    with placement.one_device():
        copy = build_model(config)
    copy.set_weights(vae.get_weights())
    return copy


def evaluate_saved_model(config):
    """--evaluate-only: evaluate and plot models/vae.keras without training.

    The record keeps the settings the model was trained with; the command line's
    --iw-samples, --seed, --limit and --data-dir steer this evaluation and are recorded as
    its own. The model file says whether it is conditional and its latent size;
    `--dataset` must name the data it learned.
    """
    check_writable(config.output_dir)
    with output_lock(config.output_dir):
        vae = load_model_file(os.path.join(config.output_dir, "models", "vae.keras"))
        previous = read_metrics(config.output_dir)
        # Without a record (deleted, or from another program), what the model itself says.
        trained = previous.get("config") or {"dataset": config.dataset, **model_shape(vae)}
        for name in ("dataset", "image_size"):  # evaluating on other data would mislead silently
            if trained[name] != getattr(config, name):
                flag = "--" + name.replace("_", "-")
                raise RunError(
                    f"models/vae.keras in {config.output_dir} was trained with "
                    f"{flag} {trained[name]}; add {flag} {trained[name]}"
                )
        if config.plot_class is not None and not (vae.conditional and latent_size(vae) == 2):
            raise RunError(
                "--plot-class draws one class's 2-D manifold, and models/vae.keras in "
                f"{config.output_dir} is not a conditional VAE of latent size 2: leave it out"
            )
        _, (test_images, test_labels) = load_images(config)
        run_name = previous.get("run_name", "evaluation")
        report(
            vae, config, test_images, test_labels, run_name, previous.get("training", {}), trained
        )
        show_in_projector(vae, config, test_images, test_labels, run_name)
        if config.plots:
            draw_plots(vae, config, test_images, test_labels)
    return vae


def latent_size(vae):
    return vae.decoder.inputs[0].shape[-1]


def model_shape(vae):
    """The settings a saved VAE says itself: latent size, conditional, image size."""
    return {
        "latent_dim": latent_size(vae),
        "conditional": vae.conditional,
        "image_size": vae.encoder.inputs[0].shape[1],
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
    print(
        f"Test negative ELBO {metrics['negative_elbo']:.2f} nats/image (reconstruction "
        f"{metrics['reconstruction_loss']:.2f} + KL {metrics['kl_loss']:.2f}); importance-weighted "
        f"NLL {metrics['iw_nll']:.2f} (K = {metrics['iw_samples']}); the data's floor "
        f"{metrics['data_entropy_floor']:.2f}; {metrics['active_units']} of "
        f"{len(metrics['kl_per_dimension'])} latent dimensions active"
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


def show_in_projector(vae, config, test_images, test_labels, run_name):
    """The test images' z_mean, classes and pictures for TensorBoard's Projector
    (projector.py), in the run's folder under logs/."""
    z_mean = plotting.encode(vae.encoder, test_images, test_labels)
    log_dir = os.path.join(config.output_dir, "logs", run_name)
    with contextlib.suppress(ImportError):  # TensorFlow writes TensorBoard's files
        count = write_projector(
            log_dir, z_mean, test_images, test_labels, data.CLASS_NAMES[config.dataset]
        )
        print(f"The latent space of {count} test images is in TensorBoard's Projector")


"""
## Plots

The PNG plots of plotting.py, in plots/ under --output-dir.
"""


def draw_plots(vae, config, test_images, test_labels):
    plots_dir = os.path.join(config.output_dir, "plots")
    plotting.plot_all(
        vae.encoder,
        vae.decoder,
        test_images,
        test_labels,
        data.CLASS_NAMES[config.dataset],
        plots_dir,
        seed=config.seed,
        plot_class=config.plot_class,
    )
    print(f"Plots in {plots_dir}")


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
