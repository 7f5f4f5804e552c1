import gzip
import json
import os
import pathlib
import socket
import struct
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


# What each data set's files are in Keras' download cache: a folder for --data-dir, and a
# file that shows it holds them (main.py reads mnist.npz, and Fashion-MNIST's IDX files).
CACHED = {
    "mnist": ("datasets", "mnist.npz"),
    "fashion_mnist": ("datasets/fashion-mnist", "t10k-labels-idx1-ubyte.gz"),
}


def keras_caches():
    """Where Keras' load_data() keeps its downloads, as keras.utils.get_file chooses:
    $KERAS_HOME, else ~/.keras, else (a home folder it cannot write) /tmp/.keras."""
    if "KERAS_HOME" in os.environ:
        return [pathlib.Path(os.environ["KERAS_HOME"])]
    return [pathlib.Path.home() / ".keras", pathlib.Path("/tmp/.keras")]


def real_data_dir(name, shared=SHARED_DATA):
    """A --data-dir holding the real data set `name`: NAME in `shared` (../shared/data
    beside this repository), else Keras' download cache; the test is skipped, saying how to
    get the data, where neither holds it."""
    if (shared / name / "train-images-idx3-ubyte.gz").exists():
        return str(shared / name)
    folder, marker = CACHED[name]
    for cache in keras_caches():
        if (cache / folder / marker).exists():
            return str(cache / folder)
    pytest.skip(
        f"real {name} files not found in {shared / name} or in Keras' cache "
        f"({keras_caches()[0]}); python -c 'import keras; keras.datasets.{name}.load_data()' "
        "downloads them there"
    )


@pytest.fixture(scope="session")
def mnist_dir():
    return real_data_dir("mnist")


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    return real_data_dir("fashion_mnist")


def idx_bytes(array, magic):
    """An IDX file's bytes: the magic number, the dimensions, one byte per value."""
    return struct.pack(f">i{array.ndim}i", magic, *array.shape) + array.astype("uint8").tobytes()


def write_idx(path, array, magic, compress=True):
    payload = idx_bytes(array, magic)
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def write_idx_files(folder, train_images, train_labels, test_images, test_labels):
    """MNIST's four files, as distributed, with these arrays: a --data-dir for main.py."""
    import mnist_files

    arrays = {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }
    for key, array in arrays.items():
        magic = mnist_files.IMAGES_MAGIC if key.endswith("images") else mnist_files.LABELS_MAGIC
        write_idx(folder / mnist_files.IDX_FILES[key], array, magic)
    return arrays


# What every finished run leaves in its --output-dir (besides logs/ and metrics.json).
RUN_OUTPUTS = (
    "checkpoint.keras",
    "models/vae.keras",
    "models/encoder.keras",
    "models/decoder.keras",
    "plots/latent_space.png",
    "plots/manifold.png",
    "plots/reconstructions.png",
    "plots/samples.png",
    "plots/interpolation.png",
    "plots/explorer.html",
)


# A few-second run on a small real subset, in float32 on every machine (the default, auto,
# would time both dtypes first and could choose either).
QUICK = dict(
    limit=512,
    epochs=1,
    batch_size=64,
    filters=8,
    hidden_units=32,
    iw_samples=4,
    dtype_policy="float32",
)


def quick_settings(output_dir, data_dir, **overrides):
    """QUICK with the folders and `overrides`: Config's keyword arguments."""
    return {"data_dir": data_dir, "output_dir": str(output_dir), **QUICK, **overrides}


def quick_config(output_dir, data_dir, **overrides):
    """The Config of a quick run."""
    import settings

    return settings.Config(**quick_settings(output_dir, data_dir, **overrides))


def quick_arguments(output_dir, data_dir, **overrides):
    """The same quick run as `python main.py` arguments."""
    arguments = []
    for name, value in quick_settings(output_dir, data_dir, **overrides).items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):
            arguments.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            arguments += [f"--{flag}", str(value)]
    return arguments


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def colour_spread(picture):
    """Mean absolute difference between an RGB(A) picture's channels: exactly 0 for a grey
    picture (matplotlib draws grey levels with three equal channels)."""
    import numpy as np

    rgb = np.asarray(picture, np.float64)[..., :3]
    return np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).mean()


def small_vae(**overrides):
    """A tiny VAE in float32, built as main.py builds one (seed 0 unless overridden)."""
    import settings
    import training

    chosen = dict(filters=4, hidden_units=8, seed=0, dtype_policy="float32")
    chosen.update(overrides)
    return training.build_model(settings.Config(**chosen))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, mnist_dir):
    """One short training run that several tests inspect."""
    import main

    output_dir = tmp_path_factory.mktemp("run")
    vae, history = main.train(quick_config(output_dir, mnist_dir))
    return output_dir, vae, history


def run_python(code, cwd=REPO, env=None, timeout=300):
    """Run `code` in a fresh interpreter, with `env` added to the environment (a Keras
    backend, say); return what it printed last, as JSON."""
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def wait_for_first_epoch(processes, output_dir, timeout=240):
    """Return once a training run in `output_dir` has backed up its first epoch, and is
    half a second into the next one; fail if a process ends or time runs out first."""
    metadata = pathlib.Path(output_dir) / "backup" / "training_metadata.json"
    deadline = time.monotonic() + timeout
    while not metadata.exists():
        assert all(process.poll() is None for process in processes), [
            process.communicate() for process in processes
        ]
        assert time.monotonic() < deadline, "the first epoch never finished"
        time.sleep(0.05)
    time.sleep(0.5)  # into the second epoch


def run_main(arguments, env=None, timeout=120):
    """`python main.py ARGUMENTS` in the repository, with `env` added to the environment
    (TF_CONFIG is never inherited: a stray one would turn the run into a cluster worker)."""
    environment = {name: value for name, value in os.environ.items() if name != "TF_CONFIG"}
    environment.update({"TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})})
    return subprocess.run(
        [sys.executable, str(REPO / "main.py"), *arguments],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def hparams_tab(logdir):
    """What `tensorboard --logdir LOGDIR` serves to the HParams tab, through the plugin's own
    handlers: the experiment (columns) and the session groups (rows)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import (
        api_pb2,
        backend_context,
        get_experiment,
        list_session_groups,
    )

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(logdir)
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, logdir)
    backend = backend_context.Context(
        base_plugin.TBContext(logdir=logdir, multiplexer=multiplexer, data_provider=provider)
    )
    request = context.RequestContext()
    experiment = get_experiment.Handler(
        request, backend, "", api_pb2.GetExperimentRequest(include_metrics=True)
    ).run()
    rows = list_session_groups.Handler(
        request,
        backend,
        "",
        api_pb2.ListSessionGroupsRequest(
            start_index=0,
            slice_size=100,
            include_metrics=True,
            allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS],
        ),
    ).run()
    return experiment, rows.session_groups


# A run that learns (issue 47): 375 steps of 16 of 2,000 real images, with the step size and
# the KL weight at their full values from the first step (their warm-ups suit long runs).
# About 15 CPU seconds; its test negative ELBO is 14 to 27 nats below the mean image's over
# the seeds tried, where the QUICK run's is not below it at all.
LEARNED = dict(
    limit=2000,
    epochs=3,
    batch_size=16,
    kl_warmup_epochs=0,
    lr_warmup_epochs=0,
    cosine_decay=False,
    plots=False,  # tests/test_plots.py draws them, keeping what each figure shows
    image_every=0,
)


@pytest.fixture(scope="session")
def learned_run(tmp_path_factory, mnist_dir):
    """(output folder, vae, history, images) of one short run that learns, shared by the
    tests of learning, of the test figures and of the plots; `images`: its data, read again
    as data.load_images reads it (training images for the mean image, the test images)."""
    import data
    import main

    output_dir = tmp_path_factory.mktemp("learned")
    config = quick_config(output_dir, mnist_dir, **LEARNED)
    vae, history = main.train(config)
    images = data.load_images("mnist", mnist_dir, config.limit, image_size=32, verbose=False)
    return output_dir, vae, history, images
