"""The benchmark's speed-independent parts: FLOP counting, the baseline's shapes, the report."""

import argparse
import math

import keras
import numpy as np
import pytest
from keras import layers

import flops
from benchmarks import benchmark, peak, reports, workers


def test_flops_of_conv_transposed_conv_and_dense_match_a_hand_count():
    inputs = keras.Input(shape=(8, 6, 3))
    x = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(inputs)  # -> (4, 3, 4)
    x = layers.Conv2DTranspose(2, (3, 2), strides=2, padding="same")(x)  # (4, 3, 4) -> (8, 6, 2)
    x = layers.Activation("relu")(x)  # no multiply-adds
    x = layers.Flatten()(x)  # 96 values
    outputs = layers.Dense(5)(x)
    model = keras.Model(inputs, outputs)

    conv = 3 * 3 * 3 * 4 * (4 * 3)  # kernel h x w x in channels x filters, per OUTPUT position
    transposed = 3 * 2 * 4 * 2 * (4 * 3)  # kernel h x w x in channels x filters, per INPUT position
    dense = 96 * 5
    assert (conv, transposed, dense) == (1296, 576, 480)
    total, per_layer = flops.forward_flops(model)
    assert total == 2 * (1296 + 576 + 480) == 4704
    assert sorted(per_layer.values()) == [2 * 480, 2 * 576, 2 * 1296]


def test_dense_on_a_sequence_counts_every_position():
    inputs = keras.Input(shape=(7, 3))
    model = keras.Model(inputs, layers.Dense(4)(inputs))
    assert flops.forward_flops(model)[0] == 2 * 7 * 3 * 4


def test_baseline_shapes_and_flops():
    model = workers.build_baseline(seed=0)
    assert [tuple(output.shape) for output in model.encoder.outputs] == [(None, 2), (None, 2)]
    assert tuple(model.decoder.output.shape) == (None, 32, 32, 1)
    assert model.decoder.get_layer("logits").filters == 1
    outputs = model(np.zeros((3, 32, 32, 1), "float32"))
    assert tuple(outputs["logits"].shape) == (3, 32, 32, 1)

    encoder = 16 * 16 * 9 * 1 * 32 + 8 * 8 * 9 * 32 * 64 + 4096 * 16 + 2 * 16 * 2
    decoder = 2 * 4096 + 8 * 8 * 9 * 64 * 64 + 16 * 16 * 9 * 64 * 32 + 32 * 32 * 9 * 32 * 1
    forward, training, per_layer = flops.vae_flops(model)
    # The VAE's decoder_logits shares the decoder's layers: they must count once.
    assert forward == 2 * (encoder + decoder) == 17_399_936
    assert training == 3 * forward
    assert (
        len(per_layer) == 9
    )  # 2 Conv2D + 3 Dense in the encoder, 1 Dense + 3 Conv2DTranspose in the decoder


def test_baseline_for_colour_images_with_the_discretized_logistic():
    model = workers.build_baseline(seed=0, channels=3, likelihood="discretized_logistic")
    assert model.encoder.input.shape == (None, 32, 32, 3)
    assert model.decoder.output.shape == (None, 32, 32, 3)
    assert model.decoder.get_layer("logits").filters == 6  # a location and a log-scale each
    # Only the first convolution and the logits see the channels: 3 in, 6 out.
    encoder = 16 * 16 * 9 * 3 * 32 + 8 * 8 * 9 * 32 * 64 + 4096 * 16 + 2 * 16 * 2
    decoder = 2 * 4096 + 8 * 8 * 9 * 64 * 64 + 16 * 16 * 9 * 64 * 32 + 32 * 32 * 9 * 32 * 6
    assert flops.vae_flops(model)[0] == 2 * (encoder + decoder)
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype("float32") / 255
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    losses = [model.train_on_batch(images, return_dict=True)["loss"] for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


CURVE = [(10.0, 200.0), (20.0, 150.0), (30.0, 120.0), (40.0, 125.0)]


@pytest.mark.parametrize(
    "target, expected",
    [
        (135.0, 25.0),  # halfway between 150 at 20 s and 120 at 30 s
        (150.0, 20.0),  # reached exactly at an epoch
        (200.0, 10.0),  # the first epoch is already there
        (500.0, 10.0),  # no earlier point to interpolate from: the first epoch's time
        (122.0, 20.0 + 28.0 / 30.0 * 10.0),
        (119.9, None),  # never reached
    ],
)
def test_seconds_to_reach(target, expected):
    result = reports.seconds_to_reach(CURVE, target)
    assert result == expected if expected is None else math.isclose(result, expected)


@pytest.mark.parametrize(
    "budget, expected", [(5.0, None), (10.0, 200.0), (29.9, 150.0), (35.0, 120.0), (99.0, 125.0)]
)
def test_value_within_budget_is_the_last_finished_epoch(budget, expected):
    assert reports.value_within(CURVE, budget) == expected


def test_steady_epoch_seconds_leaves_out_the_first_epoch():
    assert reports.steady_epoch_seconds([30.0, 40.0, 52.0, 61.0]) == 10.0  # durations 30, 10, 12, 9
    assert reports.steady_epoch_seconds([30.0]) == 30.0


def _fake_result(seconds, values, train_images=6000, dtype="float32"):
    return {
        "parameters": 1234,
        "batch_size": 128,
        "train_images": train_images,
        "test_images": 1000,
        "train_flops_per_image": 60e6,
        "training_flops": 60e6 * train_images * len(seconds),
        "compute_dtype": dtype,
        "peak_memory_mib": 900.0,
        "epochs": [{"seconds": s, "val_loss": v} for s, v in zip(seconds, values, strict=True)],
    }


def test_summary_and_table_from_made_up_runs():
    results = {
        "default": _fake_result([20.0, 30.0, 40.0], [180.0, 150.0, 140.0], dtype="bfloat16"),
        "baseline": _fake_result([5.0, 10.0, 15.0, 20.0], [200.0, 170.0, 160.0, 155.0]),
    }
    matmul = {"float32": {"gflops": 100.0}, "bfloat16": {"gflops": 50.0}}
    summary = reports.summarize(results, matmul)
    assert summary["budget_seconds"] == 20.0
    assert summary["baseline_final_val_loss"] == 155.0
    default, baseline = summary["models"]["default"], summary["models"]["baseline"]
    assert default["val_loss_within_budget"] == 180.0
    assert baseline["val_loss_within_budget"] == 155.0
    assert math.isclose(default["seconds_to_baseline_final"], 20.0 + 25.0 / 30.0 * 10.0)
    assert baseline["seconds_to_baseline_final"] == 20.0
    assert default["seconds_per_epoch"] == 10.0 and baseline["seconds_per_epoch"] == 5.0
    assert default["train_images_per_second"] == 600.0
    assert math.isclose(default["achieved_gflops"], 60e6 * 600 / 1e9)
    # Against the peak of the dtype the layers compute in: 36 of bfloat16's 50 GFLOP/s.
    assert math.isclose(default["percent_of_matmul_peak"], 72.0)
    assert math.isclose(baseline["percent_of_matmul_peak"], 60e6 * 1200 / 1e9)  # of 100

    results["baseline"]["epochs"][-1]["val_loss"] = 100.0  # now the default never gets there
    table = reports.markdown_table(results, reports.summarize(results, matmul))
    lines = table.splitlines()
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert lines[2].startswith("| default |") and "not reached" in lines[2]
    assert "not reached" not in lines[3]


def test_seeds_summary_reports_mean_and_sample_deviation():
    runs = [
        {
            "config": {"seed": seed},
            "epochs": [{"seconds": 100.0, "wall_seconds": 110.0, "val_loss": value}],
        }
        for seed, value in ((1, 146.0), (2, 148.0), (3, 147.0))
    ]
    seeds = reports.seeds_summary(runs)
    assert seeds["mean_final_val_loss"] == 147.0 and math.isclose(seeds["sd_final_val_loss"], 1.0)
    table = reports.seeds_table(seeds).splitlines()
    assert (
        len(table) == 6 and table[2].startswith("| 1 | 146.00 |") and "147.00 ± 1.00" in table[-1]
    )


def test_schedules_cost_their_share_of_a_default_run():
    # A default run: 20 epochs at 77 MFLOP per image. Half of it: 10 epochs of the same
    # model; for a model of 52 MFLOP per image, 0.5 * 20 * 77 / 52 = 14.8, so 15 epochs.
    assert workers.schedule_epochs(0.5, 20, 77e6, 77e6) == 10
    assert workers.schedule_epochs(0.5, 20, 77e6, 52e6) == 15
    assert workers.schedule_epochs(0.01, 20, 77e6, 77e6) == 1  # at least one epoch


def test_schedules_table_and_plot_from_made_up_runs(tmp_path):
    schedules = {
        "default": {
            0.5: _fake_result([20.0], [150.0], dtype="bfloat16"),
            1.0: _fake_result([20.0, 40.0], [160.0, 140.0], dtype="bfloat16"),
        },
        "baseline": {
            0.5: _fake_result([10.0, 20.0], [190.0, 170.0]),
            1.0: _fake_result([10.0, 20.0, 30.0, 40.0], [190.0, 170.0, 165.0, 160.0]),
        },
    }
    matmul = {"float32": {"gflops": 100.0}, "bfloat16": {"gflops": 50.0}}
    lines = reports.schedules_table(schedules, matmul).splitlines()
    assert len(lines) == 6 and all(line.count("|") == lines[0].count("|") for line in lines)
    # default at budget 1: 2 epochs of 6,000 images at 60 MFLOP = 0.72 TFLOP in 40 s: 300
    # images/s, 18 GFLOP/s, 36 % of the 50 GFLOP/s bfloat16 peak.
    assert lines[3] == "| default | 1 | 2 | 0.7 | 140.00 | 40.0 | 300 | 18.0 | 36.0 (bfloat16) |"
    assert lines[4].startswith("| baseline | 0.5 | 2 | 0.7 | 170.00 | 20.0 | 600 | 36.0 | 36.0 (")
    reports.plot_quality(tmp_path / "quality.png", schedules)
    assert (tmp_path / "quality.png").read_bytes().startswith(b"\x89PNG")


def test_quick_flag_sets_a_small_run_and_explicit_flags_win():
    args = benchmark.parse_args(["--quick", "--budgets", "1", "0.25"])
    assert (args.limit, args.epochs_default, args.budgets) == (6000, 3, [0.25, 1.0])
    assert benchmark.parse_args(["--quick"]).budgets == list(benchmark.QUICK_BUDGETS)
    full = benchmark.parse_args([])
    assert (full.limit, full.epochs_default, full.budgets) == (None, None, [0.25, 0.5, 1.0])
    assert (full.seeds, full.backend_seeds, full.seed) == ([1, 2, 3], [1, 2, 3, 4, 5], 1)
    assert benchmark.parse_args(["--seeds", "7", "8"]).seed == 7
    assert (args.backend_images, full.backend_images) == (6000, benchmark.BACKEND_IMAGES)
    for wrong in (["--epochs-default", "0"], ["--budgets", "0"]):
        with pytest.raises(SystemExit):
            benchmark.parse_args(wrong)


@pytest.mark.slow
def test_backend_row_times_the_default_model_on_this_backend(mnist_dir):
    import keras

    args = benchmark.parse_args(
        ["--data-dir", mnist_dir, "--backend-images", "300", "--backend-epochs", "2"]
    )
    result = workers.run_backend_worker(args)
    assert result["backend"] == keras.backend.backend() and result["train_images"] == 300
    assert len(result["epochs"]) == 2 and result["seconds_per_epoch"] > 0
    assert math.isclose(result["train_images_per_second"], 300 / result["seconds_per_epoch"])
    other_seed = {**result, "final_val_loss": result["final_val_loss"] + 2.0}
    table = reports.backends_table(
        {"tensorflow": [result], "jax": [{**result, "versions": {"jax": "0.1"}}, other_seed]}
    )
    lines = table.splitlines()
    assert len(lines) == 4 and lines[3].startswith("| jax | 0.1 | 300 | 2 |")
    # Two seeds 2 nats apart: mean in the middle, sample standard deviation sqrt(2).
    assert f"{result['final_val_loss'] + 1.0:.2f} ± 1.41" in lines[3]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


@pytest.mark.slow
def test_backend_row_trains_on_colour_images(tmp_path, monkeypatch):
    import training
    from cifar10_files import python_batches, write_archive

    # The dtype's timed steps are the MNIST row's to test; here float32 saves their time.
    monkeypatch.setattr(training, "fastest_dtype_policy", lambda *args, **kwargs: "float32")

    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", python_batches(300, 60)[0])
    args = benchmark.parse_args(
        ["--dataset", "cifar10", "--data-dir", str(archive), "--backend-images", "300"]
    )
    args.backend_epochs = 1
    worker_argv = [*benchmark._worker_argv(args, "default"), "out.json"]
    assert benchmark.parse_args(worker_argv[2:]).dataset == "cifar10"
    result = workers.run_backend_worker(args)
    assert result["config"]["dataset"] == "cifar10" and result["config"]["colour"] == "rgb"
    assert "latent 256 (8x8x4 map)" in result["description"]
    assert np.isfinite(result["final_val_loss"])


def test_matmul_peak_reports_the_best_size():
    result = peak.matmul_gflops("float32", sizes=(32, 64), chain=3, tries=2)
    assert result["gflops"] > 0 and result["size"] in (32, 64) and result["chain"] == 3


def test_each_worker_is_told_its_own_seed_and_budget():
    args = benchmark.parse_args(["--seeds", "4", "5"])
    for seed, budget in ((4, 0.25), (5, 1.0)):
        worker = argparse.Namespace(**{**vars(args), "seed": seed, "budget": budget})
        worker_argv = [*benchmark._worker_argv(worker, "default"), "out.json"]
        parsed = benchmark.parse_args(worker_argv[2:])
        assert (parsed.seed, parsed.budget, parsed.worker_output) == (seed, budget, "out.json")


@pytest.mark.slow
def test_the_benchmarks_default_run_is_the_one_main_py_trains(tmp_path, mnist_dir):
    """Same seed, same images: the benchmark's default schedule at budget 1 starts from the
    weights `python main.py` starts from and trains the same losses, so its figures are the
    program's."""
    import main
    import settings

    args = benchmark.parse_args(
        ["--data-dir", mnist_dir, "--limit", "512", "--epochs-default", "1", "--seeds", "3"]
    )
    result = workers.run_training_worker("default", args)
    _, history = main.train(
        settings.Config(
            data_dir=mnist_dir,
            limit=512,
            epochs=1,
            seed=3,
            output_dir=str(tmp_path),
            iw_samples=2,
            image_every=0,
            plots=False,
        )
    )
    for name in ("loss", "val_loss"):
        assert result["epochs"][0][name] == pytest.approx(history.history[name][0], rel=1e-6)


def test_the_coders_line_puts_the_final_figure_in_bits_per_dimension():
    result = {
        "name": "default",
        "coders": {"coder_images": 1000, "png_bits_per_dim": 1.5, "webp_bits_per_dim": 1.25},
        "values_per_image": 1024,
        "epochs": [{"val_loss": 500.0}, {"val_loss": 1024 * math.log(2) * 0.75}],
        "config": {"likelihood": "discretized_logistic"},
    }
    assert reports.coders_line(result) == (
        "Lossless coders on 1,000 of the test images: PNG 1.500 bits/dim, WebP 1.250; "
        "default's final test -ELBO 0.750 bits/dim (discretized_logistic)"
    )


def test_profiled_operations_are_named_by_kind_of_layer_and_gradient():
    from benchmarks import profile_step

    names = {
        "gradient_tape/vae_1/decoder_logits_1/dense_4_1/MatMul/MatMul": "dense",
        "vae_1/encoder_1/conv2d_1_2/convolution": "conv2d",
        "vae_1/decoder_logits_1/features_1/conv_transpose": "features",
        "fused_adam/ResourceApplyAdam_6": "fused_adam",
        "gradient_tape/logistic_loss/Select_3": "logistic_loss",
    }
    assert {name: profile_step.layer_of(name) for name in names} == names


def test_the_profile_table_gives_each_operations_share():
    from benchmarks import profile_step

    seconds = {"MatMul (dense)": 0.006, "Conv2D (conv2d)": 0.003, "Relu (conv2d)": 0.001}
    lines = profile_step.op_table("step", 0.008, seconds, top=2).splitlines()
    assert lines[0] == "step: 8.0 ms per step (wall), its operations 10.0 ms"
    assert lines[4:] == [
        "| MatMul (dense) | 6.00 | 60.0 % |",
        "| Conv2D (conv2d) | 3.00 | 30.0 % |",
    ]


@pytest.mark.parametrize(
    "overrides, next_to_z",
    [
        ({}, "dense 3 x 256 (gelu) on each side of z, latent 2, batch 256"),
        (
            {"dataset": "cifar10"},
            "a 3x3 convolution on each side of z, latent 256 (8x8x4 map), "
            "a learned Gaussian prior, batch 64",
        ),
        (
            {"dataset": "cifar10", "prior": "standard"},
            "a 3x3 convolution on each side of z, latent 256 (8x8x4 map), batch 64",
        ),
        (
            {"dataset": "cifar10", "spatial_latent": False},
            "dense 3 x 256 (gelu) on each side of z, latent 128, "
            "a learned Gaussian prior, batch 64",
        ),
    ],
)
def test_the_default_description_names_the_latent_and_its_prior(overrides, next_to_z):
    import settings

    config = settings.settled(settings.Config(**overrides))
    assert next_to_z in workers.default_description(config)
