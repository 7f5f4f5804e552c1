"""The benchmark's PyTorch peer: the same model as the program's (weights and FLOPs), its
timed training, its rows in the report, and the benchmark without torch."""

import math

import numpy as np
import pytest

from benchmarks import benchmark, reports, workers

torch = pytest.importorskip("torch")
from benchmarks import torch_peer  # noqa: E402  (needs torch)

# 8x8 grey images, 2 and 4 filters, one dense layer of 4 on each side of a 2-D z.
TINY = torch_peer.PeerShape(
    image_size=8, channels=1, filters=2, hidden_units=4, hidden_layers=1, latent_dim=2
)


def test_flops_and_weights_of_a_tiny_peer_match_a_hand_count():
    multiply_adds = (
        3 * 3 * 1 * 2 * (4 * 4)  # conv 1 -> 2, per output position (8x8 -> 4x4)
        + 3 * 3 * 2 * 4 * (2 * 2)  # conv 2 -> 4 (4x4 -> 2x2)
        + 16 * 4  # dense from the 2x2x4 map
        + 2 * (4 * 2)  # z_mean and z_log_var
        + 2 * 4  # dense from z
        + 4 * 16  # dense to the 2x2x4 map
        + 3 * 3 * 4 * 4 * (2 * 2)  # transposed 4 -> 4, per input position (2x2 -> 4x4)
        + 3 * 3 * 4 * 2 * (4 * 4)  # transposed 4 -> 2 (4x4 -> 8x8)
        + 3 * 3 * 2 * 1 * (8 * 8)  # the logits, stride 1
    )
    assert multiply_adds == 3608
    model = torch_peer.PeerVAE(TINY)
    assert torch_peer.peer_flops(model, TINY) == (2 * 3608, 3 * 2 * 3608)
    weights = 18 + 72 + (64 + 4) + 2 * (8 + 2) + (8 + 4) + (64 + 16) + 144 + 72 + (18 + 1)
    assert torch_peer.parameter_count(model) == weights == 505


def test_the_default_peer_is_the_programs_default_model():
    import flops
    import settings
    import training

    config = settings.settled(settings.Config(dtype_policy="float32"))
    keras_model = training.build_model(config)
    shape = torch_peer.shape_of(config)
    assert shape == torch_peer.PeerShape()  # 32x32 grey, 24 filters, 3 x 256 GELU, 2-D z
    peer = torch_peer.PeerVAE(shape)
    # The Keras model's one more variable is the KL weight, which is not trained.
    trained = sum(math.prod(weight.shape) for weight in keras_model.trainable_weights)
    assert torch_peer.parameter_count(peer) == trained == 1_883_061
    assert torch_peer.peer_flops(peer, shape) == flops.vae_flops(keras_model)[:2]


def test_two_epochs_of_training_give_finite_losses_and_a_speed_in_each_dtype():
    random = np.random.default_rng(0)
    train = (random.random((40, 8, 8, 1)) > 0.7).astype("float32")
    variants = [("float32", "eager"), ("bfloat16", "eager")]
    result = torch_peer.run_peer(TINY, train, train[:8], 16, epochs=2, variants=variants)
    assert (result["train_images"], result["parameters"]) == (40, 505)
    for variant in result["variants"]:
        assert [record["epoch"] for record in variant["epochs"]] == [1, 2]
        assert all(math.isfinite(record["loss"]) for record in variant["epochs"])
        speed = 40 / variant["seconds_per_epoch"]
        assert math.isclose(variant["train_images_per_second"], speed)
        assert variant["train_images_per_cpu_second"] > 0
        # The cross-entropy of 64 pixels starts near 64 log 2 (44 nats); twice that: diverging.
        assert variant["final_val_loss"] < 2 * 64 * math.log(2)


def test_a_compilation_that_fails_is_one_line_in_its_row(monkeypatch):
    def fail(function, **options):
        raise RuntimeError("no C++ compiler\nlong traceback")

    monkeypatch.setattr(torch, "compile", fail)
    train = np.zeros((16, 8, 8, 1), "float32")
    images = torch_peer.as_tensor(train)
    result = torch_peer.time_variant(TINY, images, images, 16, 1, ("float32", "compiled"))
    assert result == {
        "dtype": "float32",
        "mode": "compiled",
        "error": "RuntimeError: no C++ compiler",
    }


def _made_up_comparison():
    flops = 40e6  # training FLOPs per image
    program = {
        "train_images_per_second": 1000.0,
        "train_images_per_cpu_second": 250.0,
        "train_flops_per_image": flops,
    }
    variants = [
        {"dtype": "float32", "mode": "eager", "train_images_per_second": 800.0},
        {"dtype": "float32", "mode": "compiled", "train_images_per_second": 1250.0},
        {"dtype": "bfloat16", "mode": "eager", "train_images_per_second": 500.0},
        {"dtype": "bfloat16", "mode": "compiled", "error": "RuntimeError: no C++ compiler"},
    ]
    return {
        "program": {"float32": program, "bfloat16": {**program, "train_images_per_second": 600.0}},
        "peer": {"train_flops_per_image": flops, "variants": variants},
    }


def test_the_programs_speed_over_the_peers_best_in_each_dtype():
    ratios = reports.peer_ratios(_made_up_comparison())
    assert ratios["float32"] == {
        "program": 1000.0,
        "peer_best": 1250.0,
        "peer_mode": "compiled",
        "ratio": 0.8,
    }
    # The failed compilation leaves the eager row as bfloat16's best.
    assert (ratios["bfloat16"]["peer_mode"], ratios["bfloat16"]["ratio"]) == ("eager", 1.2)


def test_the_peer_table_gives_each_rows_share_of_its_dtypes_peak():
    matmul = {"float32": {"gflops": 200.0}, "bfloat16": {"gflops": 800.0}}
    lines = reports.peer_table(_made_up_comparison(), matmul).splitlines()
    # 1,000 images/s x 40 MFLOP = 40 GFLOP/s: 20 % of float32's 200.
    assert lines[2] == "| program | float32 | Keras fit | 1,000 | 40.0 | 20.0 | 250 |"
    # 500 images/s x 40 MFLOP = 20 GFLOP/s: 2.5 % of bfloat16's 800.
    assert "| peer | bfloat16 | eager | 500 | 20.0 | 2.5 | - |" in lines
    failed = "| peer | bfloat16 | compiled | failed: RuntimeError: no C++ compiler | - | - | - |"
    assert failed in lines
    assert "| float32 | 1,000 | 1,250 (compiled) | 0.80 |" in lines
    assert "| bfloat16 | 600 | 500 (eager) | 1.20 |" in lines


def test_without_torch_the_benchmark_says_so_and_leaves_the_peer_out(monkeypatch, tmp_path, capsys):
    real_find_spec = workers.importlib.util.find_spec
    monkeypatch.setattr(
        workers.importlib.util,
        "find_spec",
        lambda name, *rest: None if name == "torch" else real_find_spec(name, *rest),
    )
    benchmark.main(["--only-peer", "--output-dir", str(tmp_path)])
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("torch is not installed")
    assert list(tmp_path.iterdir()) == []  # no worker ran, no report
    assert benchmark.run_peer(benchmark.parse_args([]), matmul={}) is None


def test_peer_flags_and_what_the_workers_are_told():
    quick, full = benchmark.parse_args(["--quick"]), benchmark.parse_args([])
    assert (quick.peer_images, full.peer_images) == (4096, 12000)
    assert full.peer_dtypes == ["float32", "bfloat16"]
    for wrong in (["--no-peer", "--only-peer"], ["--only-peer", "--only-backends"]):
        with pytest.raises(SystemExit):
            benchmark.parse_args(wrong)
    args = benchmark.parse_args(["--peer-dtypes", "float32", "--peer-images", "5000"])
    args.dtype_policy = "float32"
    parsed = benchmark.parse_args([*benchmark._worker_argv(args, "program"), "out.json"][2:])
    assert (parsed.worker, parsed.dtype_policy, parsed.peer_images) == ("program", "float32", 5000)
    assert parsed.peer_dtypes == ["float32"]


def test_the_peer_section_says_what_was_compared():
    comparison = _made_up_comparison()
    comparison["peer"].update(
        train_images=4096, test_images=682, batch_size=256, torch="2.13.0", threads=2
    )
    comparison["peer"]["parameters"] = 1_883_061
    comparison["program"]["float32"]["parameters"] = 1_883_062
    comparison["matmul"] = {"float32": {"gflops": 200.0}, "bfloat16": {"gflops": 800.0}}
    report = {
        "peer": comparison,
        "settings": {"backend_epochs": 2},
        "machine": {"cpu": "AMD EPYC", "usable_cores": 2},
        "command": "python benchmarks/benchmark.py --only-peer",
    }
    text = "\n".join(reports.peer_section(report))
    assert text.startswith("## The program against its PyTorch peer\n\n| model | dtype |")
    assert "first 4,096 training images (682 test images validate each epoch)" in text
    assert "40.00 training MFLOP per image counted from the peer's layers, 40.00" in text
    assert "1,883,061 weights in the peer; the program's model counts 1,883,062" in text
    assert "float32 200.0 GFLOP/s, bfloat16 800.0 GFLOP/s" in text
