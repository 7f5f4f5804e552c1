"""notebooks/explore.ipynb, executed headless on the models of short real runs.

Each picture section of the notebook is a code cell tagged with the section's name;
the tests look the cells up by tag. The notebook reads its test images with data.py, so
each test gives it another of the formats main.py reads.
"""

import base64
import gzip
import io
import json
import os

import numpy as np
import pytest

import data
import mnist_files
from cifar10_files import python_batches, write_archive
from conftest import REPO, colour_spread, quick_config

# How to enable the tests that a missing package skips.
NOTEBOOK_PACKAGES = (
    "the notebook's packages are not installed: pip install -r requirements-notebook.txt"
)

NOTEBOOK = REPO / "notebooks" / "explore.ipynb"
PICTURE_SECTIONS = [
    "latent-space",
    "grid",
    "reconstructions",
    "interpolation",
    "prior-samples",
    "arithmetic",
    "dimensions",
]
CONDITIONAL_SECTIONS = ["style-transfer", "class-styles"]


def execute(output_dir, data_dir=None, hide=None):
    """Run every cell as `jupyter nbconvert --execute` would, with VAE_OUTPUT_DIR (and
    VAE_DATA_DIR) set for the kernel; `hide` is (a package the kernel cannot import, a
    folder for the stand-in that refuses it)."""
    nbclient = pytest.importorskip("nbclient", reason=NOTEBOOK_PACKAGES)
    nbformat = pytest.importorskip("nbformat", reason=NOTEBOOK_PACKAGES)
    environment = {name: value for name, value in os.environ.items() if name != "VAE_DATA_DIR"}
    environment.update({"VAE_OUTPUT_DIR": str(output_dir), "TF_CPP_MIN_LOG_LEVEL": "2"})
    if data_dir:
        environment["VAE_DATA_DIR"] = data_dir
    if hide:
        package, folder = hide
        (folder / package).mkdir(parents=True)
        (folder / package / "__init__.py").write_text(
            f"raise ImportError('{package} is hidden by the test')\n"
        )
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(folder), os.environ.get("PYTHONPATH")])
        )
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute(env=environment)
    return notebook


def cell(notebook, tag):
    [tagged] = [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]
    return tagged


def images_in(cell):
    return [output for output in cell.outputs if "image/png" in output.get("data", {})]


def printed(notebook):
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.get("name") == "stdout"
    )


def pictures_in(cell):
    """The cell's pictures as RGB(A) arrays."""
    from PIL import Image

    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"]))))
        for output in images_in(cell)
    ]


@pytest.mark.slow
def test_notebook_draws_every_section_of_a_plain_model(trained_run, mnist_dir, tmp_path):
    pytest.importorskip("ipywidgets", reason=NOTEBOOK_PACKAGES)
    output_dir, _, _ = trained_run  # latent size 2
    # Keras' mnist.npz, as main.py reads it from --data-dir (a few training images suffice).
    _, (test_images, test_labels) = data.load_dataset("mnist", mnist_dir)
    np.savez(
        tmp_path / "mnist.npz",
        x_train=test_images[:10],
        y_train=test_labels[:10],
        x_test=test_images,
        y_test=test_labels,
    )
    notebook = execute(output_dir, str(tmp_path))

    assert "a VAE of mnist, latent size 2, 32x32 grey images" in printed(notebook)
    assert "2000 test images of shape (32, 32, 1), 10 classes" in printed(notebook)
    assert "Samples draw z from N(0, I)" in printed(notebook)
    assert colour_spread(pictures_in(cell(notebook, "reconstructions"))[0]) == 0
    for section in PICTURE_SECTIONS:
        assert len(images_in(cell(notebook, section))) == 1, section
    for section in CONDITIONAL_SECTIONS:  # nothing to draw: the cell says why
        assert not images_in(cell(notebook, section))
        assert "without --conditional" in cell(notebook, section).outputs[0]["text"]
    # The sliders: a widget in the cell, and the picture its first drawing left in the
    # notebook's widget state.
    interactive = cell(notebook, "interactive")
    assert any(
        "application/vnd.jupyter.widget-view+json" in output.get("data", {})
        for output in interactive.outputs
    )
    widgets = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"][
        "state"
    ].values()
    sliders = [widget for widget in widgets if widget["model_name"] == "FloatSliderModel"]
    assert len(sliders) == 2
    drawn = [
        output
        for widget in widgets
        if widget["model_name"] == "OutputModel"
        for output in widget["state"].get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert len(drawn) == 1


@pytest.mark.slow
def test_notebook_draws_a_conditional_model_of_three_dimensions_without_ipywidgets(
    tmp_path, mnist_dir
):
    """The model, not metrics.json, says its latent size and that it is conditional; the test
    images come from uncompressed IDX files, as main.py also reads them."""
    import main

    output_dir = tmp_path / "run"
    main.train(
        quick_config(
            output_dir, mnist_dir, conditional=True, latent_dim=3, plots=False, image_every=0
        )
    )
    metrics_file = output_dir / "models" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["config"].update(latent_dim=99, conditional=False, image_size=64)
    metrics_file.write_text(json.dumps(metrics))
    uncompressed = tmp_path / "uncompressed"
    uncompressed.mkdir()
    for name in (mnist_files.IDX_FILES["test_images"], mnist_files.IDX_FILES["test_labels"]):
        with gzip.open(os.path.join(mnist_dir, name)) as packed:
            (uncompressed / name.removesuffix(".gz")).write_bytes(packed.read())
    notebook = execute(output_dir, str(uncompressed), hide=("ipywidgets", tmp_path / "hidden"))

    assert "a conditional VAE of mnist, latent size 3, 32x32 grey images" in printed(notebook)
    for section in PICTURE_SECTIONS + CONDITIONAL_SECTIONS + ["interactive"]:
        assert len(images_in(cell(notebook, section))) == 1, section
    assert "ipywidgets is not installed" in printed(notebook)


@pytest.mark.slow
def test_notebook_draws_a_colour_model_in_colour(tmp_path):
    """A CIFAR-10 model, its test images read from the archive itself."""
    import main

    files, _ = python_batches(train_count=250, test_count=60)
    archive = write_archive(tmp_path / "cifar-10-python.tar.gz", files)
    output_dir = tmp_path / "run"
    main.train(
        quick_config(
            output_dir, str(archive), dataset="cifar10", latent_dim=4, plots=False, image_every=0
        )
    )
    notebook = execute(output_dir, str(archive))

    assert "a VAE of cifar10, latent size 4, 32x32 colour images" in printed(notebook)
    assert "60 test images of shape (32, 32, 3), 10 classes" in printed(notebook)
    assert "Samples draw z from the learned prior, prior.keras" in printed(notebook)
    for section in PICTURE_SECTIONS:
        [picture] = pictures_in(cell(notebook, section))
        if section != "latent-space":
            assert colour_spread(picture) > 0.1, section  # grey would be exactly 0


def test_missing_models_stop_the_notebook_with_one_sentence(tmp_path):
    nbclient = pytest.importorskip("nbclient", reason=NOTEBOOK_PACKAGES)

    with pytest.raises(nbclient.exceptions.CellExecutionError) as failure:
        execute(tmp_path)

    assert failure.value.ename == "FileNotFoundError"
    message = failure.value.evalue
    assert message.startswith(str(tmp_path / "models" / "encoder.keras"))
    assert "`python main.py` writes it" in message and "VAE_OUTPUT_DIR" in message
    assert "\n" not in message


def test_a_wrong_data_folder_stops_the_notebook_with_one_sentence(tmp_path):
    nbclient = pytest.importorskip("nbclient", reason=NOTEBOOK_PACKAGES)
    (tmp_path / "models").mkdir()
    for name in ("encoder.keras", "decoder.keras", "metrics.json"):
        (tmp_path / "models" / name).touch()

    with pytest.raises(nbclient.exceptions.CellExecutionError) as failure:
        execute(tmp_path, data_dir=str(tmp_path / "no-such-folder"))

    assert failure.value.ename == "FileNotFoundError"
    assert failure.value.evalue.startswith(
        f"VAE_DATA_DIR {tmp_path / 'no-such-folder'} does not exist"
    )


def test_committed_notebook_has_no_outputs():
    notebook = json.loads(NOTEBOOK.read_text())
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"]
    assert "widgets" not in notebook["metadata"]
