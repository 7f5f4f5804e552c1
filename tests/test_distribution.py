"""--distribute: MirroredStrategy on two logical CPUs, two workers on 127.0.0.1, JAX's
DataParallel on two host devices. Each runs in fresh interpreters, because devices and
strategies must be set up before TensorFlow or JAX starts."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import (
    QUICK,
    REPO,
    free_port,
    run_main,
    run_python,
    wait_for_first_epoch,
)

SMALL_RUN = ", ".join(f"{name}={value!r}" for name, value in QUICK.items())


@pytest.fixture(scope="module")
def mirrored_vs_one_device(mnist_dir, tmp_path_factory):
    """One SGD step and one epoch of main.train, on one device and mirrored over two CPUs."""
    folder = tmp_path_factory.mktemp("mirrored")
    return run_python(
        f"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {str(REPO)!r})
import keras, numpy as np
import data, distribution, main, settings, training, vae

images = data.prepare_images(data.load_dataset("mnist", {mnist_dir!r}, 512)[0][0][:256], 32)
def one_sgd_step(placement):
    keras.utils.set_random_seed(0)
    with placement.scope():
        config = settings.Config(filters=8, hidden_units=32, seed=0, dtype_policy="float32")
        model = training.build_model(config)
        model.compile(optimizer=keras.optimizers.SGD(1e-4))
    before = model.get_weights()
    loss = model.fit(images, batch_size=256, epochs=1, verbose=0).history["loss"][0]
    update = np.concatenate([(a - b).ravel() for a, b in zip(model.get_weights(), before)])
    return loss, update

result = {{}}
for mode in ("none", "mirrored"):
    placement = distribution.place(mode)
    loss, update = one_sgd_step(placement)
    np.save(f"{folder}/update-{{mode}}.npy", update)
    config = settings.Config(data_dir={mnist_dir!r}, output_dir=f"{folder}/{{mode}}",
                             distribute=mode,
                         {SMALL_RUN})
    _, history = main.train(config)
    result[mode] = {{"replicas": placement.replicas, "step_loss": loss, "history": history.history}}
print(json.dumps(result))
""",
        timeout=400,
    ) | {"folder": folder}


@pytest.mark.slow
def test_mirrored_uses_both_logical_cpus(mirrored_vs_one_device):
    assert mirrored_vs_one_device["none"]["replicas"] == 1
    assert mirrored_vs_one_device["mirrored"]["replicas"] == 2


def test_mirrored_step_has_the_single_device_loss_and_gradient(mirrored_vs_one_device):
    """Each replica's loss is divided by the number of replicas: unscaled, the summed
    gradient (and the reported loss) would be twice the single-device one."""
    folder = mirrored_vs_one_device["folder"]
    single, mirrored = (np.load(folder / f"update-{mode}.npy") for mode in ("none", "mirrored"))
    # The replicas draw their own z noise, so equality holds to about 0.1 %; stated: 1 %.
    assert np.linalg.norm(mirrored) / np.linalg.norm(single) == pytest.approx(1.0, rel=0.01)
    assert single @ mirrored / (np.linalg.norm(single) * np.linalg.norm(mirrored)) > 0.999
    losses = [mirrored_vs_one_device[mode]["step_loss"] for mode in ("none", "mirrored")]
    assert losses[1] == pytest.approx(losses[0], rel=0.001)


def test_mirrored_training_reports_the_single_device_losses(mirrored_vs_one_device):
    single, mirrored = (mirrored_vs_one_device[mode]["history"] for mode in ("none", "mirrored"))
    # Different z noise per replica, amplified by Adam's first steps: 2 % after one epoch.
    for name in ("loss", "reconstruction_loss", "kl_loss", "val_loss"):
        tolerance = dict(rel=0.02) if name != "kl_loss" else dict(abs=0.5)
        assert mirrored[name] == pytest.approx(single[name], **tolerance), name
    assert (mirrored_vs_one_device["folder"] / "mirrored" / "models" / "vae.keras").exists()


WORKER = """
import json, sys
sys.path.insert(0, {repo!r})
import numpy as np
import main, settings
config = settings.Config(data_dir={data_dir!r}, output_dir={output_dir!r},
                         distribute="multi-worker",
                     {settings})
vae, history = main.train(config)
np.savez({weights!r}, *vae.get_weights())
print(json.dumps({{"history": history.history, "epochs": history.epoch,
                  "optimizer_steps": int(vae.optimizer.iterations.numpy())}}))
"""


def start_workers(folder, output_dirs, data_dir, settings=SMALL_RUN):
    """Two `main.train` processes on 127.0.0.1, worker 0 and worker 1 of one cluster.

    Their output goes to files in `folder`, not to pipes: a pipe that is not read while the
    other worker is waited for fills up and blocks its writer, and then both workers stall,
    the other one waiting for it in the next collective.
    """
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    workers = []
    for index, output_dir in enumerate(output_dirs):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        code = WORKER.format(
            repo=str(REPO),
            data_dir=data_dir,
            output_dir=str(output_dir),
            settings=settings,
            weights=str(folder / f"weights{index}.npz"),
        )
        environment = {
            **os.environ,
            "TF_CONFIG": json.dumps(tf_config),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        with (
            open(folder / f"worker{index}.out", "w") as stdout,
            open(folder / f"worker{index}.err", "w") as stderr,
        ):
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-c", code],
                    env=environment,
                    cwd=folder,
                    stdout=stdout,
                    stderr=stderr,
                )
            )
    return workers


def finish(workers, folder):
    """Wait for both workers; return what each printed last and the weights each ended with."""
    try:
        for worker in workers:
            worker.wait(timeout=300)
    finally:
        for worker in workers:
            worker.kill()
    results = []
    for index, worker in enumerate(workers):
        assert worker.returncode == 0, (folder / f"worker{index}.err").read_text()[-3000:]
        results.append(
            json.loads((folder / f"worker{index}.out").read_text().strip().splitlines()[-1])
        )
    return results, [np.load(folder / f"weights{index}.npz") for index in range(2)]


def assert_same_weights(weights):
    assert len(weights[0].files) == len(weights[1].files) > 10
    for name in weights[0].files:
        np.testing.assert_array_equal(weights[0][name], weights[1][name])


@pytest.mark.slow
def test_two_workers_train_the_same_weights_and_only_the_chief_writes(mnist_dir, tmp_path):
    results, weights = finish(
        start_workers(tmp_path, [tmp_path / "worker0", tmp_path / "worker1"], mnist_dir), tmp_path
    )
    assert results[0]["history"] == results[1]["history"]  # the logs are reduced over both workers
    assert np.isfinite(results[0]["history"]["val_loss"]).all()
    assert_same_weights(weights)
    chief = tmp_path / "worker0"
    for name in (
        "checkpoint.keras",
        "models/vae.keras",
        "models/encoder.keras",
        "models/metrics.json",
        "plots/manifold.png",
    ):
        assert (chief / name).exists(), name
    assert list((chief / "logs").glob("*/train/events.out.tfevents.*"))
    assert not (tmp_path / "worker1").exists()  # worker 1 wrote nothing at all


@pytest.mark.slow
def test_two_killed_workers_resume_from_the_chiefs_backup(mnist_dir, tmp_path):
    """Both workers share one output folder; killed after the first epoch, both resume."""
    output_dir = tmp_path / "shared"
    limit, batch_size = 6000, 64
    settings = (
        f"limit={limit}, epochs=2, batch_size={batch_size}, filters=8, hidden_units=32, "
        "iw_samples=2, plots=False, image_every=0"
    )
    workers = start_workers(tmp_path, [output_dir, output_dir], mnist_dir, settings)
    wait_for_first_epoch(workers, output_dir)
    for worker in workers:
        worker.kill()
        worker.wait()

    results, weights = finish(
        start_workers(tmp_path, [output_dir, output_dir], mnist_dir, settings), tmp_path
    )
    steps_per_epoch = -(-limit // batch_size)
    for result in results:
        assert result["epochs"] == [1]  # continued with the second epoch, not restarted
        assert result["optimizer_steps"] == 2 * steps_per_epoch  # Adam's state came back on both
    assert_same_weights(weights)


@pytest.mark.slow
@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "needs TF_CONFIG"),
        (
            '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}',
            "not a valid cluster",
        ),
        ("{not json", "not a valid cluster"),
    ],
)
def test_multi_worker_without_a_usable_tf_config_is_a_clear_error(tmp_path, tf_config, message):
    environment = {"TF_CONFIG": tf_config} if tf_config else {}
    result = run_main(["--distribute", "multi-worker", "--output-dir", str(tmp_path)], environment)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def backend_installed(name):
    return importlib.util.find_spec(name) is not None


@pytest.mark.slow
@pytest.mark.skipif(
    not backend_installed("torch"),
    reason="PyTorch is not installed: pip install -r requirements-backends.txt",
)
def test_torch_refuses_distribution_with_a_clear_error(tmp_path):
    result = run_main(
        ["--distribute", "mirrored", "--output-dir", str(tmp_path)], {"KERAS_BACKEND": "torch"}
    )
    assert result.returncode == 1
    assert (
        "not available on KERAS_BACKEND=torch" in result.stderr and "Traceback" not in result.stderr
    )


@pytest.mark.slow
@pytest.mark.skipif(
    not backend_installed("jax"),
    reason="JAX is not installed: pip install -r requirements-backends.txt",
)
def test_jax_mirrored_uses_data_parallel_and_matches_one_device(mnist_dir, tmp_path):
    """Two host devices: DataParallel computes the same global batch as one device."""
    result = run_python(
        f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
import distribution, jax, keras, main, settings
result = {{"devices": len(jax.devices())}}
for mode in ("none", "mirrored"):
    # JAX compiles every new shape: pictures would cost most of the time.
    config = settings.Config(data_dir={mnist_dir!r}, output_dir={str(tmp_path)!r} + "/" + mode,
                         distribute=mode, {SMALL_RUN}, plots=False, image_every=0)
    _, history = main.train(config)
    result[mode] = history.history
result["distribution"] = type(keras.distribution.distribution()).__name__
try:
    main.train(settings.Config(data_dir={mnist_dir!r}, output_dir={str(tmp_path)!r} + "/odd",
                           distribute="mirrored", batch_size=63))
except distribution.DistributionError as error:
    result["odd_batch"] = str(error)
print(json.dumps(result))
""",
        env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
    )
    assert result["devices"] == 2 and result["distribution"] == "DataParallel"
    for name in ("loss", "reconstruction_loss", "kl_loss"):
        assert result["mirrored"][name] == pytest.approx(result["none"][name], rel=1e-4), name
    # 85 test images: val_loss leaves one out so both devices get equal halves.
    assert result["mirrored"]["val_loss"] == pytest.approx(result["none"]["val_loss"], rel=0.01)
    assert "cannot be split evenly over 2 devices" in result["odd_batch"]
    assert (tmp_path / "mirrored" / "models" / "encoder.keras").exists()
