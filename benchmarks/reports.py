"""The benchmark's reports: figures read off the workers' curves, the tables, benchmark.md
and the test -ELBO against time plot.

Everything here is pure: it reads the workers' results and times nothing.
"""

import os
import platform
import statistics
from pathlib import Path

from benchmarks.peak import MATMUL_CHAIN
from benchmarks.workers import MODELS
from flops import TRAINING_FLOPS_PER_FORWARD

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
            return seconds_before + (value_before - target) / (value_before - value) * (
                seconds - seconds_before
            )
        previous = (seconds, value)
    return None


def value_within(curve, budget):
    """The value of the last epoch finished within `budget` seconds; None if none was."""
    within = [value for seconds, value in curve if seconds <= budget]
    return within[-1] if within else None


def steady_epoch_seconds(epoch_seconds):
    """Median epoch duration, leaving out the first epoch (graph tracing) when there are more."""
    durations = [
        end - start for start, end in zip([0.0] + epoch_seconds[:-1], epoch_seconds, strict=True)
    ]
    return statistics.median(durations[1:] if len(durations) > 1 else durations)


def summarize(results, matmul):
    """Derived figures for each model from the workers' raw results; the same-time budget."""
    curves = {
        name: [(epoch["seconds"], epoch["val_loss"]) for epoch in results[name]["epochs"]]
        for name in MODELS
    }
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
# Tables, benchmark.md and the plot
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
        rows.append(
            "| "
            + " | ".join(
                [
                    name,
                    f"{result['parameters']:,}",
                    str(result["batch_size"]),
                    str(figures["epochs"]),
                    _number(figures["final_val_loss"], 2),
                    _number(figures["val_loss_within_budget"], 2)
                    if figures["val_loss_within_budget"] is not None
                    else "no epoch finished",
                    "not reached" if reach is None else _number(reach, 1),
                    _number(figures["train_images_per_second"], 0),
                    _number(figures["seconds_per_epoch"], 1),
                    _number(figures["peak_memory_mib"], 0),
                    _number(figures["train_flops_per_image"] / 1e6, 1),
                    _number(figures["achieved_gflops"], 1),
                    _number(figures["percent_of_fp32_matmul_peak"], 1),
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def mean_and_deviation(values):
    """(mean, sample standard deviation; 0 for a single value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seeds_summary(runs):
    """The default model's final test -ELBO over the seeds it trained with."""
    finals = [run["epochs"][-1]["val_loss"] for run in runs]
    mean, deviation = mean_and_deviation(finals)
    return {
        "runs": [
            {
                "seed": run["config"]["seed"],
                "final_val_loss": run["epochs"][-1]["val_loss"],
                "training_seconds": run["epochs"][-1]["seconds"],
                "wall_seconds": run["epochs"][-1]["wall_seconds"],
            }
            for run in runs
        ],
        "mean_final_val_loss": mean,
        "sd_final_val_loss": deviation,
    }


def seeds_table(seeds):
    rows = [
        "| seed | final test -ELBO | training s | training + validation s |",
        "|" + " --- |" * 4,
    ]
    for run in seeds["runs"]:
        rows.append(
            f"| {run['seed']} | {run['final_val_loss']:.2f} | {run['training_seconds']:,.1f} "
            f"| {run['wall_seconds']:,.1f} |"
        )
    rows.append(
        f"| mean ± sd ({len(seeds['runs'])} seeds) | {seeds['mean_final_val_loss']:.2f} ± "
        f"{seeds['sd_final_val_loss']:.2f} | | |"
    )
    return "\n".join(rows)


def backends_table(backends):
    """One row per backend: the same model, images and seeds, timed in the same benchmark run.
    Speed is the first seed's last epoch; the test -ELBO is over every seed."""
    rows = [
        "| backend | version | training images | seeds | s/epoch (last) | train images/s | test -ELBO after "
        "the epochs, mean ± sd | each seed | peak memory MiB |",
        "|" + " --- |" * 9,
    ]
    for name, runs in backends.items():
        first = runs[0]
        finals = [run["final_val_loss"] for run in runs]
        mean, deviation = mean_and_deviation(finals)
        rows.append(
            "| "
            + " | ".join(
                [
                    name,
                    first["versions"].get(name, ""),
                    f"{first['train_images']:,}",
                    str(len(runs)),
                    _number(first["seconds_per_epoch"], 1),
                    _number(first["train_images_per_second"], 0),
                    f"{mean:.2f} ± {deviation:.2f}",
                    ", ".join(f"{value:.2f}" for value in finals),
                    _number(max(run["peak_memory_mib"] for run in runs), 0),
                ]
            )
            + " |"
        )
    return "\n".join(rows)


def machine_description():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in file if line.startswith("model name")),
                cpu,
            )
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
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_markdown(path, report):
    results, summary, machine, matmul = (
        report["results"],
        report["summary"],
        report["machine"],
        report["matmul_peak"],
    )
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
        f' included. "Within {summary["budget_seconds"]:,.1f} s" is the value of the last epoch finished within the'
        f" shorter run's duration; \"s to reach\" interpolates linearly between epochs to the baseline's final"
        f" test -ELBO ({summary['baseline_final_val_loss']:.2f}). Images/s and s/epoch use the median epoch after the"
        " first (which includes tracing).",
        "- FLOPs are counted from the layer shapes (Conv2D, Conv2DTranspose, Dense; 2 per multiply-add; training ="
        f" {TRAINING_FLOPS_PER_FORWARD} x forward). Peak memory is the worker process's ru_maxrss (data included).",
        f"- Matrix-multiply peak ({MATMUL_CHAIN} chained tf.matmul products of squares in one tf.function, best"
        f" of three; 1024 to 4096): float32 {matmul['float32']['gflops']:,.1f} GFLOP/s"
        f" ({matmul['float32']['size']}), bfloat16 {matmul['bfloat16']['gflops']:,.1f} GFLOP/s"
        f" ({matmul['bfloat16']['size']}).",
        f"- Machine: {machine['cpu']}, {machine['usable_cores']} usable of {machine['logical_cores']} logical cores,"
        f" {_number(machine['memory_gib'], 1)} GiB memory, accelerators: {', '.join(versions['gpus']) or 'none'};"
        f" Python {machine['python']}, TensorFlow {versions['tensorflow']}, Keras {versions['keras']}.",
        f"- Command: `{report['command']}`",
        "",
        "## The default over seeds",
        "",
        seeds_table(report["seeds"]),
        "",
        "- The default model's final test -ELBO (`val_loss`) with each seed: one seed's figure says little.",
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
            f" {settings['backend_epochs']} epochs with seeds {', '.join(map(str, settings['backend_seeds']))},"
            " on each backend in its own process with KERAS_BACKEND set;"
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
    for name, marker in zip(MODELS, ("o", "s"), strict=True):
        epochs = results[name]["epochs"]
        axes.plot(
            [epoch["seconds"] for epoch in epochs],
            [epoch["val_loss"] for epoch in epochs],
            marker=marker,
            markersize=4,
            label=f"{name} ({len(epochs)} epochs)",
        )
    axes.axhline(
        summary["baseline_final_val_loss"],
        color="grey",
        linestyle=":",
        linewidth=1,
        label="baseline's final value",
    )
    axes.axvline(
        summary["budget_seconds"],
        color="grey",
        linestyle="--",
        linewidth=1,
        label="same-time budget",
    )
    axes.set_xscale("log")
    # Plain numbers (5, 10, 20, 50, ...) rather than powers of ten: the range is often under a decade.
    axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes.set_xlabel("training wall-clock seconds (validation excluded, log scale)")
    axes.set_ylabel("test negative ELBO (nats/image)")
    default = results["default"]
    axes.set_title(
        f"Test negative ELBO vs training time ({default['train_images']:,} train / "
        f"{default['test_images']:,} test images)"
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)
