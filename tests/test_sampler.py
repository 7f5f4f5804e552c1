"""Drawing pixel by pixel (pixel_head.sample_images) on a tiny image with a hand-set head
whose conditionals are known (issue 47): every drawn pixel follows its conditional given the
pixels drawn before it, and an earlier pixel moves the distribution of a later one."""

import keras
import numpy as np
import pytest
from scipy import stats

import pixel_head

WEIGHT_ABOVE, OFFSET, SCALE = 0.5, 0.1, 0.05
DRAWS, HEIGHT, WIDTH, FEATURES = 20000, 2, 3, 2


def hand_set_head():
    """A head of pixel_head's interface, `[features, image] -> parameters`, with one grey
    logistic per pixel: its location WEIGHT_ABOVE x the pixel above (0 in the first row)
    + OFFSET, which sample_images adds to the left neighbour (0 in the first column), and
    its scale SCALE. Its layer "above_1" reads one row up, so drawing keeps one row."""
    features = keras.Input((None, None, FEATURES), name="features")
    image = keras.Input((None, None, 1), name="image")
    above = keras.layers.ZeroPadding2D(((1, 0), (0, 0)))(image)
    above = keras.layers.Conv2D(1, 1, use_bias=False, name="above_1")(above)
    above = keras.layers.Cropping2D(((0, 1), (0, 0)))(above)  # row i sees row i - 1
    both = keras.layers.Concatenate()([above, features])
    # One component: its weight's logit, the location, the log-scale.
    parameters = keras.layers.Conv2D(3, 1, name="parameters")(both)
    head = keras.Model([features, image], parameters)
    head.get_layer("above_1").set_weights([np.ones((1, 1, 1, 1))])
    kernel = np.zeros((1, 1, 1 + FEATURES, 3))
    kernel[0, 0, 0, 1] = WEIGHT_ABOVE  # the pixel above moves the location
    head.get_layer("parameters").set_weights([kernel, np.array([0.0, OFFSET, np.log(SCALE)])])
    return head


def level_probabilities(locations):
    """P(level k) for k = 0 ... 255 of a logistic of each location and scale SCALE, the
    values rounded to the nearest level and the tails kept by the end levels: (N, 256)."""
    edges = (np.arange(257) - 0.5) / 255
    edges[0], edges[-1] = -np.inf, np.inf
    return np.diff(stats.logistic.cdf(edges, loc=locations[:, None], scale=SCALE), axis=1)


def known_locations(images):
    """Each pixel's location under the hand-set head, from the pixels before it."""
    left = np.pad(images[:, :, :-1], ((0, 0), (0, 0), (1, 0)))
    above = np.pad(images[:, :-1], ((0, 0), (1, 0), (0, 0)))
    return left + WEIGHT_ABOVE * above + OFFSET


@pytest.fixture(scope="module")
def draws():
    features = np.zeros((DRAWS, HEIGHT, WIDTH, FEATURES), np.float32)
    images = pixel_head.sample_images(hand_set_head(), features, channels=1, components=1, seed=4)
    assert images.shape == (DRAWS, HEIGHT, WIDTH, 1)
    return images[..., 0].astype(np.float64)


def binned(observed, expected, least=20):
    """Observed and expected counts over the levels, neighbouring levels merged until each
    bin expects at least `least` draws (as the chi-square test needs)."""
    bins_observed, bins_expected, pending = [], [], np.zeros(2)
    for counts in zip(observed, expected, strict=True):
        pending += counts
        if pending[1] >= least:
            bins_observed.append(pending[0])
            bins_expected.append(pending[1])
            pending = np.zeros(2)
    bins_observed[-1] += pending[0]
    bins_expected[-1] += pending[1]
    return np.array(bins_observed), np.array(bins_expected)


def test_every_drawn_pixel_follows_its_conditional(draws):
    """For each pixel, the counts of its 256 levels over the draws against the sum of each
    draw's own conditional (given what was drawn before it): a chi-square test. A sampler
    that read another pixel's parameters, or the image before the earlier pixels were drawn,
    would shift the locations by tens of levels."""
    levels = np.round(draws * 255).astype(int)
    locations = known_locations(draws)
    for row in range(HEIGHT):
        for column in range(WIDTH):
            observed = np.bincount(levels[:, row, column], minlength=256)
            expected = level_probabilities(locations[:, row, column]).sum(axis=0)
            result = stats.chisquare(*binned(observed, expected))
            assert result.pvalue > 1e-4, (row, column, result)


def test_an_earlier_pixel_moves_the_distribution_of_a_later_one(draws):
    """The draws split by the first pixel (below or above its median): the pixel to its
    right and the one below it are distributed differently in the two halves, each as the
    head says (its location moved by 1 x, and WEIGHT_ABOVE x, the first pixel's value)."""
    first = draws[:, 0, 0]
    high = first > np.median(first)
    for (row, column), weight in (((0, 1), 1.0), ((1, 0), WEIGHT_ABOVE)):
        later = np.round(draws[:, row, column] * 255).astype(int)
        table = np.array([np.bincount(later[part], minlength=256) for part in (high, ~high)])
        table = table[:, table.sum(axis=0) > 0]
        assert stats.chi2_contingency(table).pvalue < 1e-12, (row, column)
        shift = draws[high, row, column].mean() - draws[~high, row, column].mean()
        expected = level_probabilities(known_locations(draws)[:, row, column]) @ (
            np.arange(256) / 255
        )
        assert shift == pytest.approx(expected[high].mean() - expected[~high].mean(), abs=0.005)
        # The head's own figure: far from 0 (about weight x 0.1).
        assert shift > weight * (first[high].mean() - first[~high].mean()) / 2
