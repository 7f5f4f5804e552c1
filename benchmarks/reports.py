"""The benchmark's reports: figures read off the workers' curves, the tables, benchmark.md
and the plot of the test -ELBO against training FLOPs and seconds.

Everything here is pure: it reads the workers' results and times nothing.
"""

import math
import os
import platform
import statistics
from pathlib import Path

from benchmarks.peak import MATMUL_CHAIN
from benchmarks.workers import MODELS
from flops import TRAINING_FLOPS_PER_FORWARD

"""
## Reading the curves (pure functions, no timing)
"""


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
    summary = {"budget_seconds": budget, "baseline_final_val_loss": target, "models": {}}
    for name in MODELS:
        result, curve = results[name], curves[name]
        epoch_seconds = steady_epoch_seconds([seconds for seconds, _ in curve])
        images_per_second = result["train_images"] / epoch_seconds
        achieved = result["train_flops_per_image"] * images_per_second / 1e9
        # Measured against the peak of the dtype the layers compute in.
        dtype = result.get("compute_dtype", "float32")
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
            "compute_dtype": dtype,
            "percent_of_matmul_peak": 100 * achieved / matmul[dtype]["gflops"],
        }
    return summary


"""
## Tables, benchmark.md and the plot
"""


def number(value, digits=2, missing="-"):
    """`value` with thousands separators and `digits` decimals; `missing` for None."""
    return missing if value is None else f"{value:,.{digits}f}"


def markdown_table(results, summary):
    budget = summary["budget_seconds"]
    header = (
        "| model | parameters | batch | epochs | final test -ELBO | test -ELBO within "
        f"{budget:,.1f} s | s to reach baseline's final | train images/s (steady epoch) | "
        "s/epoch | peak memory MiB | training MFLOP/image | GFLOP/s (steady epoch) | "
        "% of the matmul peak (its dtype) |"
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
                    number(figures["final_val_loss"], 2),
                    number(figures["val_loss_within_budget"], 2)
                    if figures["val_loss_within_budget"] is not None
                    else "no epoch finished",
                    "not reached" if reach is None else number(reach, 1),
                    number(figures["train_images_per_second"], 0),
                    number(figures["seconds_per_epoch"], 1),
                    number(figures["peak_memory_mib"], 0),
                    number(figures["train_flops_per_image"] / 1e6, 1),
                    number(figures["achieved_gflops"], 1),
                    f"{number(figures['percent_of_matmul_peak'], 1)} ({figures['compute_dtype']})",
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
        "| backend | version | training images | seeds | s/epoch (last) | train images/s | "
        "test -ELBO after the epochs, mean ± sd | each seed | peak memory MiB |",
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
                    number(first["seconds_per_epoch"], 1),
                    number(first["train_images_per_second"], 0),
                    f"{mean:.2f} ± {deviation:.2f}",
                    ", ".join(f"{value:.2f}" for value in finals),
                    number(max(run["peak_memory_mib"] for run in runs), 0),
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


def schedules_table(schedules, matmul):
    """One row per complete schedule: its share of a default run's training FLOPs, epochs,
    TFLOP, final test -ELBO, and the seconds, speed and share of the peak of the same run."""
    rows = [
        "| model | budget (x a default run) | epochs | training TFLOP | final test -ELBO | "
        "training s | train images/s (whole run) | GFLOP/s (whole run) | "
        "% of the matmul peak (its dtype) |",
        "|" + " --- |" * 9,
    ]
    for name in MODELS:
        for budget in sorted(schedules[name]):
            run = schedules[name][budget]
            seconds = run["epochs"][-1]["seconds"]
            images_per_second = run["train_images"] * len(run["epochs"]) / seconds
            achieved = run["training_flops"] / seconds / 1e9
            dtype = run["compute_dtype"]
            peak = 100 * achieved / matmul[dtype]["gflops"]
            rows.append(
                f"| {name} | {budget:g} | {len(run['epochs'])} | "
                f"{number(run['training_flops'] / 1e12, 1)} | "
                f"{number(run['epochs'][-1]['val_loss'])} | {number(seconds, 1)} | "
                f"{number(images_per_second, 0)} | {number(achieved, 1)} | "
                f"{number(peak, 1)} ({dtype}) |"
            )
    return "\n".join(rows)


def coders_line(result):
    """What PNG and lossless WebP spend on a run's test images, beside its own final figure
    in bits per dimension (the same test images, each coded alone)."""
    coders, values = result["coders"], result["values_per_image"]
    final = result["epochs"][-1]["val_loss"] / (values * math.log(2))
    likelihood = result["config"]["likelihood"]
    line = (
        f"Lossless coders on {coders['coder_images']:,} of the test images: PNG "
        f"{coders['png_bits_per_dim']:.3f} bits/dim, WebP {coders['webp_bits_per_dim']:.3f}; "
        f"{result['name']}'s final test -ELBO {final:.3f} bits/dim ({likelihood})"
    )
    latent = result.get("latent")
    if latent:
        line += (
            f", of which z carries {latent['rate_bits_per_dim']:.3f} "
            f"({100 * latent['rate_share']:.1f}%) in {latent['active_units']} active "
            f"dimensions; the decoder's image at z_mean: PSNR {latent['decoder_psnr']:.2f} dB "
            f"(the mean image: {latent['mean_image_psnr']:.2f} dB)"
        )
    return line


def quality_section(report):
    return [
        "## Quality against training FLOPs",
        "",
        schedules_table(report["schedules"], report["matmul_peak"]),
        "",
        "- Each row is a complete schedule (the step size's warm-up and decay span its epochs) "
        "of the given share of a default run's training FLOPs; the test -ELBO is its last "
        "epoch's. FLOPs do not depend on the machine; seconds, images/s and the share of the "
        "peak are this machine's, in the same run, over the whole run (the first epoch's "
        "tracing included); the table below gives a steady epoch's. The plot: elbo_vs_flops.png.",
        "",
    ]


def full_runs_section(report):
    """The two runs at budget 1 side by side, and how each figure was measured."""
    results, summary, settings = report["results"], report["summary"], report["settings"]
    default = results["default"]
    subset = f"the first ones, --limit {settings['limit']}" if settings["limit"] else "all"
    return [
        "## The two full runs, epoch by epoch",
        "",
        markdown_table(results, summary),
        "",
        f"- Data: {default['train_images']:,} training and {default['test_images']:,} test "
        f"images of {settings['dataset']} ({subset}). Test -ELBO is `val_loss`: the negative "
        "ELBO on the test images in nats/image, one z sample per image.",
        f"- {coders_line(default)}",
        f"- default: {default['description']}.",
        f"- baseline: {results['baseline']['description']}.",
        "- Times are training wall-clock seconds from the start of `fit`, validation passes "
        f'excluded, graph tracing included. "Within {summary["budget_seconds"]:,.1f} s" is the '
        'value of the last epoch finished within the shorter run\'s duration; "s to reach" '
        "interpolates linearly between epochs to the baseline's final test -ELBO "
        f"({summary['baseline_final_val_loss']:.2f}). Images/s and s/epoch use the median "
        "epoch after the first (which includes tracing).",
        "- FLOPs are counted from the layer shapes (Conv2D, Conv2DTranspose, Dense; 2 per "
        f"multiply-add; training = {TRAINING_FLOPS_PER_FORWARD} x forward). Peak memory is "
        "the worker process's ru_maxrss (data included).",
        *machine_notes(report),
        "",
    ]


def machine_notes(report):
    """The matmul peak, the machine and the command: what the seconds were measured on."""
    machine, versions = report["machine"], report["results"]["default"]["versions"]
    float32, bfloat16 = report["matmul_peak"]["float32"], report["matmul_peak"]["bfloat16"]
    cores = f"{machine['usable_cores']} usable of {machine['logical_cores']} logical cores"
    accelerators = ", ".join(versions["gpus"]) or "none"
    return [
        f"- Matrix-multiply peak ({MATMUL_CHAIN} chained tf.matmul products of squares in one "
        f"tf.function, best of three; 1024 to 4096): float32 {float32['gflops']:,.1f} GFLOP/s "
        f"({float32['size']}), bfloat16 {bfloat16['gflops']:,.1f} GFLOP/s "
        f"({bfloat16['size']}). A run's share is of the peak of the dtype its layers compute in.",
        f"- Machine: {machine['cpu']}, {cores}, {number(machine['memory_gib'], 1)} GiB memory, "
        f"accelerators: {accelerators}; Python {machine['python']}, TensorFlow "
        f"{versions['tensorflow']}, Keras {versions['keras']}.",
        f"- Command: `{report['command']}`",
    ]


def seeds_section(report):
    return [
        "## The default over seeds",
        "",
        seeds_table(report["seeds"]),
        "",
        "- The default model's final test -ELBO (`val_loss`) with each seed, a full default "
        "run each: one seed's figure says little.",
        "",
    ]


def backends_section(report):
    settings = report["settings"]
    seeds = ", ".join(map(str, settings["backend_seeds"]))
    return [
        "## Keras backends",
        "",
        backends_table(report["backends"]),
        "",
        f"- The default model on the first {settings['backend_images']:,} training images "
        f"for {settings['backend_epochs']} epochs with seeds {seeds}, on each backend in its "
        "own process with KERAS_BACKEND set; s/epoch is the last epoch's training time "
        "(validation excluded), so the first epoch's tracing or compilation is left out. "
        "The data pipeline is tf.data on every backend.",
        "",
    ]


def peer_rows(peer):
    """(model, dtype, mode, result) of each row of the program against its peer: the
    program's in each dtype, then each of the peer's variants."""
    rows = [("program", dtype, "Keras fit", run) for dtype, run in peer["program"].items()]
    return rows + [
        ("peer", variant["dtype"], variant["mode"], {**peer["peer"], **variant})
        for variant in peer["peer"]["variants"]
    ]


def peer_ratios(peer):
    """For each dtype: the program's images/s, the peer's best (and its mode) and their
    ratio; the peer's best is None where every variant failed."""
    ratios = {}
    for dtype, run in peer["program"].items():
        timed = [
            variant
            for variant in peer["peer"]["variants"]
            if variant["dtype"] == dtype and "error" not in variant
        ]
        best = max(timed, key=lambda variant: variant["train_images_per_second"], default=None)
        program = run["train_images_per_second"]
        ratios[dtype] = {
            "program": program,
            "peer_best": best and best["train_images_per_second"],
            "peer_mode": best and best["mode"],
            "ratio": best and program / best["train_images_per_second"],
        }
    return ratios


def peer_table(peer, matmul):
    """The program and its PyTorch peer on the same images: images/s over the last epoch,
    GFLOP/s and its share of the matmul peak of the row's dtype; then, per dtype, the
    program's images/s over the peer's best."""
    rows = [
        "| model | dtype | mode | train images/s (last epoch) | GFLOP/s | "
        "% of the matmul peak (its dtype) | images per CPU second |",
        "|" + " --- |" * 7,
    ]
    for model, dtype, mode, result in peer_rows(peer):
        if "error" in result:
            rows.append(f"| {model} | {dtype} | {mode} | failed: {result['error']} | - | - | - |")
            continue
        speed = result["train_images_per_second"]
        achieved = result["train_flops_per_image"] * speed / 1e9
        share = 100 * achieved / matmul[dtype]["gflops"]
        per_cpu_second = number(result.get("train_images_per_cpu_second"), 0)
        rows.append(
            f"| {model} | {dtype} | {mode} | {number(speed, 0)} | {number(achieved, 1)} | "
            f"{number(share, 1)} | {per_cpu_second} |"
        )
    rows += ["", "| dtype | program images/s | peer's best images/s | program / peer |"]
    rows.append("|" + " --- |" * 4)
    for dtype, ratio in peer_ratios(peer).items():
        best = ratio["peer_best"]
        peer_text = (
            "every variant failed" if best is None else f"{number(best, 0)} ({ratio['peer_mode']})"
        )
        rows.append(
            f"| {dtype} | {number(ratio['program'], 0)} | {peer_text} | "
            f"{number(ratio['ratio'], 2)} |"
        )
    return "\n".join(rows)


def peer_section(report):
    peer, settings = report["peer"], report["settings"]
    first = next(iter(peer["program"].values()))
    return [
        "## The program against its PyTorch peer",
        "",
        peer_table(peer, peer["matmul"]),
        "",
        f"- The default model on the first {peer['peer']['train_images']:,} training images "
        f"({peer['peer'].get('test_images', 0):,} test images validate each epoch), batch "
        f"{peer['peer']['batch_size']}, {settings['backend_epochs']} epochs; a row's speed is "
        "its last epoch's, validation excluded, so tracing and compilation are left out; on a "
        "shared machine compare images per CPU second (all the process's threads). The "
        "program trains with Keras' fit in each dtype policy (bfloat16: mixed_bfloat16); its "
        "peer (benchmarks/torch_peer.py) is the same model in plain PyTorch "
        f"{peer['peer']['torch']} on {peer['peer']['threads']} threads, channels-last, with "
        "bfloat16 autocast, eager and with torch.compile.",
        f"- The same arithmetic: {peer['peer']['train_flops_per_image'] / 1e6:,.2f} training "
        f"MFLOP per image counted from the peer's layers, "
        f"{first['train_flops_per_image'] / 1e6:,.2f} from the program's; "
        f"{peer['peer']['parameters']:,} weights in the peer; the program's model counts "
        f"{first['parameters']:,}, its KL weight (not trained) among them.",
        f"- Matrix-multiply peak in the same run: float32 "
        f"{peer['matmul']['float32']['gflops']:,.1f} GFLOP/s, bfloat16 "
        f"{peer['matmul']['bfloat16']['gflops']:,.1f} GFLOP/s.",
        f"- Machine: {report['machine']['cpu']}, {report['machine']['usable_cores']} usable "
        f"cores. Command: `{report['command']}`",
        "",
    ]


def write_markdown(path, report):
    """benchmark.md: the schedules, the two full runs, the default over seeds and, if they
    ran, the backends; each table with how its figures were measured."""
    lines = [
        "# Benchmark: default VAE vs the Keras example's VAE",
        "",
        *quality_section(report),
        *full_runs_section(report),
        *seeds_section(report),
    ]
    if report.get("backends"):
        lines += backends_section(report)
    if report.get("peer"):
        lines += peer_section(report)
    Path(path).write_text("\n".join(lines))


def plot_panels(path, panels, title=None):
    """Curves side by side, one panel per dict of `panels`: "curves" [(label, xs, ys,
    matplotlib format)], "xlabel", "ylabel", optional "log_x", "hlines" and "vlines" [(value,
    label)]. Log axes show plain numbers (5, 10, 20, 50, ...): the ranges are often under a
    decade."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, axes_row = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.8), squeeze=False)
    for axes, panel in zip(axes_row[0], panels, strict=True):
        for label, xs, ys, style in panel["curves"]:
            axes.plot(xs, ys, style, markersize=5, label=label)
        for value, label in panel.get("hlines", []):
            axes.axhline(value, color="grey", linestyle=":", linewidth=1, label=label)
        for value, label in panel.get("vlines", []):
            axes.axvline(value, color="grey", linestyle="--", linewidth=1, label=label)
        if panel.get("log_x"):
            axes.set_xscale("log")
            axes.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
            axes.xaxis.set_major_formatter(
                matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
            )
            axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes.set(xlabel=panel["xlabel"], ylabel=panel["ylabel"], ylim=panel.get("ylim"))
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(figure)


def plot_quality(path, schedules):
    """The test -ELBO against training TFLOP (a machine's speed plays no part) and against
    training seconds (this machine's): each model's schedules' final values, and the
    per-epoch curve of its longest schedule."""
    by_flops, by_seconds = [], []
    for index, name in enumerate(MODELS):
        marker, colour = "os"[index], f"C{index}"  # one colour per model, in both panels
        runs = [schedules[name][budget] for budget in sorted(schedules[name])]
        finals = [run["epochs"][-1]["val_loss"] for run in runs]
        tflop = [run["training_flops"] / 1e12 for run in runs]
        seconds = [run["epochs"][-1]["seconds"] for run in runs]
        longest = runs[-1]
        per_epoch = longest["training_flops"] / len(longest["epochs"]) / 1e12
        curve = [epoch["val_loss"] for epoch in longest["epochs"]]
        label, epochs_label = f"{name}: complete schedules", f"{name}: epochs of the longest"
        by_flops += [
            (label, tflop, finals, f"{marker}-{colour}"),
            (epochs_label, [per_epoch * (k + 1) for k in range(len(curve))], curve, f":{colour}"),
        ]
        by_seconds += [
            (label, seconds, finals, f"{marker}-{colour}"),
            (epochs_label, [epoch["seconds"] for epoch in longest["epochs"]], curve, f":{colour}"),
        ]
    top = max(schedules["baseline"][min(schedules["baseline"])]["epochs"][-1]["val_loss"], 150)
    ylabel = "test negative ELBO (nats/image, final)"
    panels = [
        {
            "curves": by_flops,
            "xlabel": "training TFLOP (log scale)",
            "ylabel": ylabel,
            "log_x": True,
            "ylim": (None, top + 5),
        },
        {
            "curves": by_seconds,
            "xlabel": "training seconds on this machine (log scale)",
            "ylabel": ylabel,
            "log_x": True,
            "ylim": (None, top + 5),
        },
    ]
    images = schedules["default"][max(schedules["default"])]["train_images"]
    plot_panels(path, panels, f"Quality against cost ({images:,} training images)")
