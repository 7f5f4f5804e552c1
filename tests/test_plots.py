"""What the plots show (issue 47): each figure plotting.plot_all saves is read back through
its matplotlib artists, the pictures and points it draws and the coordinates it names, and
compared with what the saved encoder and decoder give there."""

import itertools

import keras
import matplotlib.pyplot as plt
import numpy as np
import pytest

import plotting

SIZE = 32  # the learned run's images: MNIST padded to 32x32


@pytest.fixture(scope="module")
def drawn(learned_run, tmp_path_factory):
    """The learned run's saved encoder and decoder, its test images and every figure that
    plot_all saves, by file name: kept to be read instead of written (drawing them as PNG
    files would take most of the time)."""
    output_dir, _, _, images = learned_run
    encoder = keras.saving.load_model(output_dir / "models" / "encoder.keras")
    decoder = keras.saving.load_model(output_dir / "models" / "decoder.keras")
    figures = {}

    def keep(figure, path):
        figures[path.rsplit("/", 1)[-1]] = figure
        plt.close(figure)  # its artists stay readable

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(plotting, "_save", keep)
        plotting.plot_all(
            encoder,
            decoder,
            images.test_images,
            images.test_labels,
            images.class_names,
            str(tmp_path_factory.mktemp("plots")),
        )
    return encoder, decoder, images, figures


def named_ticks(axis):
    """(pixel position, the value its label names) of each labelled tick of an axis."""
    labels = [label.get_text() for label in axis.get_majorticklabels()]
    return [
        (position, float(label))
        for position, label in zip(axis.get_majorticklocs(), labels, strict=True)
    ]


def test_the_manifolds_cells_are_the_decoder_at_the_values_its_axes_name(drawn):
    _, decoder, _, figures = drawn
    (axes,) = figures["manifold.png"].axes
    picture = np.asarray(axes.images[0].get_array(), np.float64)  # the grid, one grey image
    columns, rows = named_ticks(axes.xaxis), named_ticks(axes.yaxis)
    assert len(columns) == len(rows) == 10  # every other one of the 20 along each side
    cells, z = [], []
    for (x, z0), (y, z1) in itertools.product(columns, rows):
        column, row = int(x // SIZE), int(y // SIZE)
        cells.append(picture[row * SIZE : (row + 1) * SIZE, column * SIZE : (column + 1) * SIZE])
        z.append((z0, z1))
    expected = decoder.predict(np.array(z, np.float32), verbose=0)[..., 0]
    # The labels round z to 0.01; the decoder moves a pixel by far less than 0.02 for that.
    differences = np.abs(np.array(cells) - expected).mean(axis=(1, 2))
    assert differences.max() < 0.02, differences.max()
    # The test has teeth: the cells differ from one another far more than that.
    spread = np.abs(expected[:, None] - expected[None]).mean(axis=(2, 3))
    assert np.median(spread) > 0.05


def test_reconstructions_are_the_decoder_at_each_originals_z_mean(drawn):
    encoder, decoder, images, figures = drawn
    axes = figures["reconstructions.png"].axes
    count = len(axes) // 2
    assert count == 10
    shown = [np.asarray(a.images[0].get_array(), np.float64) for a in axes]  # row by row
    originals = images.test_images[:count, ..., 0]
    expected = decoder.predict(encoder.predict(images.test_images[:count], verbose=0)[0], verbose=0)
    np.testing.assert_array_equal(shown[:count], originals)
    np.testing.assert_allclose(shown[count:], expected[..., 0], atol=1e-5)
    assert np.abs(expected[..., 0] - originals).mean() > 0.01  # not the originals again


def test_the_latent_scatter_is_the_encoders_z_mean_coloured_by_class(drawn):
    encoder, _, images, figures = drawn
    axes = figures["latent_space.png"].axes[0]  # the second axes: the colour bar
    (points,) = axes.collections
    z_mean = encoder.predict(images.test_images, verbose=0)[0]
    np.testing.assert_allclose(points.get_offsets(), z_mean, atol=1e-5)
    np.testing.assert_array_equal(points.get_array(), images.test_labels)
    colour_bar = figures["latent_space.png"].axes[1]
    assert [label.get_text() for label in colour_bar.get_yticklabels()] == list(images.class_names)
