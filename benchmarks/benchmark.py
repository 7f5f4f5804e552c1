"""Benchmark: this program's default VAE against the Keras example's small VAE, side by side.

    python benchmarks/benchmark.py                   # the full comparison
    python benchmarks/benchmark.py --quick           # a few minutes: 6,000 / 1,000 images
    python benchmarks/benchmark.py --only-backends   # only the per-backend rows
    python benchmarks/benchmark.py --only-peer       # only the program against its PyTorch peer

In one run on this machine it trains, one after the other and each in its own subprocess:

- "default": `training.make_model(settings.Config())`, the program's default settings;
- "baseline": the small architecture of the Keras documentation's VAE example adapted to
  32x32 (Conv2D 32 and 64, Dense 16, latent 2; mirrored Conv2DTranspose decoder), batch
  128, Adam 1e-3, float32, wrapped in `vae.VAE` so the loss is the same.

Each trains complete schedules at --budgets shares (default 1/4, 1/2 and 1) of a default
run's training FLOPs: as many epochs as that budget buys it, the step size's schedule
spanning them. The FLOPs are counted from the layer shapes, so the curve of final test
negative ELBO against training FLOPs (elbo_vs_flops.png, left) holds on any machine; the
same runs' seconds (right) and speed are this machine's. A run's GFLOP/s is given as a
share of the matrix-multiply peak of the dtype its layers compute in, measured in the same
run.

The two runs at budget 1 are also compared epoch by epoch: the test -ELBO (`val_loss`, one
z sample per image) against the training wall-clock (validation passes excluded), the
value within the same time, the seconds each takes to reach the baseline's final value,
training images/s, seconds per epoch and peak resident memory. The default trains at
budget 1 once per --seeds seed (default 1 2 3): the mean and standard deviation of its
final test -ELBO.

Then, for each Keras backend installed (TensorFlow, JAX, PyTorch), the default model
trains for --backend-epochs epochs on the first --backend-images images, once per
--backend-seeds seed (default 1 2 3 4 5), in its own subprocess with KERAS_BACKEND set:
seconds per epoch (the last, so tracing and compilation are left out), training images/s
and the test -ELBO's mean and standard deviation over the seeds.

Then the program against its peer, the same model written in plain PyTorch (torch_peer.py):
the default model on the first --peer-images images for --backend-epochs epochs in each
of --peer-dtypes, and the peer on the same images eager and with torch.compile in each,
every one timed over its last epoch as the backend rows are; the program's images/s over
the peer's best in each dtype, and each one's share of the matmul peak of that dtype.
Without torch installed the benchmark says so and leaves the peer out.

The full run trains about six default runs' worth (1/4 + 1/2 + 1 for each model, and two
more seeds), plus the backend rows: `python main.py`'s own time estimate times six is a
fair guess of its length on your machine.

Outputs go to --output-dir (default benchmarks/results/, git-ignored): benchmark.md (the
tables and the machine), benchmark.json (everything, per-epoch curves included) and
elbo_vs_flops.png. The tables are also printed at the end.

The pieces, beside this file: workers.py (what runs in each worker process: the training,
the baseline model, the matmul peak, the peer), torch_peer.py (the peer), peak.py (the
matmul peak) and reports.py (the figures read off the curves, the tables, benchmark.md and
the plot); the FLOP count is the program's own flops.py. This file is the command line and
the order of the run.
"""

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.reports import (  # noqa: E402  (after the path above)
    backends_table,
    coders_line,
    machine_description,
    markdown_table,
    peer_section,
    peer_table,
    plot_quality,
    schedules_table,
    seeds_summary,
    seeds_table,
    summarize,
    write_markdown,
)
from benchmarks.workers import (  # noqa: E402
    MODELS,
    installed_backends,
    peer_missing,
    run_backend_worker,
    run_in_subprocess,
    run_matmul_worker,
    run_peer_worker,
    run_program_worker,
    run_training_worker,
)
from data import DATASETS  # noqa: E402

BACKEND_IMAGES = 12000  # per backend: enough for a steady epoch, little enough to be quick
BACKEND_EPOCHS = 2  # the first includes tracing / compilation; the last is timed
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"
DEFAULT_OUTPUT_DIR = REPO / "benchmarks" / "results"

BUDGETS = (0.25, 0.5, 1.0)  # shares of a default run's training FLOPs
SEEDS = (1, 2, 3)  # the default at budget 1: one seed's figure says little
BACKEND_SEEDS = (1, 2, 3, 4, 5)
# --quick: a subset in the ratio of main's --limit (N training, N // 6 test images).
QUICK_LIMIT = 6000
QUICK_EPOCHS = 3
QUICK_BUDGETS = (0.5, 1.0)
QUICK_SEEDS = (1,)
QUICK_BACKEND_SEEDS = (1, 2)
# The peer and the program beside it: as many images as a backend row; --quick, the fewest
# that keep the default batch of 256 (settings.MIN_EPOCH_STEPS steps an epoch).
PEER_IMAGES = BACKEND_IMAGES
QUICK_PEER_IMAGES = 4096
PEER_DTYPES = ("float32", "bfloat16")


"""
## Command line
"""


def joined(values):
    """`values` as the help text and the command line write them: 0.25 0.5 1.0."""
    return " ".join(map(str, values))


# Every flag once: its name and argparse's options. The flags with no default here get
# theirs in fill_defaults, as they differ with --quick; each help text names its default.
FLAGS = (
    (
        "--quick",
        dict(
            action="store_true",
            help=f"a few minutes: first {QUICK_LIMIT} training and {QUICK_LIMIT // 6} test images, "
            f"a default run of {QUICK_EPOCHS} epochs, budgets {joined(QUICK_BUDGETS)}",
        ),
    ),
    (
        "--limit",
        dict(
            type=int,
            help="first N training and N // 6 test images, as main.py's --limit (default: all; "
            f"--quick: {QUICK_LIMIT})",
        ),
    ),
    (
        "--epochs-default",
        dict(
            type=int,
            help="epochs of a default run, the unit of the budgets (default: those `python "
            f"main.py` chooses for the data; --quick: {QUICK_EPOCHS})",
        ),
    ),
    (
        "--budgets",
        dict(
            type=float,
            nargs="+",
            help="each model trains complete schedules at these shares of a default run's training "
            f"FLOPs (default: {joined(BUDGETS)}; --quick: {joined(QUICK_BUDGETS)})",
        ),
    ),
    (
        "--dataset",
        dict(
            default="mnist",
            choices=DATASETS,
            help="what every row trains on, as main.py's --dataset; the baseline then takes this "
            "program's likelihood of those images (default: mnist)",
        ),
    ),
    (
        "--data-dir",
        dict(
            help="offline data, as main.py's --data-dir (default: for mnist ../shared/data/mnist "
            "if it exists; else Keras' download)",
        ),
    ),
    (
        "--output-dir",
        dict(
            default=str(DEFAULT_OUTPUT_DIR),
            help="where the report goes (default: benchmarks/results/)",
        ),
    ),
    (
        "--seeds",
        dict(
            type=int,
            nargs="+",
            help="the default model trains a full run once per seed, reported as their mean and "
            "standard deviation; the schedules and the backend rows use the first (default: "
            f"{joined(SEEDS)}; --quick: {joined(QUICK_SEEDS)})",
        ),
    ),
    (
        "--backend-seeds",
        dict(
            type=int,
            nargs="+",
            help="each backend row trains once per seed: the backends compared over several "
            "seeds, with the same settings (default: "
            f"{joined(BACKEND_SEEDS)}; --quick: {joined(QUICK_BACKEND_SEEDS)})",
        ),
    ),
    (
        "--backend-images",
        dict(
            type=int,
            help=f"training images per backend row (default: {BACKEND_IMAGES}; "
            f"--quick: {QUICK_LIMIT})",
        ),
    ),
    (
        "--backend-epochs",
        dict(
            type=int,
            default=BACKEND_EPOCHS,
            help="epochs per backend row and per row of the peer's comparison; the last one is "
            "timed (default: %(default)s)",
        ),
    ),
    (
        "--peer-images",
        dict(
            type=int,
            help="training images for the program and its PyTorch peer side by side (default: "
            f"{PEER_IMAGES}; --quick: {QUICK_PEER_IMAGES})",
        ),
    ),
    (
        "--peer-dtypes",
        dict(
            nargs="+",
            choices=PEER_DTYPES,
            help="the dtypes the program and its peer are compared in (default: "
            f"{joined(PEER_DTYPES)})",
        ),
    ),
    ("--no-peer", dict(action="store_true", help="leave out the program against its peer")),
)
# Which rows run: at most one of these.
ROW_FLAGS = (
    ("--no-backends", dict(action="store_true", help="skip the per-backend rows")),
    ("--only-backends", dict(action="store_true", help="only the per-backend rows: no baseline")),
    (
        "--only-peer",
        dict(action="store_true", help="only the program against its PyTorch peer: no baseline"),
    ),
)
# What benchmark.py tells each worker process it starts; not for people.
WORKER_FLAGS = (
    ("--worker", dict(choices=(*MODELS, "matmul", "backend", "program", "peer"))),
    ("--budget", dict(type=float, default=1.0)),
    ("--dtype-policy", dict(choices=("float32", "mixed_bfloat16"))),
    ("--worker-output", dict()),
)
POSITIVE_INTEGER_FLAGS = (
    "limit",
    "epochs_default",
    "backend_images",
    "backend_epochs",
    "peer_images",
)
# The program's dtype policy for each dtype its peer computes in.
PROGRAM_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def make_parser():
    """The parser of FLAGS, of ROW_FLAGS (at most one of them) and of the hidden WORKER_FLAGS."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, options in FLAGS:
        parser.add_argument(flag, **options)
    rows = parser.add_mutually_exclusive_group()
    for flag, options in ROW_FLAGS:
        rows.add_argument(flag, **options)
    for flag, options in WORKER_FLAGS:
        parser.add_argument(flag, **options, help=argparse.SUPPRESS)
    return parser


def check_args(parser, args):
    """Exit with argparse's usage line and an error for a setting that cannot run."""
    for flag in POSITIVE_INTEGER_FLAGS:
        value = getattr(args, flag)
        if value is not None and value <= 0:
            parser.error(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    if args.data_dir is not None and not os.path.exists(args.data_dir):
        parser.error(f"--data-dir {args.data_dir} does not exist")
    if any(budget <= 0 for budget in args.budgets or ()):
        parser.error(f"--budgets must be positive shares, got {args.budgets}")
    if args.no_peer and args.only_peer:
        parser.error("--no-peer and --only-peer leave nothing to run: give one of them")


def fill_defaults(args):
    """The settings left unset: --quick's small run, or the full one; a flag given wins. MNIST
    is read from the shared copy beside this repository, if there is one."""
    if args.data_dir is None and args.dataset == "mnist" and SHARED_MNIST.is_dir():
        args.data_dir = str(SHARED_MNIST)
    if args.quick:
        args.limit = args.limit or QUICK_LIMIT
        args.epochs_default = args.epochs_default or QUICK_EPOCHS
    args.budgets = sorted(args.budgets or (QUICK_BUDGETS if args.quick else BUDGETS))
    args.backend_images = args.backend_images or (QUICK_LIMIT if args.quick else BACKEND_IMAGES)
    args.peer_images = args.peer_images or (QUICK_PEER_IMAGES if args.quick else PEER_IMAGES)
    args.peer_dtypes = list(args.peer_dtypes or PEER_DTYPES)
    args.seeds = args.seeds or list(QUICK_SEEDS if args.quick else SEEDS)
    args.backend_seeds = args.backend_seeds or list(
        QUICK_BACKEND_SEEDS if args.quick else BACKEND_SEEDS
    )
    args.seed = args.seeds[0]  # what a worker trains with


def parse_args(argv=None):
    """The command line's settings, checked, with the ones left unset filled in."""
    parser = make_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    fill_defaults(args)
    return args


def _worker_argv(args, name):
    """The command line of a worker process: this file with --worker and the run's settings
    (the one seed and budget it trains with); it ends with --worker-output, whose value
    run_in_subprocess adds: the result file's path."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", name]
    for flag in (
        "limit",
        "epochs_default",
        "dataset",
        "data_dir",
        "backend_images",
        "backend_epochs",
        "budget",
        "peer_images",
        "dtype_policy",
    ):
        value = getattr(args, flag)
        if value is not None:
            argv += ["--" + flag.replace("_", "-"), str(value)]
    argv += ["--peer-dtypes", *args.peer_dtypes]
    argv += ["--seeds", str(args.seed)]
    if args.quick:
        argv.append("--quick")
    return [*argv, "--worker-output"]


def run_worker(args, name, backend=None, seed=None, budget=None, dtype_policy=None):
    """One worker in a fresh Python process (on `backend`, with `seed`, `budget` and
    `dtype_policy`, if given): its JSON result."""
    given = (("seed", seed), ("budget", budget), ("dtype_policy", dtype_policy))
    changes = {key: value for key, value in given if value is not None}
    args = argparse.Namespace(**{**vars(args), **changes})
    label = name + (f" on {backend}" if backend else "")
    label += f", seed {seed}" if seed is not None else ""
    label += f", budget {budget:g}" if budget is not None else ""
    label += f", {dtype_policy}" if dtype_policy is not None else ""
    environment = {"KERAS_BACKEND": backend} if backend else None
    return run_in_subprocess(_worker_argv(args, name), label, environment, cwd=REPO)


def worker_main(args):
    if args.worker == "matmul":
        result = run_matmul_worker(args)
    elif args.worker == "backend":
        result = run_backend_worker(args)
    elif args.worker == "program":
        result = run_program_worker(args)
    elif args.worker == "peer":
        result = run_peer_worker(args)
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
    if args.only_peer:
        return report_peer(args, command, started)
    matmul = run_worker(args, "matmul")
    schedules = {
        name: {budget: run_worker(args, name, budget=budget) for budget in args.budgets}
        for name in MODELS
    }
    full = max(args.budgets)
    results = {name: schedules[name][full] for name in MODELS}
    # The default again with the other seeds: one seed's figure says little.
    seed_runs = [results["default"]] + [
        run_worker(args, "default", seed=seed, budget=full) for seed in args.seeds[1:]
    ]
    backends = {} if args.no_backends else run_backends(args)
    peer = None if args.no_peer else run_peer(args, matmul)
    summary = summarize(results, matmul)
    report = {
        **run_record(args, command, started),
        "matmul_peak": matmul,
        "summary": summary,
        "seeds": seeds_summary(seed_runs),
        "schedules": schedules,
        "results": results,
        "default_seed_runs": seed_runs[1:],
        "backends": backends,
        "peer": peer,
    }
    output_dir = Path(args.output_dir)
    (output_dir / "benchmark.json").write_text(json.dumps(report, indent=2))
    write_markdown(output_dir / "benchmark.md", report)
    plot_quality(output_dir / "elbo_vs_flops.png", schedules)
    for table in (
        schedules_table(schedules, matmul),
        markdown_table(results, summary),
        seeds_table(report["seeds"]),
        backends_table(backends) if backends else None,
        peer_table(peer, matmul) if peer else None,
    ):
        if table:
            print(f"\n{table}")
    print(f"\n{coders_line(results['default'])}")
    print(
        f"\nfloat32 matmul peak {matmul['float32']['gflops']:,.1f} GFLOP/s, bfloat16 "
        f"{matmul['bfloat16']['gflops']:,.1f} GFLOP/s. Report: {output_dir / 'benchmark.md'}, "
        f"{output_dir / 'benchmark.json'}, {output_dir / 'elbo_vs_flops.png'}"
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
        f"- Machine: {machine['cpu']}, {machine['usable_cores']} usable cores.\n"
        f"- Command: `{command}`\n"
    )
    print()
    print(backends_table(backends))
    print(f"\nReport: {output_dir / 'backends.md'}, {output_dir / 'backends.json'}")


def run_peer(args, matmul=None):
    """The program and its PyTorch peer in each of --peer-dtypes, and the matmul peak
    (measured here unless given): {"program": {dtype: result}, "peer": result, "matmul":
    peaks}; None, with one line saying why, where torch is not installed."""
    missing = peer_missing()
    if missing:
        print(missing)
        return None
    program = {
        dtype: run_worker(args, "program", dtype_policy=PROGRAM_POLICIES[dtype])
        for dtype in args.peer_dtypes
    }
    peer = run_worker(args, "peer")
    return {"program": program, "peer": peer, "matmul": matmul or run_worker(args, "matmul")}


def report_peer(args, command, started):
    """--only-peer: the program against its peer alone, in peer.md and peer.json."""
    peer = run_peer(args)
    if peer is None:
        return
    report = {**run_record(args, command, started), "peer": peer}
    output_dir = Path(args.output_dir)
    (output_dir / "peer.json").write_text(json.dumps(report, indent=2))
    (output_dir / "peer.md").write_text("\n".join(peer_section(report)))
    print()
    print(peer_table(peer, peer["matmul"]))
    print(f"\nReport: {output_dir / 'peer.md'}, {output_dir / 'peer.json'}")


if __name__ == "__main__":
    main()
