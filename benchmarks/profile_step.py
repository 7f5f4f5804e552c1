"""Where a training step's time goes: the program's default step under TensorFlow's profiler
and its PyTorch peer's (torch_peer.py) under torch.profiler, the top operations of each and
their share of the time the step's operations took.

    python benchmarks/profile_step.py                  # both, float32, 10 steps each
    python benchmarks/profile_step.py --only program   # or: --only peer
    python benchmarks/profile_step.py --dtype bfloat16

Both train on the same random binary 32x32 images, a batch of the default size at a time,
after a few untimed steps (tracing, compilation, oneDNN's first calls). TensorFlow runs a
step's operations on two inter-op threads at once, so its operations' times can add up to
more than the step's wall time: a share is of the operations' total, and the step's wall
time is printed beside it. Each operation is named by its kind and, for the program, the
kind of layer it belongs to and whether it is a gradient ("grad"); torch.profiler's times
are each operation's own, its callees' left out.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# As main.py does before TensorFlow is imported, so that the profile is of the program's kernels.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# TensorFlow's bookkeeping on its compute threads, beside the operations themselves.
TF_NON_OPS = ("ThreadpoolListener", "ExecutorState", "MemoryAllocation", "MemoryDeallocation")
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("program", "peer"), help="profile only this one")
    parser.add_argument("--steps", type=int, default=10, help="profiled steps (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--top", type=int, default=12, help="operations listed (default: 12)")
    parser.add_argument(
        "--dtype",
        choices=tuple(POLICIES),
        default="float32",
        help="the compute dtype (default: float32); bfloat16 is the program's mixed_bfloat16 "
        "and the peer's autocast",
    )
    return parser


def random_images(count, size, seed=0):
    import numpy as np

    return (np.random.default_rng(seed).random((count, size, size, 1)) > 0.8).astype("float32")


def layer_of(op_name):
    """The kind of layer an operation of the program's graph belongs to, from its name:
    "dense" for "gradient_tape/vae_1/decoder_logits_1/dense_4_1/MatMul/MatMul" (the numbers
    dropped, so that the layers of one kind add up); the loss's or the optimizer's name for
    the others."""
    parts = op_name.split("/")
    for model in ("encoder_1", "decoder_logits_1", "decoder_1"):
        if model in parts and parts.index(model) + 2 < len(parts):
            return re.sub(r"(_\d+)+$", "", parts[parts.index(model) + 1])
    return re.sub(r"(_\d+)+$", "", parts[1] if parts[0] == "gradient_tape" else parts[0])


def tensorflow_op_seconds(logdir):
    """{operation: seconds} over the host's compute threads in the profile under `logdir`;
    an operation is its kind, layer and whether it is a gradient."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(path).read_bytes())
    seconds = collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                metadata = plane.event_metadata[event.metadata_id]
                if metadata.name.startswith(TF_NON_OPS) or ":" not in metadata.name:
                    continue
                op_name, kind = metadata.name.rsplit(":", 1)
                gradient = " grad" if op_name.startswith("gradient_tape/") else ""
                seconds[f"{kind} ({layer_of(op_name)}{gradient})"] += event.duration_ps * 1e-12
    return seconds


def profile_program(steps, warmup, dtype):
    """(seconds per step, {operation: seconds per step}) of the program's default step."""
    import tensorflow as tf

    import settings
    import training

    config = settings.settled(settings.Config(dtype_policy=POLICIES[dtype]), train_count=60000)
    model = training.make_model(config, 60000)
    images = random_images(config.batch_size, config.image_size)
    for _ in range(warmup):
        model.train_on_batch(images)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        started = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(images)  # returns numbers: the step has finished
        step_seconds = (time.perf_counter() - started) / steps
        tf.profiler.experimental.stop()
        seconds = tensorflow_op_seconds(logdir)
    return step_seconds, {name: value / steps for name, value in seconds.items()}


def profile_peer(steps, warmup, dtype):
    """(seconds per step, {operation: self seconds per step}) of the peer's eager step."""
    import torch

    from benchmarks import torch_peer

    torch.manual_seed(0)
    model = torch_peer.PeerVAE().to(memory_format=torch.channels_last)
    optimizer = torch_peer.make_optimizer(model, 1e-3)
    train_step, _ = torch_peer.make_steps(model, optimizer, dtype, compiled=False)
    images = torch_peer.as_tensor(random_images(256, 32))
    for _ in range(warmup):
        train_step(images)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        started = time.perf_counter()
        for _ in range(steps):
            float(train_step(images))
        step_seconds = (time.perf_counter() - started) / steps
    seconds = {
        event.key: event.self_cpu_time_total * 1e-6 / steps for event in profile.key_averages()
    }
    return step_seconds, seconds


def op_table(title, step_seconds, seconds, top):
    """The `top` operations by time: ms per step and share of all the operations' time."""
    total = sum(seconds.values())
    lines = [
        f"{title}: {1e3 * step_seconds:.1f} ms per step (wall), its operations "
        f"{1e3 * total:.1f} ms",
        "",
        "| operation | ms per step | share of the operations' time |",
        "| --- | --- | --- |",
    ]
    for name, value in sorted(seconds.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"| {name} | {1e3 * value:.2f} | {100 * value / total:.1f} % |")
    return "\n".join(lines)


def by_kind(seconds):
    """{operation kind: seconds}: the program's operations of one kind added up over the
    layers ("MatMul (dense grad)" and "MatMul (z_mean grad)" are both "MatMul")."""
    kinds = collections.Counter()
    for name, value in seconds.items():
        kinds[name.split(" (")[0]] += value
    return kinds


def main(argv=None):
    args = make_parser().parse_args(argv)
    profilers = {"program": profile_program, "peer": profile_peer}
    titles = {"program": "The program (TensorFlow)", "peer": "The peer (PyTorch, eager)"}
    for name in [args.only] if args.only else profilers:
        step_seconds, seconds = profilers[name](args.steps, args.warmup, args.dtype)
        title = f"{titles[name]}, {args.dtype}"
        print(f"\n{op_table(title, step_seconds, seconds, args.top)}")
        if name == "program":
            kinds = by_kind(seconds)
            print(f"\n{op_table(title + ', by kind', step_seconds, kinds, args.top)}")


if __name__ == "__main__":
    main()
