"""Training on several devices or machines, with the engines Keras and TensorFlow provide.

    --distribute none          one device (the default)
    --distribute mirrored      every local GPU (or every logical CPU): TensorFlow's
                               MirroredStrategy, or keras.distribution.DataParallel on JAX
    --distribute multi-worker  several machines, each running the same command with its own
                               TF_CONFIG: TensorFlow's MultiWorkerMirroredStrategy

Each replica computes the loss of its share of the batch; the VAE divides that loss by
the number of replicas (`scale_for_replicas`) so that the summed gradients and
the reported loss equal those of one device seeing the whole batch.
"""

import contextlib
import json
import os
from dataclasses import dataclass, field

import keras

from settings import DISTRIBUTE_MODES as MODES


def scale_for_replicas(loss):
    """Divide a replica's loss by the number of replicas under tf.distribute.

    tf.distribute sums the replicas' gradients; with each replica's mean loss divided by
    their number, the sum is the gradient of the whole batch's mean, as on one device.
    Keras does this for compiled losses but not for a hand-written `compute_loss`, and
    undoes it for the reported loss. On JAX (DataParallel) and on one device each step
    sees the whole batch: nothing to do.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss / replicas
    return loss


class DistributionError(ValueError):
    """A mode this backend cannot run, or a cluster description that cannot work."""


@dataclass
class Placement:
    """Where training runs: what `train` needs to know about the chosen mode."""

    mode: str = "none"
    replicas: int = 1
    # The worker that writes checkpoints, models, logs and plots; the others only train.
    is_chief: bool = True
    worker: str = "worker 0"
    strategy: object = None  # a tf.distribute strategy, when TensorFlow places the work
    devices: list = field(default_factory=list)
    # JAX shards every batch evenly over the devices, the last smaller one included.
    even_batches: bool = False

    def usable(self, count):
        """How many of `count` images to feed to fit: all, or for even batches a multiple
        of the number of devices (at most replicas - 1 fewer)."""
        return count - count % self.replicas if self.even_batches else count

    def scope(self):
        """Model, optimizer and metrics must be created inside the strategy's scope."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def prepare(self, model):
        """Adapt a model built in `scope()` to this mode before it trains."""
        if self.mode == "multi-worker":
            _work_around_scalar_logs(model)
        return model

    def one_device(self):
        """Build a model outside every strategy and distribution (a tf.distribute scope is
        left by not entering it; JAX's distribution is global and is lifted meanwhile)."""
        if self.mode == "mirrored" and self.strategy is None:
            return _without_jax_distribution()
        return contextlib.nullcontext()

    def describe(self):
        if self.mode == "none":
            return "one device"
        plural = "s" if self.replicas != 1 else ""
        replicas = f"{self.replicas} replica{plural} ({', '.join(self.devices)})"
        return f"{self.mode}: {replicas}" + (
            f", this is {self.worker}" if self.mode == "multi-worker" else ""
        )


def place(mode, batch_size=None):
    """Set up `mode` on the current Keras backend; call before any model is built."""
    if mode not in MODES:
        raise DistributionError(f"--distribute must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "none":
        return Placement()
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _place_tensorflow(mode)
    if backend == "jax" and mode == "mirrored":
        devices = keras.distribution.list_devices()
        if batch_size is not None and batch_size % len(devices):
            raise DistributionError(
                f"--batch-size {batch_size} cannot be split evenly over {len(devices)} devices; "
                f"choose a multiple of {len(devices)}"
            )
        # Each batch is split along its first axis over the devices; the weights are copied.
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        return Placement(
            mode,
            replicas=len(devices),
            devices=[str(device) for device in devices],
            even_batches=True,
        )
    raise DistributionError(
        f"--distribute {mode} is not available on KERAS_BACKEND={backend}: mirrored runs on "
        "tensorflow or jax, multi-worker on tensorflow. Use --distribute none here, or another "
        "backend."
    )


@contextlib.contextmanager
def _without_jax_distribution():
    current = keras.distribution.distribution()
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(current)


def _place_tensorflow(mode):
    import tensorflow as tf

    if mode == "mirrored":
        # MirroredStrategy's default is every GPU, or only CPU:0 when there is none; a CPU
        # split into logical devices (tf.config.set_logical_device_configuration) is used whole.
        devices = [
            device.name
            for device in tf.config.list_logical_devices("GPU")
            or tf.config.list_logical_devices("CPU")
        ]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        return Placement(mode, strategy.num_replicas_in_sync, strategy=strategy, devices=devices)

    cluster = read_tf_config()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task_type, task_id = strategy.cluster_resolver.task_type, strategy.cluster_resolver.task_id
    # TensorFlow's convention: the "chief" task if the cluster has one, else worker 0.
    is_chief = task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in cluster
    )
    addresses = [address for tasks in cluster.values() for address in tasks]
    return Placement(
        mode,
        strategy.num_replicas_in_sync,
        is_chief=is_chief,
        worker=f"{task_type} {task_id}",
        strategy=strategy,
        devices=addresses,
    )


def _work_around_scalar_logs(model):
    """Keras 3 (seen up to 3.15) averages each step's logs over the workers with
    strategy.reduce("MEAN", value, axis=0), which fails on the scalar logs every model
    returns: "Invalid reduction dimension 0 for input with 0 dimensions" (reported as
    tensorflow/tensorflow#72388). Each step's logs get a leading axis of length 1, which
    that reduction then removes; the epoch's logs come from the metrics, unchanged."""
    for name in ("train_step", "test_step"):
        step = getattr(model, name)

        def step_with_vector_logs(data, step=step):
            return {key: keras.ops.reshape(value, (1,)) for key, value in step(data).items()}

        setattr(model, name, step_with_vector_logs)


def read_tf_config():
    """The cluster from TF_CONFIG, checked enough to give a clear error instead of a hang."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise DistributionError(
            "--distribute multi-worker needs TF_CONFIG, the cluster and this machine's place in "
            'it, e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\' (see docs/distributed.md)'
        )
    try:
        tf_config = json.loads(text)
        cluster, task = tf_config["cluster"], tf_config["task"]
        addresses = cluster[task["type"]]
        if not 0 <= int(task["index"]) < len(addresses):
            raise IndexError(
                f"task index {task['index']} but {len(addresses)} {task['type']} addresses"
            )
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise DistributionError(
            f"TF_CONFIG is not a valid cluster description ({error!r}); see docs/distributed.md"
        ) from None
    return cluster
