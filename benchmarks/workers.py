"""The benchmark's workers: each runs in its own Python process and returns a JSON-able result.

`benchmark.py` starts `python benchmarks/benchmark.py --worker NAME` once per row, so that
each training has the whole process (its peak memory, its threads, its Keras backend).

- a training worker trains "default" (this program's model) or "baseline" (the Keras
  example's) for a complete schedule of a given share of a default run's training FLOPs,
  timing every epoch with validation left out;
- a backend worker trains the default model briefly on the backend its process runs;
- the matmul worker measures the float32 and bfloat16 matrix-multiply peaks.

`run_in_subprocess` starts one such process and reads its result back (latent_sizes.py's
workers too).
"""

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks.peak import matmul_gflops
from flops import vae_flops

MODELS = ("default", "baseline")


BACKENDS = ("tensorflow", "jax", "torch")

# The Keras documentation's VAE example (keras.io/examples/generative/vae), on 32x32 input.
# Its epochs come from the budget of training FLOPs it is given.
BASELINE = dict(
    image_size=32,
    latent_dim=2,
    filters=(32, 64),
    hidden_units=16,
    batch_size=128,
    learning_rate=1e-3,
)


def run_in_subprocess(argv, label, environment=None, cwd=None):
    """Run `argv` (a worker: it writes its JSON result to the path given as its last
    argument) in a fresh Python process and return that result; one line and exit if it
    fails."""
    with tempfile.TemporaryDirectory() as folder:
        output = os.path.join(folder, "result.json")
        print(f"--- {label}", flush=True)
        environment = {**os.environ, **(environment or {})}
        completed = subprocess.run([*argv, output], cwd=cwd, env=environment)
        if completed.returncode != 0:
            sys.exit(
                f"error: the worker for {label} failed (exit status {completed.returncode}); "
                "see its output above"
            )
        with open(output) as file:
            return json.load(file)


"""
## The baseline model
"""


def build_baseline(
    image_size=BASELINE["image_size"],
    latent_dim=BASELINE["latent_dim"],
    seed=None,
    channels=1,
    likelihood="bernoulli",
):
    """The Keras example's encoder and decoder, adapted to 32x32, inside this project's VAE;
    for colour images (`channels` 3) with this program's `likelihood` of them."""
    import keras
    from keras import layers

    import settings
    import vae as vae_module

    small, large = BASELINE["filters"]
    base_size = image_size // 4
    inputs = keras.Input(shape=(image_size, image_size, channels), name="image")
    x = layers.Conv2D(small, 3, strides=2, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(large, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(BASELINE["hidden_units"], activation="relu")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    encoder = keras.Model(inputs, [z_mean, z_log_var], name="encoder")

    latent_inputs = keras.Input(shape=(latent_dim,), name="z")
    x = layers.Dense(base_size * base_size * large, activation="relu")(latent_inputs)
    x = layers.Reshape((base_size, base_size, large))(x)
    x = layers.Conv2DTranspose(large, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2DTranspose(small, 3, strides=2, padding="same", activation="relu")(x)
    # The Keras example's layers keep Keras' global dtype policy (dtype_policy None).
    head = settings.Config(
        image_size=image_size,
        colour="grey" if channels == 1 else "rgb",
        likelihood=likelihood,
        dtype_policy=None,
    )
    image = vae_module.likelihood_head(x, head)
    decoder = keras.Model(latent_inputs, image, name="decoder")

    model = vae_module.VAE(
        encoder, decoder, pixel_head=None, likelihood=likelihood, seed=seed, name="baseline_vae"
    )
    model(keras.ops.zeros((1, image_size, image_size, channels)))  # create every weight now
    return model


"""
## What every worker reports about itself
"""


def _versions():
    import keras
    import tensorflow as tf

    versions = {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
    }
    if keras.backend.backend() != "tensorflow":
        versions[keras.backend.backend()] = importlib.import_module(
            keras.backend.backend()
        ).__version__
    return versions


def peer_missing():
    """One line saying why the PyTorch peer cannot run here, or None where it can."""
    if importlib.util.find_spec("torch") is None:
        return (
            "torch is not installed, so the benchmark leaves out the program's PyTorch peer "
            "(pip install -r requirements-backends.txt adds it)."
        )
    return None


def installed_backends():
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def _peak_memory_mib():
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


"""
## Training workers
"""


def clocks():
    """Wall seconds and CPU seconds of this process (all its threads), now."""
    return time.perf_counter(), time.process_time()


def make_epoch_clock():
    """A Keras callback recording, at each epoch end, training seconds with validation excluded:
    wall seconds ("seconds") and CPU seconds of this process, all its threads ("cpu_seconds").
    On a machine shared with other work the wall clock also counts their time, the CPU clock
    does not."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start, self.validating, self.epochs = clocks(), [0.0, 0.0], []

        def on_test_begin(self, logs=None):
            # Wait for the epoch's last training step: JAX dispatches steps asynchronously,
            # and its training time would otherwise be counted as validation.
            keras.ops.convert_to_numpy(self.model.trainable_variables[-1])
            self.test_start = clocks()

        def on_test_end(self, logs=None):
            self.last_validation = time.perf_counter() - self.test_start[0]
            self.validating = [
                total + now - start
                for total, now, start in zip(
                    self.validating, clocks(), self.test_start, strict=True
                )
            ]

        def on_epoch_begin(self, epoch, logs=None):
            self.last_validation = 0.0

        def on_epoch_end(self, epoch, logs=None):
            now = clocks()
            wall, cpu = (
                end - start - validating
                for end, start, validating in zip(now, self.start, self.validating, strict=True)
            )
            self.epochs.append(
                {
                    "epoch": epoch + 1,
                    "seconds": wall,
                    "cpu_seconds": cpu,
                    "wall_seconds": now[0] - self.start[0],
                    "validation_seconds": self.last_validation,
                    **{key: float(value) for key, value in (logs or {}).items()},
                }
            )

    return EpochClock()


def schedule_epochs(budget, reference_epochs, reference_flops, flops_per_image):
    """Epochs of a complete schedule costing `budget` times a reference run (the default
    model's `reference_epochs` at `reference_flops` per image): at least one."""
    return max(1, round(budget * reference_epochs * reference_flops / flops_per_image))


def settled_config(name, args):
    """The run's Config and images, settled as `python main.py` settles them for these images
    (and, for the default, its dtype policy)."""
    import data
    import settings
    import training

    overrides = {
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "limit": args.limit,
        "seed": args.seed,
        # The peer's rows time the program in each dtype, rather than in the one auto takes.
        "dtype_policy": getattr(args, "dtype_policy", None),
    }
    config = settings.Config(
        **{key: value for key, value in overrides.items() if value is not None}
    )
    images = data.load_for(config)
    config = settings.settled(config, images.colour, len(images.train_images))
    if name == "default":
        config = training.resolve_dtype_policy(config)  # as main.train does, before seeding
    return config, images


def default_training_flops(config):
    """Training FLOPs per image of the default model for `config`, built in float32."""
    import training

    return vae_flops(training.build_model(dataclasses.replace(config, dtype_policy="float32")))[1]


def default_description(config):
    from callbacks import plural
    from vae import latent_map_shape

    warmup = config.lr_warmup_epochs
    if config.spatial_latent:
        rows, columns, channels = latent_map_shape(config)
        next_to_z = f"a 3x3 convolution on each side of z, latent {config.latent_dim} "
        next_to_z += f"({rows}x{columns}x{channels} map), "
    else:
        next_to_z = f"dense {config.hidden_layers} x {config.hidden_units} "
        next_to_z += f"({config.dense_activation}) on each side of z, latent {config.latent_dim}, "
    if config.prior == "gaussian":
        next_to_z += "a learned Gaussian prior, "
    return (
        f"`training.make_model(Config())`: filters {config.filters}/{2 * config.filters}, "
        f"{next_to_z}"
        f"batch {config.batch_size}, Adam {config.learning_rate:g}"
        f"{' with cosine decay' if config.cosine_decay else ''}"
        f"{f' after a {warmup}-epoch warm-up' if warmup else ''}, "
        f"KL warm-up {plural(config.kl_warmup_epochs, 'epoch')}"
    )


def baseline_description():
    small, large = BASELINE["filters"]
    return (
        f"Keras example's VAE on 32x32: Conv2D {small}/{large}, dense "
        f"{BASELINE['hidden_units']}, latent {BASELINE['latent_dim']}, "
        f"batch {BASELINE['batch_size']}, Adam {BASELINE['learning_rate']:g}"
    )


def compiled_baseline(config, channels):
    """The baseline for `config`'s images and likelihood, in float32, compiled with its Adam."""
    import keras

    keras.config.set_dtype_policy("float32")
    model = build_baseline(
        config.image_size,
        BASELINE["latent_dim"],
        seed=config.seed,
        channels=channels,
        likelihood=config.likelihood,
    )
    model.compile(optimizer=keras.optimizers.Adam(BASELINE["learning_rate"]))
    return model


def fit_timed(model, train_images, test_images, batch_size, epochs, seed):
    """`model.fit` with validation on the test images every epoch; the epoch clock's records."""
    import data

    clock = make_epoch_clock()
    model.fit(
        data.make_dataset(train_images, batch_size, shuffle=True, seed=seed),
        validation_data=data.make_dataset(test_images, batch_size),
        epochs=epochs,
        callbacks=[clock],
        shuffle=False,
        verbose=2,
    )
    return clock.epochs


def run_training_worker(name, args):
    """Train `name` for a complete schedule of `args.budget` times a default run's training
    FLOPs (the step size's warm-up and decay span the epochs actually run)."""
    import keras

    import evaluation
    import training
    from vae import start_likelihood_from_data

    config, images = settled_config(name, args)
    # Counted before seeding: building a model draws initializer seeds, and the default
    # must start from the weights `python main.py --seed S` starts from.
    default_flops = default_training_flops(config)
    keras.utils.set_random_seed(config.seed)
    train_images, test_images = images.train_images, images.test_images
    reference_epochs = args.epochs_default or config.epochs
    if name == "default":
        epochs = schedule_epochs(args.budget, reference_epochs, default_flops, default_flops)
        config = dataclasses.replace(config, epochs=epochs)
        model = training.make_model(config, len(train_images))
        batch_size = config.batch_size
        description = default_description(config)
    else:
        model = compiled_baseline(config, channels=train_images.shape[-1])
        epochs = schedule_epochs(args.budget, reference_epochs, default_flops, vae_flops(model)[1])
        batch_size = BASELINE["batch_size"]
        description = baseline_description()
    start_likelihood_from_data(model, train_images)  # as main.train does
    compute_dtype = model.encoder.layers[1].compute_dtype
    description += f", {epochs} epochs, compute dtype {compute_dtype}"
    forward, training, per_layer = vae_flops(model)

    print(
        f"[{name}] {description}: {len(train_images)} training / {len(test_images)} test images",
        flush=True,
    )
    epoch_records = fit_timed(model, train_images, test_images, batch_size, epochs, config.seed)
    return {
        "name": name,
        "description": description,
        "budget": args.budget,
        "config": {**vars(config), "epochs": epochs, "batch_size": batch_size},
        "compute_dtype": compute_dtype,
        "parameters": int(model.count_params()),
        "train_images": len(train_images),
        "test_images": len(test_images),
        # What general-purpose lossless coders spend on the same test images (bits/dim).
        "coders": evaluation.coder_bits_per_dimension(test_images),
        "latent": latent_figures(model, test_images) if name == "default" else None,
        "values_per_image": int(test_images[0].size),
        "batch_size": batch_size,
        "forward_flops_per_image": forward,
        "train_flops_per_image": training,
        "training_flops": training * len(train_images) * epochs,
        "flops_per_layer": per_layer,
        "epochs": epoch_records,
        "peak_memory_mib": _peak_memory_mib(),
        "versions": _versions(),
    }


def latent_figures(model, test_images):
    """What the trained program's z carries on the test images, as main.py reports it: the
    rate (the mean KL) in bits/dim and as a share of the negative ELBO, the active
    dimensions, and the PSNR of the decoder's image at z_mean."""
    import evaluation

    metrics = evaluation.evaluate(model, test_images, samples=1, verbose=False)
    names = ("rate_bits_per_dim", "rate_share", "active_units", "decoder_psnr", "mean_image_psnr")
    return {name: metrics[name] for name in names}


def run_backend_worker(args):
    """The default model for a few epochs on the backend this process runs (KERAS_BACKEND)."""
    settings = argparse.Namespace(
        **{
            **vars(args),
            "limit": args.backend_images,
            "epochs_default": args.backend_epochs,
            "budget": 1.0,
        }
    )
    result = run_training_worker("default", settings)
    epochs = result["epochs"]
    last_epoch_seconds = epochs[-1]["seconds"] - (epochs[-2]["seconds"] if len(epochs) > 1 else 0.0)
    return {
        **result,
        "backend": result["versions"]["backend"],
        "seconds_per_epoch": last_epoch_seconds,
        "train_images_per_second": result["train_images"] / last_epoch_seconds,
        "final_val_loss": epochs[-1]["val_loss"],
    }


def run_program_worker(args):
    """The program's row beside its peer: the default model on the peer's images for as
    many epochs, in the dtype policy `args.dtype_policy`, timed as a backend row."""
    settings = argparse.Namespace(**{**vars(args), "backend_images": args.peer_images})
    result = run_backend_worker(settings)
    cpu = [epoch["cpu_seconds"] for epoch in result["epochs"]]
    last_cpu = cpu[-1] - (cpu[-2] if len(cpu) > 1 else 0.0)
    return {**result, "train_images_per_cpu_second": result["train_images"] / last_cpu}


def run_peer_worker(args):
    """The default model in plain PyTorch (torch_peer.py) on the images and with the batch
    size and step size that the program's row settles for them, in each of `args.peer_dtypes`,
    eager and compiled."""
    from benchmarks import torch_peer

    settings = argparse.Namespace(**{**vars(args), "limit": args.peer_images})
    config, images = settled_config("peer", settings)
    variants = [(dtype, mode) for dtype in args.peer_dtypes for mode in torch_peer.MODES]
    result = torch_peer.run_peer(
        torch_peer.shape_of(config),
        images.train_images,
        images.test_images,
        config.batch_size,
        args.backend_epochs,
        seed=config.seed,
        learning_rate=config.learning_rate,
        variants=variants,
    )
    return {**result, "test_images": len(images.test_images)}


"""
## The matmul worker
"""


def run_matmul_worker(args):
    sizes = (1024, 2048) if args.quick else None  # --quick leaves out the 4096 squares
    options = {"sizes": sizes} if sizes else {}
    return {
        "float32": matmul_gflops("float32", **options),
        "bfloat16": matmul_gflops("bfloat16", **options),
        "versions": _versions(),
    }
