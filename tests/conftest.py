import json
import os
import pathlib
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _data_dir(name):
    folder = SHARED_DATA / name
    if not (folder / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real {name} files not found in {folder}")
    return str(folder)


@pytest.fixture(scope="session")
def mnist_dir():
    return _data_dir("mnist")


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    return _data_dir("fashion_mnist")


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
    import main

    return main.Config(**quick_settings(output_dir, data_dir, **overrides))


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


def quick_code(output_dir, data_dir, **overrides):
    """The same quick run as `main.Config(...)` source code, for a fresh interpreter."""
    settings = quick_settings(output_dir, data_dir, **overrides)
    return "main.Config(" + ", ".join(f"{name}={value!r}" for name, value in settings.items()) + ")"


def small_vae(**overrides):
    """A tiny VAE in float32, built as main.py builds one (seed 0 unless overridden)."""
    import main

    settings = dict(filters=4, hidden_units=8, seed=0, dtype_policy="float32")
    settings.update(overrides)
    return main.build_model(main.Config(**settings))


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
