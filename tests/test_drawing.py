"""Drawing with a pixel head runs it in one shape (compiled once, no retracing), and draws
what passes over the whole image would."""

import numpy as np

import pixel_head


def test_drawing_runs_the_head_in_one_shape_and_draws_as_whole_image_passes(monkeypatch):
    channels, components = 3, 2
    head = pixel_head.build_pixel_head(
        channels=channels, features=4, width=8, depth=2, components=components
    )
    rows = pixel_head.rows_seen_above(head) + 1  # 6: fewer than the image's 9
    features = np.random.default_rng(0).normal(size=(2, 9, 5, 4)).astype(np.float32)
    shapes = []
    predict = head.predict_on_batch

    def recorded(inputs):
        shapes.append([array.shape for array in inputs])
        return predict(inputs)

    monkeypatch.setattr(head, "predict_on_batch", recorded)
    drawn = pixel_head.sample_images(head, features, channels, components, seed=3)
    assert len(shapes) == 9 * 5 and all(
        shape == [(2, rows, 5, 4), (2, rows, 5, channels)] for shape in shapes
    )

    # The same draws, each pixel's mixture from a pass over the whole image so far.
    rng = np.random.default_rng(3)
    expected = np.zeros((2, 9, 5, channels), np.float32)
    for row in range(9):
        for column in range(5):
            parameters = np.asarray(head([features, expected]))[:, row, column]
            left = expected[:, row, column - 1] if column else np.zeros((2, channels))
            expected[:, row, column] = pixel_head.sample_pixel(
                parameters, left, channels, components, rng
            )
    np.testing.assert_array_equal(drawn, expected)
