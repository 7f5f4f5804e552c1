"""Benchmark: this program's default VAE against the Keras example's small VAE, side by side.

    python benchmarks/benchmark.py            # the full comparison (40 to 48 minutes on a 2-core CPU; 2 1/2 hours at half speed)
    python benchmarks/benchmark.py --quick    # a few minutes: 6,000 / 1,000 images, 3 epochs each
    python benchmarks/benchmark.py --only-backends   # only the per-backend rows (20 minutes; 40 at half speed)

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

The default trains once per --seeds seed (default 1 2 3): the mean and standard deviation
of its final test -ELBO; the baseline, the curves and the backend speeds use the first.

Then, for each Keras backend installed (TensorFlow, JAX, PyTorch), the default model
trains for --backend-epochs epochs on the first --backend-images images, once per
--backend-seeds seed (default 1 2 3 4 5), in its own subprocess with KERAS_BACKEND set:
seconds per epoch (the last, so tracing and compilation are left out), training images/s
and the test -ELBO's mean and standard deviation over the seeds, all on this machine in
the same run.

Outputs go to --output-dir (default benchmarks/results/, git-ignored): benchmark.md (the
table and the machine), benchmark.json (everything, per-epoch curves included) and
elbo_vs_time.png. The table is also printed at the end.

The pieces, beside this file: workers.py (what runs in each worker process: the training,
the baseline model, the matmul peak), flops.py (FLOPs from layer shapes, the matmul peak)
and reports.py (the figures read off the curves, the tables, benchmark.md and the plot).
This file is the command line and the order of the run.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.reports import (  # noqa: E402  (after the path above)
    backends_table,
    machine_description,
    markdown_table,
    plot_curves,
    seeds_summary,
    seeds_table,
    summarize,
    write_markdown,
)
from benchmarks.workers import (  # noqa: E402
    BASELINE,
    MODELS,
    installed_backends,
    run_backend_worker,
    run_matmul_worker,
    run_training_worker,
)
from data import DATASETS  # noqa: E402

BACKEND_IMAGES = 12000  # per backend: enough for a steady epoch, ~2 minutes for all three
BACKEND_EPOCHS = 2  # the first includes tracing / compilation; the last is timed
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
DEFAULT_OUTPUT_DIR = REPO / "benchmarks" / "results"

# --quick: a subset in the ratio of main's --limit (N training, N // 6 test images).
QUICK_LIMIT = 6000
QUICK_EPOCHS = 3


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a few minutes: first {QUICK_LIMIT} training and {QUICK_LIMIT // 6} test images, "
        f"{QUICK_EPOCHS} epochs each",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="first N training and N // 6 test images, as main.py's --limit (default: all; --quick: "
        f"{QUICK_LIMIT})",
    )
    parser.add_argument(
        "--epochs-default",
        type=int,
        default=None,
        help="epochs of the default model (default: main.Config().epochs; --quick: "
        f"{QUICK_EPOCHS})",
    )
    parser.add_argument(
        "--epochs-baseline",
        type=int,
        default=None,
        help=f"epochs of the baseline (default: {BASELINE['epochs']}; --quick: {QUICK_EPOCHS})",
    )
    parser.add_argument(
        "--dataset",
        default="mnist",
        choices=DATASETS,
        help="what every row trains on, as main.py's --dataset; the baseline then takes this "
        "program's likelihood of those images (default: mnist)",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="offline data, as main.py's --data-dir (default: for mnist ../shared/data/mnist if "
        "it exists; else Keras' download)",
    )
    parser.add_argument(
        "--output-dir",
        default=str(DEFAULT_OUTPUT_DIR),
        help="where the report goes (default: benchmarks/results/)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="the default model trains once per seed, reported as their mean and standard deviation; "
        "the baseline and the backend rows use the first (default: 1 2 3; --quick: 1)",
    )
    parser.add_argument(
        "--backend-seeds",
        type=int,
        nargs="+",
        default=None,
        help="each backend row trains once per seed: the backends compared over several seeds, "
        "with the same settings (default: 1 2 3 4 5; --quick: 1 2)",
    )
    parser.add_argument(
        "--backend-images",
        type=int,
        default=None,
        help=f"training images per backend row (default: {BACKEND_IMAGES}; --quick: {QUICK_LIMIT})",
    )
    parser.add_argument(
        "--backend-epochs",
        type=int,
        default=BACKEND_EPOCHS,
        help="epochs per backend row; the last one is timed (default: %(default)s)",
    )
    rows = parser.add_mutually_exclusive_group()
    rows.add_argument("--no-backends", action="store_true", help="skip the per-backend rows")
    rows.add_argument(
        "--only-backends", action="store_true", help="only the per-backend rows: no baseline"
    )
    parser.add_argument("--worker", choices=(*MODELS, "matmul", "backend"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for flag in ("limit", "epochs_default", "epochs_baseline", "backend_images", "backend_epochs"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if args.data_dir is None and args.dataset == "mnist" and SHARED_MNIST.is_dir():
        args.data_dir = str(SHARED_MNIST)
    if args.data_dir is not None and not os.path.exists(args.data_dir):
        parser.error(f"--data-dir {args.data_dir} does not exist")
    if args.quick:
        args.limit = args.limit or QUICK_LIMIT
        args.epochs_default = args.epochs_default or QUICK_EPOCHS
        args.epochs_baseline = args.epochs_baseline or QUICK_EPOCHS
    args.backend_images = args.backend_images or (QUICK_LIMIT if args.quick else BACKEND_IMAGES)
    args.seeds = args.seeds or ([1] if args.quick else [1, 2, 3])
    args.backend_seeds = args.backend_seeds or ([1, 2] if args.quick else [1, 2, 3, 4, 5])
    args.seed = args.seeds[0]  # what a worker trains with
    return args


def _worker_argv(args, name, output):
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--worker-output",
        output,
    ]
    for flag in (
        "limit",
        "epochs_default",
        "epochs_baseline",
        "dataset",
        "data_dir",
        "backend_images",
        "backend_epochs",
    ):
        value = getattr(args, flag)
        if value is not None:
            argv += ["--" + flag.replace("_", "-"), str(value)]
    argv += ["--seeds", str(args.seed)]  # the one seed this worker trains with
    if args.quick:
        argv.append("--quick")
    return argv


def run_worker(args, name, backend=None, seed=None):
    """Run one worker in a fresh Python process (on `backend`, with `seed`, if given) and
    return its JSON result."""
    environment = {**os.environ, "KERAS_BACKEND": backend} if backend else None
    if seed is not None:
        args = argparse.Namespace(**{**vars(args), "seed": seed})
    with tempfile.TemporaryDirectory() as folder:
        output = os.path.join(folder, "result.json")
        print(
            f"--- {name}{' on ' + backend if backend else ''}{f' (seed {seed})' if seed is not None else ''}",
            flush=True,
        )
        completed = subprocess.run(_worker_argv(args, name, output), cwd=REPO, env=environment)
        if completed.returncode != 0:
            sys.exit(
                f"error: the {name} worker failed (exit status {completed.returncode}); see its output above"
            )
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
    command = "python " + shlex.join(
        [
            os.path.relpath(sys.argv[0]) if argv is None else "benchmarks/benchmark.py",
            *(sys.argv[1:] if argv is None else argv),
        ]
    )
    os.makedirs(args.output_dir, exist_ok=True)
    started = time.time()
    if args.only_backends:
        return report_backends(args, command, started)
    results = {name: run_worker(args, name) for name in MODELS}  # data problems show up first
    # The default again with the other seeds: one seed's figure says little.
    seed_runs = [results["default"]] + [
        run_worker(args, "default", seed=seed) for seed in args.seeds[1:]
    ]
    matmul = run_worker(args, "matmul")
    backends = {} if args.no_backends else run_backends(args)
    summary = summarize(results, matmul)
    report = {
        **run_record(args, command, started),
        "matmul_peak": matmul,
        "summary": summary,
        "seeds": seeds_summary(seed_runs),
        "results": results,
        "default_seed_runs": seed_runs[1:],
        "backends": backends,
    }
    output_dir = Path(args.output_dir)
    (output_dir / "benchmark.json").write_text(json.dumps(report, indent=2))
    write_markdown(output_dir / "benchmark.md", report)
    plot_curves(output_dir / "elbo_vs_time.png", results, summary)
    print()
    print(markdown_table(results, summary))
    print()
    print(seeds_table(report["seeds"]))
    if backends:
        print()
        print(backends_table(backends))
    print(
        f"\nfloat32 matmul peak {matmul['float32']['gflops']:,.1f} GFLOP/s, bfloat16 "
        f"{matmul['bfloat16']['gflops']:,.1f} GFLOP/s. Report: {output_dir / 'benchmark.md'}, "
        f"{output_dir / 'benchmark.json'}, {output_dir / 'elbo_vs_time.png'}"
    )


def run_record(args, command, started):
    """What every report says about the run itself: command, times, settings, machine."""
    return {
        "command": command,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
        "total_seconds": time.time() - started,
        "settings": {
            key: value for key, value in vars(args).items() if not key.startswith("worker")
        },
        "machine": machine_description(),
    }


def run_backends(args):
    """Each installed backend, once per --backend-seeds seed: {backend: [result per seed]}."""
    return {
        name: [run_worker(args, "backend", backend=name, seed=seed) for seed in args.backend_seeds]
        for name in installed_backends()
    }


def report_backends(args, command, started):
    """--only-backends: the per-backend rows alone, in backends.md and backends.json."""
    backends = run_backends(args)
    report = {**run_record(args, command, started), "backends": backends}
    output_dir = Path(args.output_dir)
    (output_dir / "backends.json").write_text(json.dumps(report, indent=2))
    machine = report["machine"]
    (output_dir / "backends.md").write_text(
        f"# Keras backends\n\n{backends_table(backends)}\n\n- The default model on the first "
        f"{args.backend_images:,} training images, {args.backend_epochs} epochs, seeds "
        f"{', '.join(map(str, args.backend_seeds))}; the last epoch of the first seed is timed.\n"
        f"- Machine: {machine['cpu']}, {machine['usable_cores']} usable cores.\n- Command: `{command}`\n"
    )
    print()
    print(backends_table(backends))
    print(f"\nReport: {output_dir / 'backends.md'}, {output_dir / 'backends.json'}")


if __name__ == "__main__":
    main()
