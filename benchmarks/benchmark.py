"""Benchmark: this program's default VAE against the Keras example's small VAE, side by side.

    python benchmarks/benchmark.py            # the full comparison (tens of minutes on a CPU)
    python benchmarks/benchmark.py --quick    # a few minutes: 6,000 / 1,000 images, 3 epochs each
    python benchmarks/benchmark.py --only-backends   # only the per-backend rows (a few minutes)

In one run on this machine it trains, one after the other and each in its own subprocess:

- "default": `main.make_model(main.Config())` with the program's default settings, for
  `Config().epochs` epochs;
- "baseline": the small architecture of the Keras documentation's VAE example adapted to
  32x32 (Conv2D 32 and 64, Dense 16, latent 2; mirrored Conv2DTranspose decoder), batch
  128, Adam 1e-3, float32, 30 epochs, wrapped in `vae.VAE` so the loss is the same.

For each it measures the test negative ELBO (`val_loss`, nats/image, one z sample per
image) after every epoch against the training wall-clock (validation passes excluded),
the final value, the value reached within the same time budget (the shorter run's
duration), the seconds each takes to reach the baseline's final value, training
images/s, seconds per epoch, peak resident memory (getrusage ru_maxrss of its own
process), FLOPs per training image counted from the layer shapes and the GFLOP/s that
makes, as a share of a float32 matrix-multiply peak measured in the same run (a bfloat16
peak is measured and reported too).

Then, for each Keras backend installed (TensorFlow, JAX, PyTorch), the default model
trains for --backend-epochs epochs on the first --backend-images images, in its own
subprocess with KERAS_BACKEND set: seconds per epoch (the last, so tracing and
compilation are left out) and training images/s, all on this machine in the same run.

Outputs go to --output-dir (default benchmarks/results/, git-ignored): benchmark.md (the
table and the machine), benchmark.json (everything, per-epoch curves included) and
elbo_vs_time.png. The table is also printed at the end.
"""

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODELS = ("default", "baseline")
BACKENDS = ("tensorflow", "jax", "torch")
BACKEND_IMAGES = 12000  # per backend: enough for a steady epoch, ~2 minutes for all three
BACKEND_EPOCHS = 2  # the first includes tracing / compilation; the last is timed
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
DEFAULT_OUTPUT_DIR = REPO / "benchmarks" / "results"

# The Keras documentation's VAE example (keras.io/examples/generative/vae), on 32x32 input.
BASELINE = dict(image_size=32, latent_dim=2, filters=(32, 64), hidden_units=16, batch_size=128,
                learning_rate=1e-3, epochs=30)

# --quick: a subset in the ratio of main's --limit (N training, N // 6 test images).
QUICK_LIMIT = 6000
QUICK_EPOCHS = 3

MATMUL_SIZE = 2048
TRAINING_FLOPS_PER_FORWARD = 3  # forward + backward (gradients for inputs and weights) ~ 3x forward


# ---------------------------------------------------------------------------------------
# The baseline model
# ---------------------------------------------------------------------------------------


def build_baseline(image_size=BASELINE["image_size"], latent_dim=BASELINE["latent_dim"], seed=None):
    """The Keras example's encoder and decoder, adapted to 32x32, inside this project's VAE."""
    import keras
    from keras import layers

    import vae as vae_module

    small, large = BASELINE["filters"]
    base_size = image_size // 4
    inputs = keras.Input(shape=(image_size, image_size, 1), name="image")
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
    logits = layers.Conv2DTranspose(1, 3, padding="same", name="logits")(x)
    image = layers.Activation("sigmoid", name="image")(logits)
    decoder = keras.Model(latent_inputs, image, name="decoder")

    model = vae_module.VAE(encoder, decoder, seed=seed, name="baseline_vae")
    model(keras.ops.zeros((1, image_size, image_size, 1)))  # create every weight now
    return model


# ---------------------------------------------------------------------------------------
# FLOPs from layer shapes
# ---------------------------------------------------------------------------------------


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
        return kernel_h * kernel_w * _channels(in_shape, layer.data_format) * layer.filters * _spatial(in_shape, layer.data_format)
    if isinstance(layer, layers.Conv2D):
        kernel_h, kernel_w = layer.kernel_size
        in_shape, out_shape = tuple(layer.input.shape), tuple(layer.output.shape)
        in_channels = _channels(in_shape, layer.data_format) // layer.groups
        return kernel_h * kernel_w * in_channels * layer.filters * _spatial(out_shape, layer.data_format)
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


def vae_flops(vae):
    """(forward FLOPs per image, training FLOPs per image, per-layer forward FLOPs) of a VAE."""
    forward, per_layer = forward_flops(vae.encoder, vae.decoder)
    return forward, TRAINING_FLOPS_PER_FORWARD * forward, per_layer


# ---------------------------------------------------------------------------------------
# Reading the curves (pure functions, no timing)
# ---------------------------------------------------------------------------------------


def seconds_to_reach(curve, target):
    """Training seconds at which a (seconds, value) curve first gets to `target` or below.

    Linear interpolation between the last epoch above the target and the first at or
    below it; the first epoch's time if that one is already at or below. None if never.
    """
    previous = None
    for seconds, value in curve:
        if value <= target:
            if previous is None or previous[1] <= target:
                return seconds
            (seconds_before, value_before) = previous
            return seconds_before + (value_before - target) / (value_before - value) * (seconds - seconds_before)
        previous = (seconds, value)
    return None


def value_within(curve, budget):
    """The value of the last epoch finished within `budget` seconds; None if none was."""
    within = [value for seconds, value in curve if seconds <= budget]
    return within[-1] if within else None


def steady_epoch_seconds(epoch_seconds):
    """Median epoch duration, leaving out the first epoch (graph tracing) when there are more."""
    durations = [end - start for start, end in zip([0.0] + epoch_seconds[:-1], epoch_seconds)]
    return statistics.median(durations[1:] if len(durations) > 1 else durations)


def summarize(results, matmul):
    """Derived figures for each model from the workers' raw results; the same-time budget."""
    curves = {name: [(epoch["seconds"], epoch["val_loss"]) for epoch in results[name]["epochs"]] for name in MODELS}
    budget = min(curve[-1][0] for curve in curves.values())
    target = curves["baseline"][-1][1]
    fp32_peak = matmul["float32"]["gflops"]
    summary = {"budget_seconds": budget, "baseline_final_val_loss": target, "models": {}}
    for name in MODELS:
        result, curve = results[name], curves[name]
        epoch_seconds = steady_epoch_seconds([seconds for seconds, _ in curve])
        images_per_second = result["train_images"] / epoch_seconds
        achieved = result["train_flops_per_image"] * images_per_second / 1e9
        summary["models"][name] = {
            "epochs": len(curve),
            "training_seconds": curve[-1][0],
            "final_val_loss": curve[-1][1],
            "val_loss_within_budget": value_within(curve, budget),
            "seconds_to_baseline_final": seconds_to_reach(curve, target),
            "seconds_per_epoch": epoch_seconds,
            "train_images_per_second": images_per_second,
            "peak_memory_mib": result["peak_memory_mib"],
            "train_flops_per_image": result["train_flops_per_image"],
            "achieved_gflops": achieved,
            "percent_of_fp32_matmul_peak": 100 * achieved / fp32_peak,
        }
    return summary


# ---------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------


def _number(value, digits):
    return "n/a" if value is None else f"{value:,.{digits}f}"


def markdown_table(results, summary):
    budget = summary["budget_seconds"]
    header = (
        "| model | parameters | batch | epochs | final test -ELBO | test -ELBO within "
        f"{budget:,.1f} s | s to reach baseline's final | train images/s | s/epoch | peak memory MiB "
        "| training MFLOP/image | GFLOP/s | % of fp32 matmul peak |"
    )
    rows = [header, "|" + " --- |" * (header.count("|") - 1)]
    for name in MODELS:
        result, figures = results[name], summary["models"][name]
        reach = figures["seconds_to_baseline_final"]
        rows.append("| " + " | ".join([
            name,
            f"{result['parameters']:,}",
            str(result["batch_size"]),
            str(figures["epochs"]),
            _number(figures["final_val_loss"], 2),
            _number(figures["val_loss_within_budget"], 2) if figures["val_loss_within_budget"] is not None else "no epoch finished",
            "not reached" if reach is None else _number(reach, 1),
            _number(figures["train_images_per_second"], 0),
            _number(figures["seconds_per_epoch"], 1),
            _number(figures["peak_memory_mib"], 0),
            _number(figures["train_flops_per_image"] / 1e6, 1),
            _number(figures["achieved_gflops"], 1),
            _number(figures["percent_of_fp32_matmul_peak"], 1),
        ]) + " |")
    return "\n".join(rows)


def machine_description():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next((line.split(":", 1)[1].strip() for line in file if line.startswith("model name")), cpu)
    except OSError:
        pass
    memory_gib = None
    try:
        with open("/proc/meminfo") as file:
            kib = next(int(line.split()[1]) for line in file if line.startswith("MemTotal"))
        memory_gib = kib / 2**20
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": usable, "memory_gib": memory_gib,
            "python": platform.python_version(), "platform": platform.platform()}


def write_markdown(path, report):
    results, summary, machine, matmul = report["results"], report["summary"], report["machine"], report["matmul_peak"]
    versions = results["default"]["versions"]
    settings = report["settings"]
    subset = f"the first ones, --limit {settings['limit']}" if settings["limit"] else "all of MNIST"
    lines = [
        "# Benchmark: default VAE vs the Keras example's VAE",
        "",
        markdown_table(results, summary),
        "",
        f"- Data: {results['default']['train_images']:,} training and {results['default']['test_images']:,} test images"
        f" ({subset}). Test -ELBO is `val_loss`: the negative ELBO"
        " on the test images in nats/image, one z sample per image.",
        f"- default: {results['default']['description']}.",
        f"- baseline: {results['baseline']['description']}.",
        f"- Times are training wall-clock seconds from the start of `fit`, validation passes excluded, graph tracing"
        f" included. \"Within {summary['budget_seconds']:,.1f} s\" is the value of the last epoch finished within the"
        f" shorter run's duration; \"s to reach\" interpolates linearly between epochs to the baseline's final"
        f" test -ELBO ({summary['baseline_final_val_loss']:.2f}). Images/s and s/epoch use the median epoch after the"
        " first (which includes tracing).",
        "- FLOPs are counted from the layer shapes (Conv2D, Conv2DTranspose, Dense; 2 per multiply-add; training ="
        f" {TRAINING_FLOPS_PER_FORWARD} x forward). Peak memory is the worker process's ru_maxrss (data included).",
        f"- Matrix-multiply peak ({MATMUL_SIZE}x{MATMUL_SIZE} tf.matmul in a tf.function): float32"
        f" {matmul['float32']['gflops']:,.1f} GFLOP/s, bfloat16 {matmul['bfloat16']['gflops']:,.1f} GFLOP/s.",
        f"- Machine: {machine['cpu']}, {machine['usable_cores']} usable of {machine['logical_cores']} logical cores,"
        f" {_number(machine['memory_gib'], 1)} GiB memory, accelerators: {', '.join(versions['gpus']) or 'none'};"
        f" Python {machine['python']}, TensorFlow {versions['tensorflow']}, Keras {versions['keras']}.",
        f"- Command: `{report['command']}`",
        "",
    ]
    if report.get("backends"):
        settings = report["settings"]
        lines += [
            "## Keras backends",
            "",
            backends_table(report["backends"]),
            "",
            f"- The default model on the first {settings['backend_images']:,} training images for"
            f" {settings['backend_epochs']} epochs, on each backend in its own process with KERAS_BACKEND set;"
            " s/epoch is the last epoch's training time (validation excluded), so the first epoch's tracing or"
            " compilation is left out. The data pipeline is tf.data on every backend.",
            "",
        ]
    Path(path).write_text("\n".join(lines))


def plot_curves(path, results, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes = plt.subplots(figsize=(8, 5))
    for name, marker in zip(MODELS, ("o", "s")):
        epochs = results[name]["epochs"]
        axes.plot([epoch["seconds"] for epoch in epochs], [epoch["val_loss"] for epoch in epochs],
                  marker=marker, markersize=4, label=f"{name} ({len(epochs)} epochs)")
    axes.axhline(summary["baseline_final_val_loss"], color="grey", linestyle=":", linewidth=1,
                 label="baseline's final value")
    axes.axvline(summary["budget_seconds"], color="grey", linestyle="--", linewidth=1, label="same-time budget")
    axes.set_xscale("log")
    # Plain numbers (5, 10, 20, 50, ...) rather than powers of ten: the range is often under a decade.
    axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlabel("training wall-clock seconds (validation excluded, log scale)")
    axes.set_ylabel("test negative ELBO (nats/image)")
    default = results["default"]
    axes.set_title(f"Test negative ELBO vs training time ({default['train_images']:,} train / "
                   f"{default['test_images']:,} test images)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


# ---------------------------------------------------------------------------------------
# Workers (each in its own process)
# ---------------------------------------------------------------------------------------


def _versions():
    import keras
    import tensorflow as tf

    versions = {"tensorflow": tf.__version__, "keras": keras.__version__, "backend": keras.backend.backend(),
                "gpus": [device.name for device in tf.config.list_physical_devices("GPU")]}
    if keras.backend.backend() != "tensorflow":
        versions[keras.backend.backend()] = importlib.import_module(keras.backend.backend()).__version__
    return versions


def installed_backends():
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


def run_backend_worker(args):
    """The default model for a few epochs on the backend this process runs (KERAS_BACKEND)."""
    settings = argparse.Namespace(**{**vars(args), "limit": args.backend_images, "epochs_default": args.backend_epochs})
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


def backends_table(backends):
    """One row per backend: the same model and images, timed in the same benchmark run."""
    rows = ["| backend | version | training images | s/epoch (last) | train images/s | test -ELBO after "
            "the epochs | peak memory MiB |", "|" + " --- |" * 7]
    for name, result in backends.items():
        rows.append("| " + " | ".join([
            name,
            result["versions"].get(name, ""),
            f"{result['train_images']:,}",
            _number(result["seconds_per_epoch"], 1),
            _number(result["train_images_per_second"], 0),
            _number(result["final_val_loss"], 2),
            _number(result["peak_memory_mib"], 0),
        ]) + " |")
    return "\n".join(rows)


def _peak_memory_mib():
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def make_epoch_clock():
    """A Keras callback recording, at each epoch end, training seconds with validation excluded."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.start, self.validation_seconds, self.epochs = time.perf_counter(), 0.0, []

        def on_test_begin(self, logs=None):
            # Wait for the epoch's last training step: JAX dispatches steps asynchronously,
            # and its training time would otherwise be counted as validation.
            keras.ops.convert_to_numpy(self.model.trainable_variables[-1])
            self.test_start = time.perf_counter()

        def on_test_end(self, logs=None):
            self.last_validation = time.perf_counter() - self.test_start
            self.validation_seconds += self.last_validation

        def on_epoch_begin(self, epoch, logs=None):
            self.last_validation = 0.0

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            self.epochs.append({
                "epoch": epoch + 1,
                "seconds": now - self.start - self.validation_seconds,
                "wall_seconds": now - self.start,
                "validation_seconds": self.last_validation,
                **{key: float(value) for key, value in (logs or {}).items()},
            })

    return EpochClock()


def run_training_worker(name, args):
    import keras

    import data
    import main

    overrides = {"data_dir": args.data_dir, "limit": args.limit, "seed": args.seed}
    config = main.Config(**{key: value for key, value in overrides.items() if value is not None})
    keras.utils.set_random_seed(config.seed)
    (train_images, _), (test_images, _) = main.load_images(config)
    if name == "default":
        epochs = args.epochs_default or config.epochs
        # The learning-rate schedule spans the epochs actually run.
        config = dataclasses.replace(config, epochs=epochs)
        model = main.make_model(config, len(train_images))
        batch_size = config.batch_size
        description = (f"`main.make_model(Config())`: filters {config.filters}/{2 * config.filters}, dense "
                       f"{config.hidden_units}, latent {config.latent_dim}, batch {config.batch_size}, Adam "
                       f"{config.learning_rate:g}{' with cosine decay' if config.cosine_decay else ''}")
    else:
        keras.config.set_dtype_policy("float32")
        epochs = args.epochs_baseline or BASELINE["epochs"]
        model = build_baseline(config.image_size, BASELINE["latent_dim"], seed=config.seed)
        model.compile(optimizer=keras.optimizers.Adam(BASELINE["learning_rate"]))
        batch_size = BASELINE["batch_size"]
        description = (f"Keras example's VAE on 32x32: Conv2D {BASELINE['filters'][0]}/{BASELINE['filters'][1]}, dense "
                       f"{BASELINE['hidden_units']}, latent {BASELINE['latent_dim']}, batch {batch_size}, Adam "
                       f"{BASELINE['learning_rate']:g}")
    description += f", {epochs} epochs, compute dtype {model.encoder.layers[1].compute_dtype}"
    forward, training, per_layer = vae_flops(model)

    train_dataset = data.make_dataset(train_images, batch_size, shuffle=True, seed=config.seed)
    test_dataset = data.make_dataset(test_images, batch_size)
    clock = make_epoch_clock()
    print(f"[{name}] {description}: {len(train_images)} training / {len(test_images)} test images", flush=True)
    model.fit(train_dataset, validation_data=test_dataset, epochs=epochs, callbacks=[clock], shuffle=False, verbose=2)
    return {
        "name": name,
        "description": description,
        "config": {**vars(config), "epochs": epochs, "batch_size": batch_size},
        "parameters": int(model.count_params()),
        "train_images": len(train_images),
        "test_images": len(test_images),
        "batch_size": batch_size,
        "forward_flops_per_image": forward,
        "train_flops_per_image": training,
        "flops_per_layer": per_layer,
        "epochs": clock.epochs,
        "peak_memory_mib": _peak_memory_mib(),
        "versions": _versions(),
    }


def matmul_gflops(dtype, size=MATMUL_SIZE, min_seconds=2.0, min_repetitions=3):
    """GFLOP/s of a size x size tf.matmul in a tf.function: warmed up, then timed over repetitions."""
    import tensorflow as tf

    generator = tf.random.Generator.from_seed(0)
    a = tf.cast(generator.normal((size, size)), dtype)
    b = tf.cast(generator.normal((size, size)), dtype)

    @tf.function
    def product(a, b):
        return tf.reduce_sum(tf.cast(tf.matmul(a, b)[:1, :1], tf.float32))  # a scalar: waits for the result

    for _ in range(2):  # trace, then one untimed run
        product(a, b).numpy()
    repetitions, start = 0, time.perf_counter()
    while repetitions < min_repetitions or time.perf_counter() - start < min_seconds:
        product(a, b).numpy()
        repetitions += 1
    seconds = (time.perf_counter() - start) / repetitions
    return {"gflops": 2 * size**3 / seconds / 1e9, "seconds_per_matmul": seconds, "repetitions": repetitions}


def run_matmul_worker(args):
    min_seconds = 1.0 if args.quick else 3.0
    return {"size": MATMUL_SIZE, "float32": matmul_gflops("float32", min_seconds=min_seconds),
            "bfloat16": matmul_gflops("bfloat16", min_seconds=min_seconds), "versions": _versions()}


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"a few minutes: first {QUICK_LIMIT} training and {QUICK_LIMIT // 6} test images, "
                             f"{QUICK_EPOCHS} epochs each")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N training and N // 6 test images, as main.py's --limit (default: all; --quick: "
                             f"{QUICK_LIMIT})")
    parser.add_argument("--epochs-default", type=int, default=None,
                        help="epochs of the default model (default: main.Config().epochs; --quick: "
                             f"{QUICK_EPOCHS})")
    parser.add_argument("--epochs-baseline", type=int, default=None,
                        help=f"epochs of the baseline (default: {BASELINE['epochs']}; --quick: {QUICK_EPOCHS})")
    parser.add_argument("--data-dir", default=str(SHARED_MNIST) if SHARED_MNIST.is_dir() else None,
                        help="folder with the MNIST IDX files (default: ../shared/data/mnist if it exists, else Keras' download)")
    parser.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR), help="where the report goes (default: benchmarks/results/)")
    parser.add_argument("--seed", type=int, default=None, help="seed for both models (default: main.Config().seed)")
    parser.add_argument("--backend-images", type=int, default=None,
                        help=f"training images per backend row (default: {BACKEND_IMAGES}; --quick: {QUICK_LIMIT})")
    parser.add_argument("--backend-epochs", type=int, default=BACKEND_EPOCHS,
                        help="epochs per backend row; the last one is timed (default: %(default)s)")
    rows = parser.add_mutually_exclusive_group()
    rows.add_argument("--no-backends", action="store_true", help="skip the per-backend rows")
    rows.add_argument("--only-backends", action="store_true", help="only the per-backend rows: no baseline")
    parser.add_argument("--worker", choices=(*MODELS, "matmul", "backend"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag in ("limit", "epochs_default", "epochs_baseline", "backend_images", "backend_epochs"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        parser.error(f"--data-dir {args.data_dir} is not a directory")
    if args.quick:
        args.limit = args.limit or QUICK_LIMIT
        args.epochs_default = args.epochs_default or QUICK_EPOCHS
        args.epochs_baseline = args.epochs_baseline or QUICK_EPOCHS
    args.backend_images = args.backend_images or (QUICK_LIMIT if args.quick else BACKEND_IMAGES)
    return args


def _worker_argv(args, name, output):
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--worker-output", output]
    for flag in ("limit", "epochs_default", "epochs_baseline", "data_dir", "seed", "backend_images", "backend_epochs"):
        value = getattr(args, flag)
        if value is not None:
            argv += ["--" + flag.replace("_", "-"), str(value)]
    if args.quick:
        argv.append("--quick")
    return argv


def run_worker(args, name, backend=None):
    """Run one worker in a fresh Python process (on `backend`, if given) and return its JSON result."""
    environment = {**os.environ, "KERAS_BACKEND": backend} if backend else None
    with tempfile.TemporaryDirectory() as folder:
        output = os.path.join(folder, "result.json")
        print(f"--- {name}{' on ' + backend if backend else ''}", flush=True)
        completed = subprocess.run(_worker_argv(args, name, output), cwd=REPO, env=environment)
        if completed.returncode != 0:
            sys.exit(f"error: the {name} worker failed (exit status {completed.returncode}); see its output above")
        with open(output) as file:
            return json.load(file)


def worker_main(args):
    if args.worker == "matmul":
        result = run_matmul_worker(args)
    elif args.worker == "backend":
        result = run_backend_worker(args)
    else:
        import data

        try:
            result = run_training_worker(args.worker, args)
        except data.DataError as error:
            sys.exit(f"error: {error}")
    with open(args.worker_output, "w") as file:
        json.dump(result, file)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    command = "python " + shlex.join([os.path.relpath(sys.argv[0]) if argv is None else "benchmarks/benchmark.py",
                                      *(sys.argv[1:] if argv is None else argv)])
    os.makedirs(args.output_dir, exist_ok=True)
    started = time.time()
    if args.only_backends:
        return report_backends(args, command, started)
    results = {name: run_worker(args, name) for name in MODELS}  # data problems show up first
    matmul = run_worker(args, "matmul")
    backends = {} if args.no_backends else {
        name: run_worker(args, "backend", backend=name) for name in installed_backends()
    }
    summary = summarize(results, matmul)
    report = {
        **run_record(args, command, started),
        "matmul_peak": matmul,
        "summary": summary,
        "results": results,
        "backends": backends,
    }
    output_dir = Path(args.output_dir)
    (output_dir / "benchmark.json").write_text(json.dumps(report, indent=2))
    write_markdown(output_dir / "benchmark.md", report)
    plot_curves(output_dir / "elbo_vs_time.png", results, summary)
    print()
    print(markdown_table(results, summary))
    if backends:
        print()
        print(backends_table(backends))
    print(f"\nfloat32 matmul peak {matmul['float32']['gflops']:,.1f} GFLOP/s, bfloat16 "
          f"{matmul['bfloat16']['gflops']:,.1f} GFLOP/s. Report: {output_dir / 'benchmark.md'}, "
          f"{output_dir / 'benchmark.json'}, {output_dir / 'elbo_vs_time.png'}")


def run_record(args, command, started):
    """What every report says about the run itself: command, times, settings, machine."""
    return {
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "total_seconds": time.time() - started,
        "settings": {key: value for key, value in vars(args).items() if not key.startswith("worker")},
        "machine": machine_description(),
    }


def report_backends(args, command, started):
    """--only-backends: the per-backend rows alone, in backends.md and backends.json."""
    backends = {name: run_worker(args, "backend", backend=name) for name in installed_backends()}
    report = {**run_record(args, command, started), "backends": backends}
    output_dir = Path(args.output_dir)
    (output_dir / "backends.json").write_text(json.dumps(report, indent=2))
    machine = report["machine"]
    (output_dir / "backends.md").write_text(
        f"# Keras backends\n\n{backends_table(backends)}\n\n- The default model on the first "
        f"{args.backend_images:,} training images, {args.backend_epochs} epochs; the last epoch is timed.\n"
        f"- Machine: {machine['cpu']}, {machine['usable_cores']} usable cores.\n- Command: `{command}`\n")
    print()
    print(backends_table(backends))
    print(f"\nReport: {output_dir / 'backends.md'}, {output_dir / 'backends.json'}")


if __name__ == "__main__":
    main()
