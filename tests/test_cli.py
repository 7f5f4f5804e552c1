"""The command line: documented flags, refused bad values, one-line errors."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest

import main
import settings
from conftest import REPO, run_main


def test_help_documents_every_setting_with_its_default():
    result = run_main(["--help"])
    assert result.returncode == 0
    for config_field in dataclasses.fields(settings.Config):
        assert "--" + config_field.name.replace("_", "-") in result.stdout
    assert f"(default: {settings.Config().seed})" in result.stdout
    # Defaults that depend on the images say so; no flag shows "None".
    help_text = " ".join(result.stdout.split())
    assert "default 2 for grey images" in help_text and "4 per position" in help_text
    assert "auto: bernoulli for grey images, autoregressive for colour ones" in help_text
    assert "default 256 for grey images" in help_text and "64 for colour ones" in help_text
    assert "enough for 3,000 steps and at least 14 epochs for grey images" in help_text
    assert "(default: None)" not in help_text


@pytest.mark.parametrize(
    "arguments, status",
    [(["--help"], 0), (["--epochs", "0"], 2), (["--dataset", "cifar100"], 2)],
)
def test_help_and_a_refused_setting_answer_before_tensorflow_loads(arguments, status):
    """`python main.py --help`, or a setting it refuses, answers at once: the command line is
    read before TensorFlow, or Keras (which loads it), is imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", str(REPO / "main.py"), *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stderr.splitlines()
    imported = {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}
    assert "settings" in imported  # -X importtime names what main.py imports
    assert not {name.split(".")[0] for name in imported} & {"tensorflow", "keras"}
    assert result.returncode == status
    if status:
        [message] = [line for line in lines if not line.startswith("import time:")][-1:]
        assert message.startswith(f"main.py: error: argument {arguments[0]}: ")
    else:
        assert "--tensorflow-notices" in result.stdout


def readme_settings_table():
    """The settings table in README.md, between its two markers."""
    text = (REPO / "README.md").read_text()
    start = text.index("\n", text.index("<!-- settings table")) + 1
    return text[start : text.index("<!-- end of settings table -->")].strip()


def test_readme_flags_and_defaults_are_those_of_help():
    """Every flag --help shows is in README's table with the default --help gives it
    (`-` where --help says in words what happens without it), and no other."""
    listed = {}
    for row in readme_settings_table().splitlines()[2:]:
        flag_cell, default_cell = row.split(" | ")[:2]
        flag = re.search(r"--[a-z-]+", flag_cell).group()
        listed[flag] = default_cell.strip().strip("`")
    shown = {}
    for action in settings.make_parser()._actions:
        if action.option_strings and action.dest != "help":
            flag = max(action.option_strings, key=lambda option: not option.startswith("--no-"))
            shown[flag] = "–" if action.default is None else str(action.default)
    assert listed == shown


def test_readme_settings_table_says_what_settings_py_says():
    """Help texts and the settings a resume must match included: `python settings.py`
    rewrites the table."""
    assert readme_settings_table() == settings.markdown_table()


def test_a_resume_must_match_the_settings_that_shape_the_model_or_its_training():
    must_match = set(settings.RESUME_SETTINGS)
    assert {"latent_dim", "filters", "hidden_layers", "likelihood", "learning_rate"} <= must_match
    assert not {"output_dir", "dtype_policy", "plots", "iw_samples", "fresh"} & must_match


def test_tensorflow_start_up_notices_are_hidden_unless_asked_for(tmp_path):
    """A mistake ends in its one line on standard error, not under TensorFlow's notices
    (the CUDA probe's error on a machine without a GPU, oneDNN's notice)."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("TF_CPP_MIN_LOG_LEVEL", "TF_CONFIG")
    }
    command = [sys.executable, str(REPO / "main.py"), "--evaluate-only"]
    command += ["--output-dir", str(tmp_path)]
    quiet, noisy = (
        subprocess.run(arguments, env=environment, capture_output=True, text=True, timeout=120)
        for arguments in (command, [*command, "--tensorflow-notices"])
    )
    assert quiet.returncode == noisy.returncode == 1
    assert quiet.stderr.splitlines() == [
        f"error: {tmp_path / 'models' / 'vae.keras'}: no saved model there; train one first "
        "with python main.py"
    ]
    assert len(noisy.stderr.splitlines()) > 1


def test_flags_map_onto_config():
    config = settings.parse_args(
        ["--epochs", "3", "--latent-dim", "8", "--learning-rate", "0.01", "--no-plots"]
    )
    assert (config.epochs, config.latent_dim, config.learning_rate, config.plots) == (
        3,
        8,
        0.01,
        False,
    )
    assert settings.parse_args([]) == settings.Config()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--epochs", "0"], "must be a positive integer, got 0"),
        (["--latent-dim", "0"], "must be a positive integer, got 0"),
        (["--batch-size", "-1"], "must be a positive integer, got -1"),
        (["--learning-rate", "nan"], "must be a positive number, got nan"),
        (["--kl-warmup-epochs", "-1"], "must be 0 or a positive integer, got -1"),
        (["--image-every", "-1"], "must be 0 or a positive integer, got -1"),
        (["--image-size", "30"], "--image-size must be a multiple of 4"),
        (["--dataset", "cifar"], "invalid choice: 'cifar'"),
        (["--epochs", "two"], "invalid positive_int value: 'two'"),
        (["--limit", "5"], "--limit keeps N training and N // 6 test images: use 6 or more"),
        (
            ["--plot-class", "3"],
            "--plot-class draws one class of a conditional VAE: add --conditional",
        ),
        (
            ["--plot-class", "3", "--conditional", "--latent-dim", "3"],
            "--plot-class draws a class's 2-D manifold: it needs --latent-dim 2",
        ),
        (["--image-size", "24"], "at least 28 for --dataset mnist"),  # digits are padded
        (["--dataset", "cifar10", "--image-size", "18"], "a multiple of 4 and at least 4"),
        (["--test-split", "1"], "must be a number between 0 and 1, got 1"),
        (["--likelihood", "gaussian"], "invalid choice: 'gaussian'"),
        (["--colour", "cmyk"], "invalid choice: 'cmyk'"),
        (["--plot-class", "-1"], "must be 0 or a positive integer, got -1"),
    ],
)
def test_bad_values_are_refused_with_usage(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        settings.parse_args(arguments)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "usage:" in error and message in error


def test_defaults_that_depend_on_the_images_are_settled_by_their_colour():
    settled = settings.settled(settings.Config())
    assert (settled.colour, settled.latent_dim, settled.likelihood) == ("grey", 2, "bernoulli")
    assert not settled.spatial_latent
    settled = settings.settled(settings.Config(dataset="cifar10"))
    # Colour: z is an 8x8 map (a quarter of 32 pixels a side) of 4 channels.
    assert (settled.colour, settled.latent_dim, settled.likelihood) == (
        "rgb",
        8 * 8 * 4,
        "autoregressive",
    )
    assert settled.spatial_latent
    assert settings.settled(settings.Config(dataset="cifar10", image_size=48)).latent_dim == 576
    # What the user says wins; a latent size given alone is a vector; a folder's colour is
    # the images'.
    settled = settings.settled(
        settings.Config(dataset="cifar10", latent_dim=16, likelihood="bernoulli")
    )
    assert (settled.latent_dim, settled.likelihood, settled.spatial_latent) == (
        16,
        "bernoulli",
        False,
    )
    assert not settings.settled(
        settings.Config(dataset="cifar10", spatial_latent=False)
    ).spatial_latent
    assert (
        settings.settled(settings.Config(dataset="cifar10", spatial_latent=False)).latent_dim == 128
    )
    assert settings.settled(settings.Config(dataset="folder"), "rgb").latent_dim == 256
    assert settings.settled(settings.Config(spatial_latent=True)).latent_dim == 256
    assert settings.parse_args(["--dataset", "cifar10", "--image-size", "16"]).image_size == 16


@pytest.mark.parametrize(
    "dataset, colour, train_count, expected",
    [
        # MNIST keeps its 14 epochs of 235 steps of 256 (3,290 steps, over 3,000).
        ("mnist", None, 60000, (256, 14, 1)),
        # 3,029 colour images in batches of 64: 48 steps an epoch, 28 epochs for 1,300 steps.
        ("folder", "rgb", 3029, (64, 28, 1)),
        # 50,000 (CIFAR-10): 782 steps an epoch, 2 epochs; pictures every epoch.
        ("cifar10", None, 50000, (64, 2, 1)),
        # 1,000 grey images: batches of 32 for 16 steps an epoch or more (32 steps), 94 epochs
        # for 3,000 steps; pictures every 5 epochs.
        ("folder", "grey", 1000, (32, 94, 5)),
        # 100: the smallest batches, 16 (7 steps an epoch), 186 epochs; pictures every 9.
        ("folder", "rgb", 100, (16, 186, 9)),
    ],
)
def test_a_data_set_of_any_size_gets_enough_steps(dataset, colour, train_count, expected):
    config = settings.settled(settings.Config(dataset=dataset), colour, train_count)
    assert (config.batch_size, config.epochs, config.image_every) == expected
    line = main.chosen_schedule(settings.Config(dataset=dataset), config, train_count)
    assert f"{expected[1]} epochs of {train_count:,} images in batches of {expected[0]}" in line
    assert main.few_steps_advice(config, train_count) is None


def test_the_command_line_wins_over_the_chosen_schedule():
    given = settings.Config(dataset="folder", epochs=2, batch_size=16, image_every=0)
    config = settings.settled(given, "rgb", 3029)
    assert (config.batch_size, config.epochs, config.image_every) == (16, 2, 0)
    assert main.chosen_schedule(given, config, 3029) is None
    # One of the two given: the other is chosen, and the line says so.
    given = settings.Config(dataset="folder", batch_size=128)
    config = settings.settled(given, "rgb", 3029)
    assert (config.batch_size, config.epochs) == (128, 55)  # 24 steps an epoch
    assert "55 epochs" in main.chosen_schedule(given, config, 3029)


@pytest.mark.slow
def test_bad_data_dir_gives_one_line_error(tmp_path):
    result = run_main(["--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")])
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1]
        == f"error: {tmp_path}/train-images-idx3-ubyte.gz: file not found"
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--dataset", "folder"], "error: --dataset folder needs --data-dir DIR"),
        (
            ["--dataset", "cifar10", "--data-dir", "{tmp}"],
            "error: {tmp}: no CIFAR-10 batches there",
        ),
    ],
)
def test_colour_data_mistakes_give_one_line_error(tmp_path, arguments, message):
    arguments = [argument.format(tmp=tmp_path) for argument in arguments]
    with pytest.raises(SystemExit) as exit_info:
        main.main([*arguments, "--output-dir", str(tmp_path / "out")])
    assert exit_info.value.code.startswith(message.format(tmp=tmp_path))
    assert "\n" not in exit_info.value.code


@pytest.mark.parametrize("output", [".", "out", "0/out"])
def test_an_output_folder_inside_the_images_is_refused_before_anything_is_made(
    tmp_path, monkeypatch, output
):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "a.png").write_bytes(b"an image")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--dataset", "folder", "--data-dir", ".", "--output-dir", output])
    assert exit_info.value.code == (
        f"error: --output-dir {output} is inside --data-dir .: the run's models/, logs/ and "
        "plots/ would be read as classes or images; choose an --output-dir outside it"
    )
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["0", "a.png"]


ONEDNN_STATE = """
import json, sys
sys.path.insert(0, {repo!r})
import main
# A run that loads TensorFlow, then stops: there is no saved model to evaluate.
try:
    main.main(["--evaluate-only", "--output-dir", {output_dir!r}])
except SystemExit as stop:
    assert "no saved model there" in str(stop.code), stop.code
# TensorFlow's own answer: are its oneDNN kernels on?
from tensorflow.python.util import _pywrap_util_port
print(json.dumps(_pywrap_util_port.IsMklEnabled()))
"""


@pytest.mark.slow
@pytest.mark.parametrize("setting, expected", [(None, True), ("0", False)])
def test_onednn_is_on_unless_the_user_turns_it_off(setting, expected, tmp_path):
    """`python main.py` turns TensorFlow's oneDNN kernels on (faster here, off by TensorFlow's
    default on AMD CPUs); TF_ENABLE_ONEDNN_OPTS=0 in the environment still turns them off."""
    pytest.importorskip("tensorflow")
    environment = {
        name: value for name, value in os.environ.items() if name != "TF_ENABLE_ONEDNN_OPTS"
    }
    if setting is not None:
        environment["TF_ENABLE_ONEDNN_OPTS"] = setting
    result = subprocess.run(
        [sys.executable, "-c", ONEDNN_STATE.format(repo=str(REPO), output_dir=str(tmp_path))],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) is expected
