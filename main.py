"""Train a convolutional Variational Autoencoder (VAE) on MNIST.

    python main.py                                  # MNIST via Keras' download cache
    python main.py --data-dir ../shared/data/mnist  # offline, from the original IDX files
    python main.py --help                           # every setting and its default

MNIST digits are padded from 28x28 to 32x32 and scaled to [0, 1]. A conv encoder maps
each image to z_mean and z_log_var; the Sampling layer draws z with the
reparameterisation trick; a Conv2DTranspose decoder maps z back to pixel probabilities.
The VAE minimises binary cross-entropy summed over pixels plus the KL divergence: the
negative ELBO, in nats per image. The 10,000 test images are the validation set.

Outputs (under --output-dir, default here):
    checkpoint.keras                 best epoch so far (lowest val_loss)
    logs/<run name>/                 TensorBoard curves: tensorboard --logdir logs
    models/vae.keras                 the whole VAE (load after `import main`)
    models/encoder.keras, decoder.keras   load with plain `import keras`
    plots/*.png                      latent space, manifold, reconstructions, samples
    backup/                          state of an unfinished run; the same command resumes it

The sections below follow the program: Config, Data, Model, Training, Saving, Plots.
"""

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field

# TensorFlow's C++ start-up chatter (CUDA probes, oneDNN notices) hides the progress bar.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import data  # noqa: E402
import plotting  # noqa: E402
from data import DataError  # noqa: E402
from vae import VAE, Sampling, build_vae  # noqa: F401  (registers the classes for loading)


# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
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
    data_dir: str = setting(None, "folder with the four IDX .gz files (or mnist.npz); default: Keras' download cache")
    limit: int = setting(None, "use only the first N training and N // 6 test images (quick tries, tests)", positive_int)
    image_size: int = setting(32, "pad 28x28 images to this size; divisible by 4 for the two stride-2 layers", positive_int)
    # Model
    latent_dim: int = setting(2, "dimensions of z; 2 lets the latent space be plotted directly", positive_int)
    filters: int = setting(32, "channels of the first conv layer (the second has twice as many)", positive_int)
    hidden_units: int = setting(256, "width of the dense layer between convolutions and z", positive_int)
    # Training
    epochs: int = setting(30, "passes over the training set", positive_int)
    batch_size: int = setting(128, "images per gradient step", positive_int)
    learning_rate: float = setting(1e-3, "Adam's step size", positive_float)
    seed: int = setting(1337, "seeds weights, shuffling and sampling: the same seed repeats a run", int)
    # Outputs
    output_dir: str = setting(".", "where checkpoint.keras, logs/, models/, plots/ and backup/ go")
    run_name: str = setting(None, "TensorBoard folder name under logs/; default: dataset, latent size and start time")
    fresh: bool = setting(False, "discard an unfinished run's backup and start over")
    plots: bool = setting(True, "draw the PNG plots after training")


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
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=config_field.default, help=options["help"])
        else:
            value_type = options["type"] or config_field.type
            parser.add_argument(flag, type=value_type, default=config_field.default, choices=options["choices"], help=options["help"])
    arguments = parser.parse_args(argv)
    config = Config(**vars(arguments))
    if config.image_size % 4 or config.image_size < data.ORIGINAL_SIZE or config.image_size % 2:
        parser.error(f"--image-size must be a multiple of 4 and at least {data.ORIGINAL_SIZE}, got {config.image_size}")
    return config


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def load_images(config):
    """Padded float32 train and test images with their labels."""
    (x_train, y_train), (x_test, y_test) = data.load_dataset(config.dataset, config.data_dir, config.limit)
    train_images = data.prepare_images(x_train, config.image_size)
    test_images = data.prepare_images(x_test, config.image_size)
    return (train_images, y_train), (test_images, y_test)


# ---------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------


def make_model(config):
    vae = build_vae(
        image_size=config.image_size,
        latent_dim=config.latent_dim,
        filters=config.filters,
        hidden_units=config.hidden_units,
        seed=config.seed,
    )
    vae.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    return vae


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------

# Settings that change what the weights mean: a backup made with other values must not
# be loaded into this model.
RESUME_SETTINGS = ("dataset", "limit", "image_size", "latent_dim", "filters", "hidden_units")


class RunError(ValueError):
    """A problem with the run's setup that the user can fix; main() prints it in one line."""


class TrainingDiverged(RunError):
    """The loss became NaN or infinite."""


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' ModelCheckpoint, but the file is replaced only by a complete new file.

    Keras writes to a temporary name beside the target, which is then renamed over it:
    a crash mid-save leaves the previous checkpoint intact.
    """

    def __init__(self, filepath, **kwargs):
        self.final_path = filepath
        partial = os.path.join(os.path.dirname(filepath), "." + os.path.basename(filepath) + ".partial.keras")
        super().__init__(partial, **kwargs)

    def on_epoch_end(self, epoch, logs=None):
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.filepath)  # a leftover from a crash is not this epoch's save
        super().on_epoch_end(epoch, logs)
        if os.path.exists(self.filepath):
            os.replace(self.filepath, self.final_path)


class FiniteBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that never backs up weights from an epoch whose loss is NaN."""

    def on_epoch_end(self, epoch, logs=None):
        if all(math.isfinite(value) for value in (logs or {}).values()):
            super().on_epoch_end(epoch, logs)


def prepare_run(config):
    """Find or start the run: a backup's settings must match this config; returns its name."""
    backup_dir = os.path.join(config.output_dir, "backup")
    run_file = os.path.join(backup_dir, "run.json")
    settings = {name: getattr(config, name) for name in RESUME_SETTINGS}
    if config.fresh:
        shutil.rmtree(backup_dir, ignore_errors=True)
    if os.path.exists(run_file):
        with open(run_file) as file:
            previous = json.load(file)
        if previous["settings"] != settings:
            changed = ", ".join(
                f"{name} {previous['settings'].get(name)} -> {value}"
                for name, value in settings.items()
                if previous["settings"].get(name) != value
            )
            raise RunError(
                f"{backup_dir} holds an unfinished run with other settings ({changed}). "
                "Add --fresh to discard it and start over, or use another --output-dir."
            )
        return previous["run_name"], True
    run_name = config.run_name or "{}-latent{}-{}".format(
        config.dataset, config.latent_dim, datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    )
    os.makedirs(backup_dir, exist_ok=True)
    write_atomically(run_file, json.dumps({"run_name": run_name, "settings": settings}, indent=2))
    return run_name, False


def make_callbacks(config, run_name):
    return [
        keras.callbacks.TerminateOnNaN(),
        AtomicModelCheckpoint(
            os.path.join(config.output_dir, "checkpoint.keras"), monitor="val_loss", save_best_only=True
        ),
        keras.callbacks.TensorBoard(log_dir=os.path.join(config.output_dir, "logs", run_name), write_graph=False),
        # Double checkpoint: if a kill lands mid-write, the previous epoch's backup is used.
        FiniteBackupAndRestore(os.path.join(config.output_dir, "backup"), double_checkpoint=True),
    ]


def train(config):
    """Train a VAE as `config` says, save it and plot it; return (vae, history)."""
    check_writable(config.output_dir)
    keras.utils.set_random_seed(config.seed)
    (train_images, _), (test_images, test_labels) = load_images(config)
    train_dataset = data.make_dataset(train_images, config.batch_size, shuffle=True, seed=config.seed)
    test_dataset = data.make_dataset(test_images, config.batch_size)

    vae = make_model(config)
    run_name, resumed = prepare_run(config)
    print(f"{'Resuming' if resumed else 'Starting'} run {run_name}: {len(train_images)} training "
          f"and {len(test_images)} test images; TensorBoard: tensorboard --logdir "
          f"{os.path.join(config.output_dir, 'logs')}")
    history = vae.fit(
        train_dataset,
        validation_data=test_dataset,
        epochs=config.epochs,
        callbacks=make_callbacks(config, run_name),
        shuffle=False,  # the tf.data pipeline already reshuffles every epoch
    )
    if not all(math.isfinite(value) for values in history.history.values() for value in values):
        raise TrainingDiverged(
            "training diverged (the loss became NaN or infinite) and was stopped; nothing was "
            f"saved over earlier files. Try a smaller --learning-rate than {config.learning_rate}."
        )
    save_models(vae, os.path.join(config.output_dir, "models"))
    if config.plots:
        plotting.plot_all(
            vae.encoder, vae.decoder, test_images, test_labels,
            data.CLASS_NAMES[config.dataset], os.path.join(config.output_dir, "plots"), seed=config.seed,
        )
    return vae, history


# ---------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------


def check_writable(output_dir):
    """Fail before training, not after it, if the outputs cannot be written."""
    for folder in (output_dir, *(os.path.join(output_dir, name) for name in ("models", "logs", "plots", "backup"))):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise RunError(f"{folder} is a file, but outputs go into a folder there; choose another --output-dir")
        try:
            os.makedirs(folder, exist_ok=True)
            probe = os.path.join(folder, f".write-test-{os.getpid()}")
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as error:
            raise RunError(f"cannot write to {folder} ({error.strerror}); choose another --output-dir") from None


def write_atomically(path, text):
    partial = path + ".partial"
    with open(partial, "w") as file:
        file.write(text)
    os.replace(partial, path)


def save_model(model, path):
    """Save to a temporary file beside `path`, then rename: never a half-written model."""
    partial = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".partial.keras")
    model.save(partial)
    os.replace(partial, path)


def save_models(vae, models_dir):
    os.makedirs(models_dir, exist_ok=True)
    save_model(vae, os.path.join(models_dir, "vae.keras"))
    save_model(vae.encoder, os.path.join(models_dir, "encoder.keras"))
    save_model(vae.decoder, os.path.join(models_dir, "decoder.keras"))
    print(f"Saved vae.keras, encoder.keras and decoder.keras in {models_dir}")


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def main(argv=None):
    config = parse_args(argv)
    try:
        train(config)
    except (DataError, RunError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        print("\nInterrupted. Run the same command again to resume from the last finished epoch.", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
