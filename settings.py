"""Every setting of a run, declared once in SETTINGS: its flag, default, type and check,
help text, and whether a resumed run must match it.

Everything else derives from SETTINGS: the `Config` dataclass a run reads, the command line
and its --help, the settings table in README.md (`markdown_table`; tests/test_cli.py checks
that the README shows it), the settings a resume must match (`RESUME_SETTINGS`, which
run_folder.py checks) and the HParams record in TensorBoard (the whole Config).

A new setting is one `Setting(...)` below and the code that reads `config.<name>`.
"""

import argparse
import dataclasses
import math
from dataclasses import dataclass

import data

# settings.py imports no TensorFlow, nor any module that does: main.py reads the command
# line before TensorFlow loads, so --help and a refused setting answer at once. The model
# and distribution modules take the choices they need from here.

# Each --likelihood, and how many numbers per pixel and channel the decoder gives for it.
LIKELIHOOD_PARAMETERS = {"bernoulli": 1, "discretized_logistic": 2, "autoregressive": 2}
# Each --distribute (distribution.py).
DISTRIBUTE_MODES = ("none", "mirrored", "multi-worker")

# Settings whose best value depends on the images' colour, for a run that leaves them unset:
# grey digits and clothes are drawn in a 2-D latent space with the classic Bernoulli loss,
# in large batches; colour pictures need more than two numbers, a likelihood of their 8-bit
# values that reads each pixel's neighbours, and smaller batches, as colour data sets are
# often a few thousand images. Epochs: at least `epochs`, and enough for `steps` steps.
COLOUR_DEFAULTS = {
    "grey": {
        "latent_dim": 2,
        "spatial_latent": False,
        "prior": "standard",
        "likelihood": "bernoulli",
        "batch_size": 256,
        "learning_rate": 4e-3,
        "epochs": 14,
        "steps": 3000,
    },
    "rgb": {
        "latent_dim": 128,  # as a vector (--no-spatial-latent)
        "spatial_latent": True,
        "prior": "gaussian",
        "likelihood": "autoregressive",
        "batch_size": 64,
        "learning_rate": 2e-3,
        "epochs": 1,
        "steps": 1300,
    },
}
GREY, RGB = COLOUR_DEFAULTS["grey"], COLOUR_DEFAULTS["rgb"]
# An automatic batch size is halved, down to MIN_BATCH_SIZE images, until an epoch makes at
# least MIN_EPOCH_STEPS steps: many epochs of a few large steps learn less for their time.
MIN_EPOCH_STEPS, MIN_BATCH_SIZE = 16, 16
# A spatial z left to its default has this many channels at each position of its map.
LATENT_MAP_CHANNELS = 4


def latent_map_side(image_size):
    """A spatial z's map is this many positions a side: the image's size after the two
    stride-2 convolutions."""
    return image_size // 4


# TensorBoard's pictures about this many times in a run, when --image-every is left unset.
IMAGE_LOGS = 20
# --limit N keeps N training and N // LIMIT_TEST_SHARE test images.
LIMIT_TEST_SHARE = 6


def checked(convert, test, requirement):
    """An argparse type: `convert` the flag's text, then refuse a value failing `test`, with
    "must be `requirement`". Named after `requirement` for argparse's own messages."""

    def parse(text):
        value = convert(text)
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
        return value

    parse.__name__ = requirement.removeprefix("a ").replace(" ", "_")
    return parse


positive_int = checked(int, lambda value: value > 0, "a positive integer")
positive_int.__name__ = "positive_int"
non_negative_int = checked(int, lambda value: value >= 0, "0 or a positive integer")
positive_float = checked(
    float, lambda value: math.isfinite(value) and value > 0, "a positive number"
)
non_negative_float = checked(
    float, lambda value: math.isfinite(value) and value >= 0, "0 or a positive number"
)
fraction = checked(float, lambda value: 0 < value < 1, "a number between 0 and 1")


@dataclass(frozen=True)
class Setting:
    """One setting: `--name` on the command line, `config.name` in the program.

    `type` parses and checks the flag's text (bool: a --name / --no-name pair); `resume`:
    a backup made with another value must not go on under this one, because the value
    changes what the weights mean or the path training takes to them; `evaluation`: it
    steers an evaluation, not the model, and is recorded as the evaluation's own."""

    name: str
    default: object
    help: str
    type: object = str
    choices: tuple = None
    resume: bool = False
    evaluation: bool = False

    @property
    def flag(self):
        return "--" + self.name.replace("_", "-")


SETTINGS = (
    # Data
    Setting(
        "dataset",
        "mnist",
        "which images to learn: "
        + "; ".join(f"{name}, {entry.description}" for name, entry in data.DATASETS.items()),
        choices=tuple(data.DATASETS),
        resume=True,
    ),
    Setting(
        "data_dir",
        None,
        "where the images are, for a data set without a download or offline: "
        + "; ".join(f"for {name}, {entry.files}" for name, entry in data.DATASETS.items())
        + ". Default: Keras' download",
        evaluation=True,
    ),
    Setting(
        "limit",
        None,
        f"use only the first N training and N // {LIMIT_TEST_SHARE} test images (quick tries)",
        positive_int,
        resume=True,
        evaluation=True,
    ),
    Setting(
        "image_size",
        32,
        "the model's image size, a multiple of 4 (two stride-2 layers): MNIST's 28x28 digits "
        "are padded to it, other images resized",
        positive_int,
        resume=True,
    ),
    Setting(
        "colour",
        "auto",
        "grey (one channel) or rgb (three): images are converted to it; auto keeps the data's "
        "own (a folder is grey if every image is)",
        choices=("auto", *COLOUR_DEFAULTS),
        resume=True,
    ),
    Setting(
        "test_split",
        0.2,
        "--dataset folder: the share of its images held out, by --seed, as the test set",
        fraction,
        resume=True,
    ),
    # Model
    Setting(
        "latent_dim",
        None,
        f"dimensions of z; default {GREY['latent_dim']} for grey images (the latent space drawn "
        f"directly), {LATENT_MAP_CHANNELS} per position of a spatial z's map for colour ones "
        "(256 at 32x32; above 2 the plots show principal components and traversals)",
        positive_int,
        resume=True,
    ),
    Setting(
        "spatial_latent",
        None,
        "z as a map at a quarter of the image's size (convolutions on both sides) rather than "
        "a vector (dense layers): each position codes its own patch, so the picture's layout "
        f"costs little to carry; default: off for grey images, on for colour ones whose "
        f"--latent-dim is left unset, which then gets {LATENT_MAP_CHANNELS} channels per position",
        bool,
        resume=True,
    ),
    Setting(
        "prior",
        "auto",
        "p(z): standard, N(0, I); or gaussian, a Gaussian over all of z's dimensions together, "
        "learned with the model: a map's positions then go together as a picture's patches do, "
        "in z drawn from it and in what z costs to code; auto: "
        f"{GREY['prior']} for grey images, {RGB['prior']} for colour ones",
        choices=("auto", "standard", "gaussian"),
        resume=True,
    ),
    Setting(
        "likelihood",
        "auto",
        "p(x|z): bernoulli (cross-entropy of grey levels, the classic MNIST loss), "
        "discretized_logistic (a probability for each of the 256 levels of 8-bit data) or "
        "autoregressive (a mixture of logistics per pixel that also reads the pixels above and "
        f"to the left, docs/colour.md); auto: {GREY['likelihood']} for grey images, "
        f"{RGB['likelihood']} for colour ones",
        choices=("auto", *LIKELIHOOD_PARAMETERS),
        resume=True,
    ),
    Setting(
        "filters",
        24,
        "channels of the first convolution (the second has twice as many)",
        positive_int,
        resume=True,
    ),
    Setting("hidden_units", 256, "width of the dense layers next to z", positive_int, resume=True),
    Setting(
        "hidden_layers",
        3,
        "dense layers on each side of z: they are small, so depth there costs little "
        "arithmetic, and it lets a few latent coordinates bend into a whole image",
        positive_int,
        resume=True,
    ),
    Setting(
        "dense_activation",
        "gelu",
        "activation of the dense layers next to z (the convolutions use relu)",
        choices=("gelu", "relu", "silu"),
        resume=True,
    ),
    Setting(
        "conv_bias",
        False,
        "give the hidden convolutions biases; off by default: a ReLU after a convolution needs "
        "no bias to learn well, and adding and differentiating one costs a pass over every pixel",
        bool,
        resume=True,
    ),
    Setting(
        "conditional",
        False,
        "conditional VAE: encoder and decoder also read the one-hot class label",
        bool,
        resume=True,
    ),
    Setting(
        "beta",
        1.0,
        "weight of the KL term while training (beta-VAE); val_loss always uses 1",
        non_negative_float,
        resume=True,
    ),
    Setting(
        "kl_warmup_epochs",
        1,
        "raise the KL weight step by step from 0 to --beta over this many epochs, so the "
        "encoder spreads the images out in z before the prior pulls them in",
        non_negative_int,
        resume=True,
    ),
    # Training
    Setting(
        "epochs",
        None,
        f"passes over the training set; default: enough for {GREY['steps']:,} steps and at "
        f"least {GREY['epochs']} epochs for grey images, {RGB['steps']:,} steps for colour "
        "ones, so a small data set still gets enough steps to learn",
        positive_int,
        resume=True,
    ),
    Setting(
        "batch_size",
        None,
        f"images per gradient step; default {GREY['batch_size']} for grey images (large "
        f"batches keep a CPU's vector units busy), {RGB['batch_size']} for colour ones, halved "
        f"for a data set of fewer than {MIN_EPOCH_STEPS} batches",
        positive_int,
        resume=True,
    ),
    Setting(
        "learning_rate",
        None,
        f"Adam's step size after the warm-up; default {GREY['learning_rate']:g} for grey "
        f"images, {RGB['learning_rate']:g} for colour ones",
        positive_float,
        resume=True,
    ),
    Setting(
        "lr_warmup_epochs",
        1,
        "raise the step size linearly from a tenth of --learning-rate to it over this many "
        "epochs, so that large batches start with gentle steps",
        non_negative_int,
        resume=True,
    ),
    Setting(
        "cosine_decay",
        True,
        "decay the step size to 0 along a cosine over the run: a lower final loss",
        bool,
        resume=True,
    ),
    # Not a resume setting: the weights are float32 in both, so a run may go on in the other
    # one (auto may choose it on another machine).
    Setting(
        "dtype_policy",
        "auto",
        "compute dtype of the hidden layers: mixed_bfloat16 computes them in bfloat16 (weights, "
        "z heads and loss stay float32); auto times a few steps of each at start and takes "
        "bfloat16 only where it is clearly faster on this machine",
        choices=("auto", "float32", "mixed_bfloat16"),
    ),
    Setting(
        "seed",
        1337,
        "seeds weights, shuffling and sampling: the same seed repeats a run",
        int,
        resume=True,
        evaluation=True,
    ),
    Setting(
        "distribute",
        "none",
        "split each batch over every local GPU (mirrored) or over machines named in "
        "TF_CONFIG (multi-worker); see docs/distributed.md",
        choices=DISTRIBUTE_MODES,
    ),
    # Evaluation
    Setting(
        "iw_samples",
        32,
        "z samples per test image for the importance-weighted NLL (K)",
        positive_int,
        evaluation=True,
    ),
    Setting(
        "evaluate_only",
        False,
        "evaluate and plot the saved models/vae.keras instead of training",
        bool,
    ),
    # Outputs
    Setting("output_dir", ".", "where checkpoint.keras, logs/, models/, plots/ and backup/ go"),
    Setting(
        "run_name",
        None,
        "TensorBoard folder name under logs/; default: the data set, -conditional for a "
        "conditional VAE, the latent size and the start time, as in mnist-latent2-20261204-051500",
    ),
    Setting("fresh", False, "discard an unfinished run's backup and start over", bool),
    Setting("plots", True, "draw the PNG plots and the explorer page after training", bool),
    Setting(
        "plot_class",
        None,
        "conditional, 2-D latent: draw the manifold of this class only (default: every class)",
        non_negative_int,
    ),
    Setting(
        "image_every",
        None,
        "log reconstructions, samples and the latent scatter to TensorBoard every N epochs "
        f"(0: never); default: about {IMAGE_LOGS} times in a run",
        non_negative_int,
    ),
    Setting(
        "tensorflow_notices",
        False,
        "show TensorFlow's start-up notices (its CUDA probe, oneDNN and CPU-feature lines), "
        "hidden by default; TF_CPP_MIN_LOG_LEVEL, where set, chooses them as TensorFlow "
        "does: 0 all, 1 warnings and errors, 2 errors, 3 none",
        bool,
    ),
)

# Where README.md's settings table begins and ends; `python settings.py` rewrites it.
README_TABLE_START = "<!-- settings table"
README_TABLE_END = "<!-- end of settings table -->"
# Every setting's value for one run, `config.<name>`; `Config()` holds the defaults.
Config = dataclasses.make_dataclass(
    "Config",
    [(s.name, s.type, dataclasses.field(default=s.default)) for s in SETTINGS],
    frozen=True,
)
Config.__module__ = __name__
RESUME_SETTINGS = tuple(s.name for s in SETTINGS if s.resume)
EVALUATION_SETTINGS = tuple(s.name for s in SETTINGS if s.evaluation)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's help with its default, except where the default is None: those helps
    say what happens without the flag."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def make_parser(description=None):
    """The command line: one flag per setting."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    for setting in SETTINGS:
        if setting.type is bool:
            parser.add_argument(
                setting.flag,
                action=argparse.BooleanOptionalAction,
                default=setting.default,
                help=setting.help,
            )
        else:
            parser.add_argument(
                setting.flag,
                type=setting.type,
                default=setting.default,
                choices=setting.choices,
                help=setting.help,
            )
    return parser


def parse_args(argv=None, description=None):
    """The Config the command line `argv` asks for, checked; argparse's usage and one line
    for a mistake (exit status 2)."""
    parser = make_parser(description)
    config = Config(**vars(parser.parse_args(argv)))
    problem = settings_problem(config)
    if problem:
        parser.error(problem)
    return config


def settings_problem(config):
    """What is wrong with this combination of settings, in one sentence, or None."""
    if config.limit is not None and config.limit < LIMIT_TEST_SHARE:
        return (
            f"--limit keeps N training and N // {LIMIT_TEST_SHARE} test images: use "
            f"{LIMIT_TEST_SHARE} or more, not {config.limit}"
        )
    if config.plot_class is not None and not config.evaluate_only:
        # --evaluate-only checks it against the saved model, which says what it is.
        if not config.conditional:
            return "--plot-class draws one class of a conditional VAE: add --conditional"
        if config.latent_dim not in (None, 2):
            return "--plot-class draws a class's 2-D manifold: it needs --latent-dim 2"
    # Digits are padded to the size, so it cannot be below theirs; other images are resized.
    smallest = data.DATASETS[config.dataset].original_size or 4
    if config.image_size % 4 or config.image_size < smallest:
        return (
            f"--image-size must be a multiple of 4 and at least {smallest} for --dataset "
            f"{config.dataset}, got {config.image_size}"
        )
    return None


def settled(config, colour=None, train_count=None):
    """`config` with the settings left to the data filled in: the images' `colour` (as
    loaded; a named data set's is known from its entry in data.DATASETS), then the settings
    for that colour (COLOUR_DEFAULTS) and, given the number of training images, the epochs
    and how often TensorBoard gets pictures."""
    if config.colour == "auto":
        colour = colour or data.DATASETS[config.dataset].colour
        if colour is None:
            raise ValueError("a folder's colour is known once it is read: pass its images' colour")
        config = dataclasses.replace(config, colour=colour)
    defaults = COLOUR_DEFAULTS[config.colour]
    batch_size = config.batch_size or defaults["batch_size"]
    if train_count is not None and not config.batch_size:
        # A small data set takes smaller batches: an epoch of at least MIN_EPOCH_STEPS steps.
        while batch_size > MIN_BATCH_SIZE and train_count < MIN_EPOCH_STEPS * batch_size:
            batch_size //= 2
    spatial = config.spatial_latent
    if spatial is None:  # a latent size given alone keeps the vector it has always meant
        spatial = defaults["spatial_latent"] and not config.latent_dim
    latent_dim = config.latent_dim or defaults["latent_dim"]
    if spatial and not config.latent_dim:  # so many channels at each position of the map
        latent_dim = LATENT_MAP_CHANNELS * latent_map_side(config.image_size) ** 2
    config = dataclasses.replace(
        config,
        latent_dim=latent_dim,
        spatial_latent=spatial,
        likelihood=defaults["likelihood"] if config.likelihood == "auto" else config.likelihood,
        prior=defaults["prior"] if config.prior == "auto" else config.prior,
        learning_rate=config.learning_rate or defaults["learning_rate"],
        batch_size=batch_size,
    )
    if train_count is None:
        return config
    epochs = config.epochs or max(
        defaults["epochs"], math.ceil(defaults["steps"] / steps_per_epoch(config, train_count))
    )
    image_every = config.image_every
    if image_every is None:
        image_every = max(1, round(epochs / IMAGE_LOGS))
    return dataclasses.replace(config, epochs=epochs, image_every=image_every)


def steps_per_epoch(config, train_count):
    return math.ceil(train_count / config.batch_size)


def write_readme_table(path="README.md"):
    """Put `markdown_table` between the settings-table markers of README.md."""
    with open(path) as file:
        text = file.read()
    start = text.index("\n", text.index(README_TABLE_START)) + 1
    end = text.index(README_TABLE_END)
    with open(path, "w") as file:
        file.write(text[:start] + "\n" + markdown_table() + "\n\n" + text[end:])


def markdown_table():
    """README.md's settings table: each flag, its default, whether a resume must match it,
    and its help."""
    rows = [
        "| flag | default | resume | what it does |",
        "| --- | --- | --- | --- |",
    ]
    for setting in SETTINGS:
        flag = f"`{setting.flag}`"
        if setting.type is bool:
            flag = f"`{setting.flag}` / `--no-{setting.flag[2:]}`"
        default = "–" if setting.default is None else f"`{setting.default}`"
        choices = f" ({', '.join(setting.choices)})" if setting.choices else ""
        help_text = setting.help.replace("|", "\\|")
        rows.append(
            f"| {flag} | {default} | {'yes' if setting.resume else ''} | {help_text}{choices} |"
        )
    return "\n".join(rows)


def check_labels(config, images):
    """Refuse settings that these images cannot have: class labels they do not have, a
    latent size that does not split over the positions of a spatial z."""
    if config.conditional and not images.num_classes:
        raise data.DataError(
            f"--conditional needs labelled images, and {config.data_dir} has no class "
            "sub-folders: put each class's images in a sub-folder of its own"
        )
    if config.plot_class is not None and config.plot_class >= max(images.num_classes, 1):
        raise data.DataError(
            f"--plot-class {config.plot_class}: the images have {images.num_classes} classes, "
            f"numbered 0 to {images.num_classes - 1}"
        )
    chosen = settled(config, images.colour)
    latent_dim = chosen.latent_dim
    positions = latent_map_side(chosen.image_size) ** 2
    if chosen.spatial_latent and latent_dim % positions:
        raise data.DataError(
            f"a spatial latent at --image-size {chosen.image_size} has {positions} positions, "
            f"so --latent-dim must be a multiple of {positions}, not {latent_dim}; or add "
            "--no-spatial-latent"
        )
    if config.plot_class is not None and latent_dim != 2:
        raise data.DataError(
            f"--plot-class draws a class's 2-D manifold, and the latent size of these "
            f"{images.colour} images is {latent_dim}: add --latent-dim 2, or leave it out"
        )


if __name__ == "__main__":
    write_readme_table()
