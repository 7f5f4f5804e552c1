"""Beyond two latent dimensions: a second anchor (the PyTorch examples' MLP VAE) and a
latent-size table.

    python benchmarks/latent_sizes.py baseline --data-dir ../shared/data/mnist
        the MLP VAE of the PyTorch examples (vae/main.py) alone, re-written in Keras: 10 epochs
        (a small share of a default run's time); its published test loss after 10 epochs is
        ~105.6 nats
    python benchmarks/latent_sizes.py compare --data-dir ../shared/data/mnist
        that MLP against `python main.py --latent-dim 20` (default epochs: a default run's
        time and more), each in its own process: test -ELBO after every epoch against
        training seconds (wall and CPU)
    python benchmarks/latent_sizes.py speed --data-dir ../shared/data/mnist
        training seconds per image of both, measured in turns in one process: on a machine
        shared with other work their ratio holds where absolute times do not
    python benchmarks/latent_sizes.py table --data-dir ../shared/data/mnist \\
        --fashion-data-dir ../shared/data/fashion_mnist --epochs 2
        `python main.py --latent-dim L` for L = 2, 4, 8, 16, 32 on MNIST and Fashion-MNIST, each
        run in its own process: test -ELBO, IW-NLL, KL, active units, training seconds, and the
        data's entropy floor beside them

Results go to benchmarks/results/latent_sizes/ (<part>.md, <part>.json, <part>.png;
speed.json); each run of `table` keeps its output folder (models/, plots/, logs/) under runs/
there, so
`tensorboard --logdir benchmarks/results/latent_sizes/runs` compares them in the HParams tab.

The MLP reads 28x28 images; this program pads them to 32x32. The padding pixels are 0, which
the model learns to predict at ~0 nats, so the figures of the two compare directly.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.reports import machine_description, number, plot_panels  # noqa: E402
from benchmarks.workers import clocks, fit_timed, run_in_subprocess  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = REPO / "benchmarks" / "results" / "latent_sizes"
# The PyTorch examples' vae/main.py: MLP 784-400-(20, 20), 20-400-784, Adam 1e-3, batch 128,
# 10 epochs.
MLP = {
    "hidden_units": 400,
    "latent_dim": 20,
    "learning_rate": 1e-3,
    "batch_size": 128,
    "epochs": 10,
}
MLP_PUBLISHED_TEST_LOSS = 105.6  # nats per image after 10 epochs, as that example reports it
COMPARE_LATENT_DIM = 20
BUDGETS = (60, 120, 180, 240, 300, 420, 600)  # training seconds at which the curves are compared
LATENT_SIZES = (2, 4, 8, 16, 32)
DATASETS = ("mnist", "fashion_mnist")
LABELS = {"mlp": "PyTorch example's MLP", "conv": f"main.py --latent-dim {COMPARE_LATENT_DIM}"}


def build_mlp_vae(
    latent_dim=MLP["latent_dim"], hidden_units=MLP["hidden_units"], image_size=28, seed=None
):
    """The PyTorch example's MLP encoder and decoder inside this project's VAE class and loss.

    The decoder's layer named "logits" is what the VAE's loss reads; "image" gives probabilities.
    """
    import keras
    from keras import layers

    from vae import VAE

    pixels = image_size * image_size
    image = keras.Input(shape=(image_size, image_size, 1), name="image")
    hidden = layers.Dense(hidden_units, activation="relu")(layers.Flatten()(image))
    z_mean = layers.Dense(latent_dim, name="z_mean")(hidden)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(hidden)
    encoder = keras.Model(image, [z_mean, z_log_var], name="encoder")
    z = keras.Input(shape=(latent_dim,), name="z")
    hidden = layers.Dense(hidden_units, activation="relu")(z)
    logits = layers.Reshape((image_size, image_size, 1), name="logits")(
        layers.Dense(pixels)(hidden)
    )
    decoder = keras.Model(z, layers.Activation("sigmoid", name="image")(logits), name="decoder")
    model = VAE(
        encoder, decoder, pixel_head=None, likelihood="bernoulli", seed=seed, name="mlp_vae"
    )
    model(keras.ops.zeros((1, image_size, image_size, 1)))  # create every weight now
    return model


def load_unpadded_images(config):
    """The training and test images at their 28x28, as the MLP reads them."""
    import data

    (train_images, _), (test_images, _) = data.load_dataset(
        config.dataset, config.data_dir, config.limit
    )
    return tuple(
        data.prepare_images(images, data.DATASETS["mnist"].original_size)
        for images in (train_images, test_images)
    )


def mlp_description(epochs):
    return (
        f"PyTorch example's MLP VAE in Keras: 784-{MLP['hidden_units']}-({MLP['latent_dim']}, "
        f"{MLP['latent_dim']}), 28x28, batch {MLP['batch_size']}, Adam {MLP['learning_rate']:g}, "
        f"{epochs} epochs"
    )


def conv_description(config):
    return (
        f"python main.py --latent-dim {config.latent_dim}: "
        f"{config.image_size}x{config.image_size}, "
        f"batch {config.batch_size}, Adam {config.learning_rate:g}"
        f"{' with cosine decay' if config.cosine_decay else ''}, {config.epochs} epochs"
    )


def train_worker(name, args):
    """Train the MLP ("mlp") or this program's model at latent 20 ("conv"); return its curve and
    final test figures (negative ELBO and IW-NLL with K = 32)."""
    import dataclasses

    import keras

    import data
    import evaluation
    import settings
    import training

    config = settings.Config(
        latent_dim=COMPARE_LATENT_DIM, data_dir=args.data_dir, limit=args.limit
    )
    keras.utils.set_random_seed(config.seed)
    if name == "mlp":
        keras.config.set_dtype_policy("float32")  # as in PyTorch, whatever this program's default
        train_images, test_images = load_unpadded_images(config)
        epochs, batch_size = args.epochs or MLP["epochs"], MLP["batch_size"]
        model = build_mlp_vae(seed=config.seed)
        model.compile(optimizer=keras.optimizers.Adam(MLP["learning_rate"]))
        description = mlp_description(epochs)
    else:
        config = dataclasses.replace(config, epochs=args.epochs)
        images = data.load_for(config)
        train_images, test_images = images.train_images, images.test_images
        config = settings.settled(config, images.colour, len(train_images))
        epochs, batch_size = config.epochs, config.batch_size
        model = training.make_model(config, len(train_images))
        description = conv_description(config)
    print(
        f"[{name}] {description}: {len(train_images)} training / {len(test_images)} test images",
        flush=True,
    )
    epoch_records = fit_timed(model, train_images, test_images, batch_size, epochs, config.seed)
    test = evaluation.evaluate(
        model, test_images, samples=config.iw_samples, seed=config.seed, verbose=False
    )
    return {
        "name": name,
        "description": description,
        "parameters": int(model.count_params()),
        "epochs": epoch_records,
        "test": test,
    }


def speed_ratio(args, images_per_round=6400, rounds=3):
    """Training seconds per image of both models, measured in turns within one process, so
    that other work on a shared machine slows both alike: their ratio holds where absolute
    times do not."""
    import keras

    import data
    import settings
    import training

    config = settings.Config(
        latent_dim=COMPARE_LATENT_DIM, data_dir=args.data_dir, limit=args.limit
    )
    keras.utils.set_random_seed(config.seed)
    train_images = data.load_for(config).train_images[:images_per_round]
    config = settings.settled(config, train_count=len(train_images))
    conv = training.make_model(config, len(train_images))
    mlp = build_mlp_vae(seed=config.seed)
    mlp.compile(optimizer=keras.optimizers.Adam(MLP["learning_rate"]))
    crop = (config.image_size - data.DATASETS["mnist"].original_size) // 2
    unpadded = train_images[
        :,
        crop : crop + data.DATASETS["mnist"].original_size,
        crop : crop + data.DATASETS["mnist"].original_size,
    ]
    models = {
        "mlp": (mlp, data.make_dataset(unpadded, MLP["batch_size"])),
        "conv": (conv, data.make_dataset(train_images, config.batch_size)),
    }
    seconds = {name: [] for name in models}
    for round_ in range(rounds + 1):  # the first round compiles: not counted
        for name, (model, dataset) in models.items():
            started = clocks()
            model.fit(dataset, epochs=1, verbose=0)
            if round_:
                seconds[name].append(
                    [
                        (now - start) / len(train_images)
                        for now, start in zip(clocks(), started, strict=True)
                    ]
                )
    per_image = {
        name: {
            "wall": float(np.median([wall for wall, _ in values])),
            "cpu": float(np.median([cpu for _, cpu in values])),
        }
        for name, values in seconds.items()
    }
    return {
        "per_image_seconds": per_image,
        "images_per_round": len(train_images),
        "rounds": rounds,
        "conv_over_mlp_wall": per_image["conv"]["wall"] / per_image["mlp"]["wall"],
        "conv_over_mlp_cpu": per_image["conv"]["cpu"] / per_image["mlp"]["cpu"],
    }


def run_worker(name, args):
    """train_worker(name) in a fresh Python process; its JSON result."""
    argv = [sys.executable, __file__, "worker", name]
    for flag in ("data_dir", "limit", "epochs"):
        if getattr(args, flag, None) is not None:
            argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
    return run_in_subprocess(argv, f"{name}: {shlex.join(argv[1:])}", cwd=REPO)


def best_within(curve, budget, clock="seconds"):
    """The lowest test -ELBO among the epochs finished within `budget` training seconds
    (None: none)."""
    reached = [epoch["val_loss"] for epoch in curve if epoch[clock] <= budget]
    return min(reached) if reached else None


def curve_rows(results):
    lines = [
        "| model | parameters | epochs | training s | test -ELBO per epoch (1 z sample; wall "
        "s, CPU s) | final test -ELBO (K = 32) | IW-NLL (K = 32) | KL | active units |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        test, curve = result["test"], result["epochs"]
        per_epoch = ", ".join(
            f"{epoch['val_loss']:.2f} ({epoch['seconds']:.0f}, {epoch.get('cpu_seconds', 0):.0f})"
            for epoch in curve
        )
        lines.append(
            f"| {result['description']} | {result['parameters']:,} | {len(curve)} | "
            f"{curve[-1]['seconds']:.1f} | {per_epoch} | {test['negative_elbo']:.2f} | "
            f"{test['iw_nll']:.2f} | {test['kl_loss']:.2f} | {test['active_units']} |"
        )
    return lines


def clock_scale(clock):
    """Seconds of `clock` per second of a machine with every core busy: 1 for wall seconds,
    the usable cores for CPU seconds (all threads of the process)."""
    return machine_description()["usable_cores"] if clock == "cpu_seconds" else 1


def clock_name(clock):
    cores = clock_scale("cpu_seconds")
    return f"CPU seconds / {cores} cores" if clock == "cpu_seconds" else "wall seconds"


def budget_rows(results, clock="seconds"):
    """Who is ahead at each budget of wall seconds ("seconds") or of CPU seconds divided by
    the usable cores ("cpu_seconds": what the run would take with every core busy)."""
    names = [LABELS[result["name"]] for result in results]
    scale = clock_scale(clock)
    lines = [
        f"| budget ({clock_name(clock)}) | "
        + " | ".join(f"{name}: best test -ELBO" for name in names)
        + " | ahead |",
        "| --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    for budget in BUDGETS:
        values = [best_within(result["epochs"], budget * scale, clock) for result in results]
        known = [
            (value, name) for value, name in zip(values, names, strict=True) if value is not None
        ]
        ahead = min(known)[1] if known else "-"
        lines.append(
            f"| {budget} s | " + " | ".join(number(value) for value in values) + f" | {ahead} |"
        )
    return lines


def plot_curves(path, results, clock="seconds"):
    """The test -ELBO after each epoch against training time, with the published figure."""
    scale = clock_scale(clock)
    curves = [
        (
            LABELS[result["name"]],
            [epoch[clock] / scale for epoch in result["epochs"]],
            [epoch["val_loss"] for epoch in result["epochs"]],
            "o-",
        )
        for result in results
    ]
    panel = {
        "curves": curves,
        "xlabel": f"{clock_name(clock)} of training (validation excluded)",
        "ylabel": "test negative ELBO, nats/image",
        "ylim": (None, 130),
        "hlines": [
            (MLP_PUBLISHED_TEST_LOSS, f"PyTorch example, published ({MLP_PUBLISHED_TEST_LOSS})")
        ],
    }
    plot_panels(path, [panel], f"MNIST, latent {COMPARE_LATENT_DIM}: test -ELBO after each epoch")


def run_table(args):
    """One `python main.py` process per dataset and latent size; returns their rows."""
    rows = []
    for dataset in args.datasets:
        data_dir = args.data_dir if dataset == "mnist" else args.fashion_data_dir
        for latent_dim in args.latent_sizes:
            output_dir = RESULTS / "runs" / f"{dataset}-latent{latent_dim}"
            argv = [
                sys.executable,
                str(REPO / "main.py"),
                "--dataset",
                dataset,
                "--latent-dim",
                str(latent_dim),
                "--epochs",
                str(args.epochs),
                "--output-dir",
                str(output_dir),
                "--fresh",
                "--run-name",
                f"{dataset}-latent{latent_dim}",
            ]
            argv += ["--data-dir", data_dir] if data_dir else []
            argv += ["--limit", str(args.limit)] if args.limit else []
            print(f"--- {shlex.join(argv[1:])}", flush=True)
            if subprocess.run(argv, cwd=REPO).returncode:
                sys.exit(
                    f"error: the run {dataset}, latent {latent_dim} failed; see its output above"
                )
            record = json.loads((output_dir / "models" / "metrics.json").read_text())
            test = record["test"]
            rows.append(
                {
                    "dataset": dataset,
                    "latent_dim": latent_dim,
                    **record["training"],
                    **{
                        name: test[name]
                        for name in (
                            "negative_elbo",
                            "iw_nll",
                            "kl_loss",
                            "reconstruction_loss",
                            "active_units",
                            "data_entropy_floor",
                            "kl_per_dimension",
                        )
                    },
                }
            )
    return rows


def table_rows(rows):
    lines = [
        "| dataset | latent | test -ELBO | IW-NLL (K = 32) | KL | active units | training s | "
        "data's floor | -ELBO above floor | IW-NLL above floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        floor = row["data_entropy_floor"]
        lines.append(
            f"| {row['dataset']} | {row['latent_dim']} | {row['negative_elbo']:.2f} | "
            f"{row['iw_nll']:.2f} | {row['kl_loss']:.2f} | {row['active_units']} of "
            f"{row['latent_dim']} | {row['training_seconds']:.0f} | {floor:.2f} | "
            f"{row['negative_elbo'] - floor:.2f} | {row['iw_nll'] - floor:.2f} |"
        )
    return lines


def plot_table(path, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for dataset in DATASETS:
        chosen = [row for row in rows if row["dataset"] == dataset]
        if not chosen:
            continue
        sizes = [row["latent_dim"] for row in chosen]
        (line,) = axes.plot(
            sizes,
            [row["negative_elbo"] for row in chosen],
            "o-",
            label=f"{dataset}: test -ELBO (floor {chosen[0]['data_entropy_floor']:.2f})",
        )
        axes.plot(
            sizes,
            [row["iw_nll"] for row in chosen],
            "s--",
            color=line.get_color(),
            label=f"{dataset}: IW-NLL, K = 32",
        )
    axes.set_xscale("log", base=2)
    axes.set_xticks(LATENT_SIZES, [str(size) for size in LATENT_SIZES])
    axes.set(
        xlabel="latent size",
        ylabel="nats per test image",
        title="Test negative log-likelihood against latent size",
    )
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(figure)


def write_report(part, command, started, lines, payload, plot):
    RESULTS.mkdir(parents=True, exist_ok=True)
    minutes = (time.time() - started) / 60
    header = [
        f"# {part}",
        "",
        f"Command: `{command}` ({minutes:.1f} minutes, {time.strftime('%Y-%m-%d %H:%M')})",
        "",
    ]
    (RESULTS / f"{part}.md").write_text("\n".join(header + lines) + "\n")
    (RESULTS / f"{part}.json").write_text(
        json.dumps({"command": command, "minutes": round(minutes, 1), **payload}, indent=2)
    )
    plot(RESULTS / f"{part}.png")
    print("\n".join(lines))
    print(f"Written: {RESULTS / part}.md, .json and .png")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parts = parser.add_subparsers(dest="part", required=True)
    for name, text in (
        ("baseline", "the MLP VAE alone"),
        ("compare", "the MLP against main.py --latent-dim 20"),
        ("table", "main.py at latent sizes 2 ... 32 on both datasets"),
        ("speed", "training seconds per image of both models, measured in turns"),
        ("worker", "internal: one training run, written to a JSON file"),
    ):
        part = parts.add_parser(
            name, help=text, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        part.add_argument("--data-dir", help="MNIST's IDX files (default: Keras' download cache)")
        part.add_argument(
            "--limit", type=int, help="first N training and N // 6 test images (quick tries)"
        )
        part.add_argument(
            "--epochs",
            type=int,
            help="epochs of every run (default: 10 for the MLP, main.py's default "
            "for the conv model; required for table)",
            required=name == "table",
        )
        if name == "table":
            part.add_argument(
                "--fashion-data-dir",
                help="Fashion-MNIST's IDX files (default: Keras' download cache)",
            )
            part.add_argument("--latent-sizes", type=int, nargs="+", default=list(LATENT_SIZES))
            part.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
        if name == "worker":
            part.add_argument("name", choices=("mlp", "conv"))
            part.add_argument("output")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.part == "speed":
        result = speed_ratio(args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "speed.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2))
        return
    if args.part == "worker":
        result = train_worker(args.name, args)
        Path(args.output).write_text(json.dumps(result))
        return
    command = "python " + shlex.join(
        ["benchmarks/latent_sizes.py", *(sys.argv[1:] if argv is None else argv)]
    )
    started = time.time()
    if args.part in ("baseline", "compare"):
        results = (
            [run_worker("mlp", args)]
            if args.part == "baseline"
            else [run_worker(name, args) for name in ("mlp", "conv")]
        )
        lines = curve_rows(results) + [""]
        if args.part == "compare":
            lines += budget_rows(results) + [""] + budget_rows(results, "cpu_seconds")
        write_report(
            args.part,
            command,
            started,
            lines,
            {"results": results},
            lambda path: plot_curves(path, results, "cpu_seconds"),
        )
    else:
        rows = run_table(args)
        write_report(
            "table",
            command,
            started,
            table_rows(rows),
            {"rows": rows},
            lambda path: plot_table(path, rows),
        )


if __name__ == "__main__":
    main()
