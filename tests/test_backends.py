"""Every installed Keras backend trains, saves and plots; its files load on every other."""

import json

import numpy as np
import pytest

from benchmarks.workers import installed_backends
from conftest import REPO, RUN_OUTPUTS, quick_arguments, run_main, run_python


@pytest.fixture(scope="module")
def runs(mnist_dir, tmp_path_factory):
    """A short `python main.py` run on each installed backend: {backend: output folder}.

    In float32: the loaded files' outputs are compared across backends to 1e-4. Under
    `auto` a backend may take bfloat16, whose kernels round differently on each backend."""
    folders = {}
    for backend in installed_backends():
        folder = tmp_path_factory.mktemp(backend)
        result = run_main(
            quick_arguments(folder, mnist_dir, limit=1200, epochs=2),
            env={"KERAS_BACKEND": backend},
            timeout=300,
        )
        assert result.returncode == 0, f"{backend}: {result.stderr[-3000:]}"
        folders[backend] = folder
    return folders


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_trains_saves_and_plots(runs, backend):
    if backend not in runs:
        pytest.skip(f"{backend} is not installed: pip install -r requirements-backends.txt")
    folder = runs[backend]
    for name in RUN_OUTPUTS:
        assert (folder / name).stat().st_size > 0, name
    metrics = json.loads((folder / "models" / "metrics.json").read_text())
    assert metrics["versions"]["backend"] == backend
    # An untrained decoder says 0.5 for every pixel: 1024 ln 2 = 710 nats per image. After
    # 38 steps a model that learned where strokes lie is far below (the training images'
    # mean image alone would give 199).
    assert metrics["test"]["negative_elbo"] < 350
    for part in (
        "train",
        "validation",
        "images",
        "evaluation",
    ):  # TensorBoard, written through TensorFlow
        assert list(folder.glob(f"logs/*/{part}/events.out.tfevents.*")), part


LOAD_EVERYTHING = """
import json, sys
sys.path.insert(0, {repo!r})
import keras, numpy as np
import vae  # registers the VAE's classes
images = np.random.default_rng(0).random((4, 32, 32, 1), dtype=np.float32)
z = np.random.default_rng(1).standard_normal((4, 2)).astype(np.float32)
result = {{}}
for trained_on, folder in {folders!r}.items():
    encoder = keras.saving.load_model(folder + "/models/encoder.keras")
    decoder = keras.saving.load_model(folder + "/models/decoder.keras")
    vae = keras.saving.load_model(folder + "/models/vae.keras")
    checkpoint = keras.saving.load_model(folder + "/checkpoint.keras")
    result[trained_on] = {{
        "z_mean": keras.ops.convert_to_numpy(encoder(images)[0]).tolist(),
        "decoded": keras.ops.convert_to_numpy(decoder(z)).tolist(),
        "vae_z_mean": keras.ops.convert_to_numpy(vae.encoder(images)[0]).tolist(),
        "checkpoint_z_mean": keras.ops.convert_to_numpy(checkpoint.encoder(images)[0]).tolist(),
    }}
print(json.dumps(result))
"""


@pytest.mark.slow
def test_models_saved_on_one_backend_load_on_every_backend(runs):
    if len(runs) < 2:
        pytest.skip("only one Keras backend is installed: pip install -r requirements-backends.txt")
    folders = {backend: str(folder) for backend, folder in runs.items()}
    loaded = {
        backend: run_python(
            LOAD_EVERYTHING.format(repo=str(REPO), folders=folders), env={"KERAS_BACKEND": backend}
        )
        for backend in runs
    }
    for trained_on in runs:
        reference = loaded[trained_on][trained_on]  # loaded where it was trained
        assert not np.allclose(reference["z_mean"], 0)
        for loaded_on in runs:
            for name in ("z_mean", "decoded", "vae_z_mean", "checkpoint_z_mean"):
                np.testing.assert_allclose(
                    loaded[loaded_on][trained_on][name],
                    reference[name],
                    rtol=1e-4,
                    atol=1e-5,
                    err_msg=f"{name}: trained on {trained_on}, loaded on {loaded_on}",
                )


COLOUR_MODEL = """
import json, sys
sys.path.insert(0, {repo!r})
import keras, numpy as np
import main, settings, training, vae
rng = np.random.default_rng(0)
values = (rng.integers(0, 256, (2, 4, 4, 3)) / 255).astype("float32")
location = values + rng.normal(0, 0.05, values.shape)
logits = np.concatenate([location, rng.uniform(-6, -1, values.shape)], -1).astype("float32")
nats = vae.reconstruction_nats(values, logits, "discretized_logistic")
model = training.build_model(
    settings.Config(
        dataset="cifar10", latent_dim=2, filters=4, hidden_units=8, dtype_policy="float32"
    )
)
model.compile(optimizer=training.FusedAdam(1e-3))
images = (rng.integers(0, 256, (8, 32, 32, 3)) / 255).astype("float32")
losses = [float(model.train_on_batch(images, return_dict=True)["loss"]) for _ in range(3)]
decoded = keras.ops.convert_to_numpy(model.decoder(np.zeros((1, 2), "float32")))
print(json.dumps({{"nats": keras.ops.convert_to_numpy(nats).tolist(), "losses": losses,
                  "decoded": [list(decoded.shape), float(decoded.min()), float(decoded.max())]}}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_a_colour_model_with_the_discretized_logistic_trains_on_every_backend(backend):
    import keras

    import vae

    if backend not in installed_backends():
        pytest.skip(f"{backend} is not installed: pip install -r requirements-backends.txt")
    result = run_python(COLOUR_MODEL.format(repo=str(REPO)), env={"KERAS_BACKEND": backend})
    rng = np.random.default_rng(0)  # the same values as in COLOUR_MODEL, here on TensorFlow
    values = (rng.integers(0, 256, (2, 4, 4, 3)) / 255).astype("float32")
    location = values + rng.normal(0, 0.05, values.shape)
    logits = np.concatenate([location, rng.uniform(-6, -1, values.shape)], -1).astype("float32")
    expected = vae.reconstruction_nats(values, logits, "discretized_logistic")
    np.testing.assert_allclose(result["nats"], keras.ops.convert_to_numpy(expected), rtol=1e-5)
    assert np.all(np.isfinite(result["losses"])) and result["losses"][-1] < result["losses"][0]
    shape, low, high = result["decoded"]
    assert shape == [1, 32, 32, 3] and 0 <= low <= high <= 1
