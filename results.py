"""What a trained VAE gives: its test figures (printed, in models/metrics.json and in
TensorBoard), the Projector's view of its latent space, the plots and the explorer page.
`evaluate_saved_model` (--evaluate-only) gives the same for a model saved earlier.
"""

import contextlib
import dataclasses
import functools
import json
import os
import platform

import keras
import numpy as np

import data
import evaluation
import explorer
import plotting
from projector import projector_sample, write_projector
from run_folder import (
    RunError,
    check_output_outside_images,
    check_writable,
    load_model_file,
    output_lock,
    read_metrics,
    write_atomically,
)
from settings import EVALUATION_SETTINGS, check_labels
from vae import draw_images, prior_transform


def finish(vae, config, images, run_name, training, trained=None):
    """Evaluate `vae` on the test images of `images` (data.ImageData), show its latent
    space in the Projector and draw the plots (unless --no-plots). `training`: the run's
    epochs and seconds; `trained`: the settings it was trained with (default: `config`'s)."""
    report(vae, config, images.test_images, images.test_labels, run_name, training, trained)
    show_in_projector(vae, images, config.output_dir, run_name)
    if config.plots:
        draw_plots(vae, config, images)


def evaluate_saved_model(config):
    """--evaluate-only: evaluate and plot models/vae.keras without training.

    The model file says its image size and colour, its latent size, its likelihood and
    whether it is conditional; `--dataset` must name the data it learned. The record keeps
    the settings the model was trained with; the command line's --iw-samples, --seed,
    --limit and --data-dir steer this evaluation and are recorded as its own. A folder's
    test set is the one the training run held out (its --seed and --test-split).
    """
    check_output_outside_images(config)
    check_writable(config.output_dir)
    with output_lock(config.output_dir):
        vae = load_model_file(os.path.join(config.output_dir, "models", "vae.keras"))
        previous = read_metrics(config.output_dir)
        shape = model_shape(vae)
        # Without a record (deleted, or from another program), what the model itself says.
        trained = previous.get("config") or {"dataset": config.dataset, **shape}
        if config.colour == "auto":
            config = dataclasses.replace(config, colour=shape["colour"])
        # Evaluating on other data would mislead silently.
        for name in ("dataset", "image_size", "colour"):
            expected = shape.get(name, trained.get(name))
            if expected != getattr(config, name):
                flag = "--" + name.replace("_", "-")
                raise RunError(
                    f"models/vae.keras in {config.output_dir} was trained with "
                    f"{flag} {expected}; add {flag} {expected}"
                )
        if config.plot_class is not None and not (vae.conditional and shape["latent_dim"] == 2):
            raise RunError(
                "--plot-class draws one class's 2-D manifold, and models/vae.keras in "
                f"{config.output_dir} is not a conditional VAE of latent size 2: leave it out"
            )
        config = dataclasses.replace(
            config,
            latent_dim=shape["latent_dim"],
            likelihood=shape["likelihood"],
            conditional=shape["conditional"],
        )
        # Another --seed draws another test set from a folder, training images among them.
        held_out = dataclasses.replace(
            config,
            seed=trained.get("seed", config.seed),
            test_split=trained.get("test_split", config.test_split),
        )
        images = data.load_for(held_out, test_only=True)
        check_labels(config, images)
        if vae.conditional and images.num_classes != vae.num_classes:
            raise RunError(
                f"models/vae.keras tells {vae.num_classes} classes apart, the images in "
                f"{config.data_dir} have {images.num_classes}; evaluate it on the data it learned"
            )
        run_name = previous.get("run_name", "evaluation")
        finish(vae, config, images, run_name, previous.get("training", {}), trained)
    return vae


def model_shape(vae):
    """The settings a saved VAE says itself: image size and colour, latent size,
    likelihood, conditional."""
    _, size, _, channels = vae.encoder.inputs[0].shape
    return {
        "image_size": size,
        "colour": "grey" if channels == 1 else "rgb",
        "latent_dim": vae.decoder.inputs[0].shape[-1],
        "likelihood": vae.likelihood,
        "conditional": vae.conditional,
    }


def report(vae, config, test_images, test_labels, run_name, training, trained=None):
    """Evaluate on the test set; print, write models/metrics.json and log to TensorBoard.

    `trained`: the settings the model was trained with (default: `config`'s)."""
    print(f"Evaluating on {len(test_images)} test images with K = {config.iw_samples} samples each")
    metrics = evaluation.evaluate(
        vae, test_images, test_labels, samples=config.iw_samples, seed=config.seed
    )
    floor = metrics["data_entropy_floor"]
    print(
        f"Test negative ELBO {metrics['negative_elbo']:.2f} nats/image = "
        f"{metrics['bits_per_dim']:.3f} bits/dim (reconstruction "
        f"{metrics['reconstruction_loss']:.2f} + KL {metrics['kl_loss']:.2f}); importance-weighted "
        f"NLL {metrics['iw_nll']:.2f} = {metrics['iw_bits_per_dim']:.3f} bits/dim (K = "
        f"{metrics['iw_samples']}); {metrics['likelihood']} likelihood, "
        f"{metrics['dimensions']:,} dimensions per image"
        + ("" if floor is None else f"; the data's floor {floor:.2f}")
    )
    for line in latent_report(metrics):
        print(line)
    print(
        f"Lossless coders on {metrics['coder_images']:,} of these test images, each alone: PNG "
        f"{metrics['png_bits_per_dim']:.3f} bits/dim, WebP {metrics['webp_bits_per_dim']:.3f} "
        f"(the model's importance-weighted figure: {metrics['iw_bits_per_dim']:.3f})"
    )
    trained = trained or dataclasses.asdict(config)
    record = {
        "run_name": run_name,
        "test": metrics,
        "training": training,
        "config": trained,
        "evaluation": {name: getattr(config, name) for name in EVALUATION_SETTINGS},
        "versions": {
            "python": platform.python_version(),
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "numpy": np.__version__,
        },
    }
    with contextlib.suppress(ImportError):
        import tensorflow as tf

        record["versions"]["tensorflow"] = tf.__version__
        evaluation.write_tensorboard_summary(
            os.path.join(config.output_dir, "logs", run_name), trained, metrics, training
        )
    write_atomically(
        os.path.join(config.output_dir, "models", "metrics.json"), json.dumps(record, indent=2)
    )
    return metrics


def latent_report(metrics):
    """What z carries, in one line, and a second line of advice where it carries almost
    nothing."""
    share, active = metrics["rate_share"], metrics["active_units"]
    lines = [
        f"The latent carries {metrics['rate_bits_per_dim']:.3f} bits/dim, {100 * share:.1f}% of "
        f"the total; {active} of {len(metrics['kl_per_dimension'])} latent dimensions active; "
        f"the decoder's image at z_mean: PSNR {metrics['decoder_psnr']:.2f} dB (the mean image: "
        f"{metrics['mean_image_psnr']:.2f} dB)"
    ]
    if share < evaluation.COLLAPSED_RATE_SHARE or not active:
        lines.append(
            "The latent carries almost nothing: the likelihood codes the images without z. "
            "Train longer (--epochs), weight the KL term less (--beta 0.5), or let the "
            "decoder alone draw the images (--likelihood discretized_logistic)."
        )
    return lines


def show_in_projector(vae, images, output_dir, run_name):
    """The test images' z_mean, classes and pictures for TensorBoard's Projector
    (projector.py), in the run's folder under logs/."""
    count = projector_sample(*images.test_images.shape[:2])
    test_images = images.test_images[:count]
    labels = None if images.test_labels is None else images.test_labels[:count]
    z_mean = plotting.encode(vae.encoder, test_images, labels)
    log_dir = os.path.join(output_dir, "logs", run_name)
    with contextlib.suppress(ImportError):  # TensorFlow writes TensorBoard's files
        count = write_projector(log_dir, z_mean, test_images, labels, images.class_names)
        print(f"The latent space of {count} test images is in TensorBoard's Projector")


def draw_plots(vae, config, images):
    """The plots of the test images in `images` (data.ImageData)."""
    plots_dir = os.path.join(config.output_dir, "plots")
    plotting.plot_all(
        vae.encoder,
        vae.decoder,
        images.test_images,
        images.test_labels,
        images.class_names,
        plots_dir,
        seed=config.seed,
        plot_class=config.plot_class,
        draw=None
        if vae.pixel_head is None
        else functools.partial(draw_images, vae, seed=config.seed),
        prior=prior_transform(vae),
    )
    explorer.write_explorer(
        vae.encoder,
        vae.decoder,
        images.test_images,
        images.test_labels,
        images.class_names,
        os.path.join(plots_dir, "explorer.html"),
    )
    print(f"Plots in {plots_dir}; open explorer.html in a browser to move through z")
