"""A run prints what the user needs and nothing that looks like a fault: no tf.function
retracing warning, no deprecation warning, no traceback."""

import numpy as np
import pytest
from PIL import Image

from conftest import quick_arguments, run_main

# What no run may print, in any case.
FAULTS = ("retracing", "deprecat", "traceback")


def faults(result):
    """The lines of a finished run's output (both streams) that look like a fault."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if any(fault in line.lower() for fault in FAULTS)]


@pytest.mark.slow
def test_a_colour_run_and_an_mnist_run_print_no_warning_or_traceback(tmp_path, mnist_dir):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    rng = np.random.default_rng(0)
    for index in range(60):
        pixels = rng.integers(0, 256, (20 + index % 9, 24, 3), np.uint8)
        Image.fromarray(pixels).save(pictures / f"{index:02d}.png")
    colour = ["--dataset", "folder", "--data-dir", str(pictures), "--image-size", "16"]
    colour += ["--epochs", "1", "--batch-size", "16", "--filters", "8", "--hidden-units", "32"]
    colour += ["--iw-samples", "4", "--dtype-policy", "float32"]
    for arguments in (
        colour + ["--output-dir", str(tmp_path / "colour")],
        quick_arguments(tmp_path / "mnist", mnist_dir),
    ):
        result = run_main(arguments, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Plots in" in result.stdout  # the whole run: trained, evaluated and drawn
        assert faults(result) == [], arguments
