"""Train a convolutional Variational Autoencoder (VAE) on MNIST, CIFAR-10 or your own images.

    python main.py                                  # MNIST via Keras' download cache
    python main.py --data-dir path/to/mnist         # offline, from the four original IDX files
    python main.py --dataset fashion_mnist --conditional   # clothes; the decoder reads the class
    python main.py --dataset cifar10                # colour photos (docs/colour.md)
    python main.py --dataset folder --data-dir DIR  # your own PNG / JPEG images
    python main.py --evaluate-only                  # evaluate and plot the saved model again
    python main.py --distribute mirrored            # every local GPU (docs/distributed.md)
    KERAS_BACKEND=jax python main.py                # or torch: the same program on another backend
    python main.py --help                           # every setting and its default

MNIST digits are padded from 28x28 to 32x32 and scaled to [0, 1]. A conv encoder maps
each image to z_mean and z_log_var; the Sampling layer draws z with the
reparameterisation trick; a Conv2DTranspose decoder maps z back to the parameters of
p(x|z) for each pixel: Bernoulli probabilities for grey images, or a distribution over the
256 levels of 8-bit colour. The VAE minimises -log p(x|z) summed over the pixels plus the
KL divergence: the negative ELBO, in nats per image (and bits per dimension). The test
images are the validation set.

Outputs (under --output-dir, default here):
    checkpoint.keras                 best epoch so far (lowest val_loss)
    logs/<run name>/                 TensorBoard: curves, pictures, test figures, the Projector
    models/vae.keras                 the whole VAE (load after `import vae`)
    models/encoder.keras, decoder.keras   load with plain `import keras`
    models/metrics.json              test negative ELBO and importance-weighted NLL
    plots/*.png, plots/explorer.html the latent space, samples, reconstructions; the explorer
    backup/                          state of an unfinished run; the same command resumes it

This file is the run, top to bottom: settings, data, model, train, save, evaluate, draw.
The parts live beside it: settings.py (every setting, declared once), data.py (every data
set, declared once), vae.py (the model and its loss), training.py (optimizer, schedule,
dtype), callbacks.py, run_folder.py (the lock, resuming, whole files), results.py (test
figures, Projector, plots, --evaluate-only) and distribution.py (--distribute).
"""

import contextlib
import os
import signal
import sys

import data
import settings
import startup
from data import DataError
from run_folder import (
    RunError,
    check_output_outside_images,
    check_writable,
    finish_run,
    output_lock,
    prepare_run,
    read_progress,
    save_models,
)

# The modules above import no TensorFlow: `main` reads the command line first, so --help and
# a refused setting answer at once, then sets TensorFlow's options before it loads. Keras,
# and the modules built on it, are imported where they are used.

# Below this many optimizer steps in all, the model learns little more than the average
# image (docs/performance.md, "How to check"): a run that short says how to get more.
FEW_STEPS = 400


class TrainingDiverged(RunError):
    """The loss became NaN or infinite."""


def train(config):
    """Train a VAE as `config` says, then save, evaluate and plot it; return (vae, history)."""
    import keras

    import callbacks
    import distribution
    import results
    import training
    from vae import start_likelihood_from_data

    check_output_outside_images(config)
    # Before TensorFlow starts its runtime: MultiWorkerMirroredStrategy must exist first.
    placement = distribution.place(config.distribute, config.batch_size)
    if placement.is_chief:
        check_writable(config.output_dir)
    with output_lock(config.output_dir) if placement.is_chief else contextlib.nullcontext():
        # Data: the images, and the settings they decide (colour, batch size, epochs).
        images = data.load_for(config)
        settings.check_labels(config, images)
        given = config
        config = settings.settled(config, images.colour, len(images.train_images))
        # Before seeding: the timed steps draw no numbers that count.
        config = training.resolve_dtype_policy(config, images.num_classes)
        keras.utils.set_random_seed(config.seed)
        train_dataset, test_dataset, counts = make_datasets(config, images, placement)
        train_count = counts[0]

        # Model: built and compiled on every replica; a resumed run's backup replaces it.
        with placement.scope():
            model = training.make_model(config, train_count, images.num_classes)
            vae = placement.prepare(model)
            start_likelihood_from_data(vae, images.train_images)

        # Train, resuming an interrupted run where its backup stands.
        run_name, resumed = prepare_run(config, placement.is_chief, images.fingerprint())
        progress = read_progress(config.output_dir, config.epochs) if resumed else {}
        announce(given, config, placement, run_name, resumed, counts)
        history = vae.fit(
            train_dataset,
            validation_data=test_dataset,
            epochs=config.epochs,
            callbacks=callbacks.make_callbacks(
                config, run_name, vae, train_count, images, progress, placement.is_chief
            ),
            shuffle=False,  # the tf.data pipeline already reshuffles every epoch
        )
        check_finite(history, config)
        if not placement.is_chief:
            print(f"{placement.worker} finished; the chief writes the models, metrics and plots.")
            return vae, history

        # Save, evaluate and draw.
        save_models(vae, os.path.join(config.output_dir, "models"))
        trained = one_device_copy(vae, config, placement) if placement.mode != "none" else vae
        results.finish(trained, config, images, run_name, training_record(config))
        finish_run(config.output_dir)  # only now: an interruption before this resumes
    return vae, history


def make_datasets(config, images, placement):
    """The tf.data pipelines of the training and test images, and how many images each
    holds: all, except where batches must split evenly over devices (JAX), where up to
    replicas - 1 are left out of training and val_loss (the final evaluation uses all)."""
    train_count = placement.usable(len(images.train_images))
    test_count = placement.usable(len(images.test_images))
    labelled = config.conditional

    def dataset(array, labels, count, **options):
        return data.make_dataset(
            array[:count],
            config.batch_size,
            labels=labels[:count] if labelled else None,
            num_classes=images.num_classes,
            **options,
        )

    train_dataset = dataset(
        images.train_images, images.train_labels, train_count, shuffle=True, seed=config.seed
    )
    test_dataset = dataset(images.test_images, images.test_labels, test_count)
    return train_dataset, test_dataset, (train_count, test_count)


def announce(given, config, placement, run_name, resumed, counts):
    """The run's first lines: what it trains on where, and, for a new run, the schedule
    chosen for the data and advice when it is too short to learn."""
    train_count, test_count = counts
    log_dir = os.path.join(config.output_dir, "logs")
    print(
        f"{'Resuming' if resumed else 'Starting'} run {run_name} on {placement.describe()} in "
        f"{config.dtype_policy}: {train_count} training and {test_count} test images. "
        f"Watch it with: tensorboard --logdir {log_dir}"
    )
    if resumed:
        return
    for line in (
        chosen_schedule(given, config, train_count),
        few_steps_advice(config, train_count),
    ):
        if line:
            print(line)


def chosen_schedule(given, config, train_count):
    """One line that says the epochs and batch size this run chose for its data, or None
    where the command line gave both."""
    from callbacks import plural

    if given.epochs and given.batch_size:
        return None
    steps = config.epochs * settings.steps_per_epoch(config, train_count)
    return (
        f"Training {plural(config.epochs, 'epoch')} of {train_count:,} images in batches of "
        f"{config.batch_size}: {steps:,} steps, chosen for {config.colour} images of this "
        "number (--epochs and --batch-size choose otherwise)"
    )


def few_steps_advice(config, train_count):
    """One line of advice when the run takes too few steps to learn, else None."""
    from callbacks import plural

    steps = config.epochs * settings.steps_per_epoch(config, train_count)
    if steps >= FEW_STEPS:
        return None
    smaller = max(16, config.batch_size // 4)
    fix = f"a smaller --batch-size (such as {smaller}) or " if config.batch_size > 16 else ""
    return (
        f"Only {plural(steps, 'training step')} in all: {train_count} images at --batch-size "
        f"{config.batch_size} for {plural(config.epochs, 'epoch')}. So few steps learn little "
        f"more than the average image; {fix}more --epochs give more."
    )


def check_finite(history, config):
    """Stop with advice if the last epoch's loss is NaN or infinite."""
    from callbacks import all_finite

    if not all_finite({name: values[-1] for name, values in history.history.items()}):
        raise TrainingDiverged(
            "training diverged (the loss became NaN or infinite) and was stopped; nothing "
            "was saved over earlier files. Run again with a smaller --learning-rate than "
            f"{config.learning_rate} and --fresh."
        )


def one_device_copy(vae, config, placement):
    """The trained weights in a VAE on one device, for evaluation and plots: a distributed
    model's predict splits every batch over the replicas (and gathers it from every worker)."""
    import training

    with placement.one_device():
        copy = training.build_model(config, vae.num_classes)
    copy.set_weights(vae.get_weights())
    return copy


def training_record(config):
    """The whole run's epochs and seconds, over every resume."""
    progress = read_progress(config.output_dir, config.epochs)
    return {
        "training_seconds": round(progress.get("training_seconds", 0.0), 1),
        "epochs_trained": progress.get("epochs_trained", 0),
    }


def main(argv=None):
    """`python main.py`: the flags, then a training run (or --evaluate-only). A mistake the
    user can fix ends in one line, `error: ...`, with exit status 1."""
    startup.start_clock()
    config = settings.parse_args(argv, description=__doc__.split("\n\n")[0])
    # Only now, the command line read: TensorFlow's options, then TensorFlow itself.
    startup.prepare_tensorflow(config.tensorflow_notices)
    import distribution
    import results
    from callbacks import Terminated, raise_terminated

    # docker stop, SLURM and Kubernetes send SIGTERM, then SIGKILL after a grace period:
    # stop at once, as for Ctrl-C, with the last finished epoch's backup whole.
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        if config.evaluate_only:
            results.evaluate_saved_model(config)
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
