"""plots/explorer.html in a real headless Chromium: the page of a short real run decodes where
the pointer is, as the saved decoder does within the error the page states, shows the path
between two clicks and asks for nothing from any network; a conditional colour model's page
decodes with the class chosen.

Chromium is driven over its DevTools protocol through a pipe (--remote-debugging-pipe), so
no WebSocket library and no port are needed. Without an installed Chromium (Debian's
`chromium` package; .ci/run installs it) the browser tests skip, saying so.
"""

import fcntl
import itertools
import json
import os
import queue
import shutil
import subprocess
import threading

import numpy as np
import pytest

import data as data_module
import explorer
import plotting
from conftest import quick_config, small_vae

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
LIMIT = 1800  # training images of the short run (and 300 test images)
# The page states how far its blended pictures may be from the decoder's (data["error"]);
# the tests below hold the browser to that figure, and the figure itself to these bounds,
# so that a page stating a loose figure cannot pass. About ten times what the pages of
# these tests state (max 0.005 and mean 0.0007 for the MNIST run's 64 x 64 grid; the 8-bit
# rounding alone is 0.002), and a twentieth of the 0-1 scale at most.
MAX_ERROR, MEAN_ERROR = 0.05, 0.005


class Chromium:
    """Headless Chromium, its DevTools protocol on fds 3 (commands) and 4 (replies)."""

    def __init__(self, executable, profile):
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()

        def on_fds_3_and_4():  # in the child, before exec: Chromium's pipe is fds 3 and 4
            read = fcntl.fcntl(commands_read, fcntl.F_DUPFD_CLOEXEC, 10)
            write = fcntl.fcntl(replies_write, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(read, 3)
            os.dup2(write, 4)

        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",  # as root, as in CI containers
                "--disable-gpu",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,  # our own descriptors are close-on-exec; fds 3 and 4 are not
            preexec_fn=on_fds_3_and_4,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._ids = itertools.count(1)
        self._messages = queue.Queue()
        self.events = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        pending = b""
        while chunk := os.read(self._replies, 1 << 20):
            *messages, pending = (pending + chunk).split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))
        self._messages.put(None)

    def _next(self, timeout):
        message = self._messages.get(timeout=timeout)
        assert message is not None, "Chromium closed its DevTools pipe"
        if "id" not in message:
            self.events.append(message)
        return message

    def send(self, method, session=None, timeout=60, **params):
        """A DevTools command's result (`session`: a page's, from Target.attachToTarget)."""
        number = next(self._ids)
        command = {"id": number, "method": method, "params": params}
        if session:
            command["sessionId"] = session
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        while (message := self._next(timeout)).get("id") != number:
            pass
        assert "error" not in message, (method, message["error"])
        return message["result"]

    def wait_for(self, method, timeout=60):
        while not any(event["method"] == method for event in self.events):
            self._next(timeout)

    def open(self, url, width=1200, height=950):
        """A new tab on `url`, once its load event has fired: its session."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable", session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.events.clear()
        self.send("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired")
        return session

    def evaluate(self, session, expression):
        """A JavaScript expression's value (a promise's, once settled)."""
        reply = self.send(
            "Runtime.evaluate",
            session,
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
        )
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def mouse(self, session, kind, x, y):
        """A mouse event at page coordinates (x, y): moved, pressed or released."""
        button = {} if kind == "mouseMoved" else {"button": "left", "clickCount": 1}
        self.send("Input.dispatchMouseEvent", session, type=kind, x=x, y=y, **button)

    def close(self):
        try:
            self.send("Browser.close", timeout=10)
            self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            os.close(self._commands)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = next(filter(None, map(shutil.which, BROWSERS)), None)
    if executable is None:
        pytest.skip(
            "no Chromium installed (apt-get install chromium): the explorer page is checked "
            "in a real browser"
        )
    chromium = Chromium(executable, tmp_path_factory.mktemp("chromium-profile"))
    yield chromium
    chromium.close()


class Page:
    """The explorer page open in a tab, with what the tests read from it."""

    def __init__(self, browser, path):
        self.browser = browser
        self.session = browser.open(path.resolve().as_uri())
        ready = "new Promise(function wait(done) { window.explorer && explorer.ready ? done(true) "
        ready += ": setTimeout(() => wait(done), 20); })"
        assert self.evaluate(ready)
        self.data = self.evaluate("D")
        self.box = self.evaluate(
            "(({left, top, width, height}) => ({left, top, width, height}))"
            "($('scatter').getBoundingClientRect())"
        )

    def evaluate(self, expression):
        return self.browser.evaluate(self.session, expression)

    def at(self, fx, fy):
        """Page coordinates of the point at fractions (fx, fy) of the square from its top left,
        and the (u, v) there."""
        x, y = self.box["left"] + fx * self.box["width"], self.box["top"] + fy * self.box["height"]
        (centre_u, centre_v), half = self.data["centre"], self.data["half"]
        return (x, y), (centre_u - half + 2 * half * fx, centre_v + half - 2 * half * fy)

    def drawn(self):
        """Once the page has drawn what its events asked for: (state, draws so far)."""
        frames = "new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"
        self.evaluate(frames)
        return self.evaluate("explorer.state")

    def point(self, fx, fy):
        """Move the pointer there: the page's (u, v), and the picture it shows."""
        (x, y), _ = self.at(fx, fy)
        self.browser.mouse(self.session, "mouseMoved", x, y)
        state = self.drawn()
        return (state["u"], state["v"]), self.picture("decoded")

    def click(self, fx, fy):
        (x, y), _ = self.at(fx, fy)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.browser.mouse(self.session, kind, x, y)
        return self.drawn()

    def picture(self, canvas):
        """A canvas's pixels as (height, width, channels) in [0, 1]."""
        width, height, values = self.evaluate(
            f"((c) => [c.width, c.height, Array.from(c.getContext('2d')"
            f".getImageData(0, 0, c.width, c.height).data)])($('{canvas}'))"
        )
        pixels = np.array(values, np.float64).reshape(height, width, 4) / 255
        return pixels[..., : self.data["channels"]]

    def text(self):
        return self.evaluate("document.body.innerText")

    def requests(self):
        """Every URL the tab asked for, itself included."""
        return [
            event["params"]["request"]["url"]
            for event in self.browser.events
            if event["method"] == "Network.requestWillBeSent"
            and event.get("sessionId") == self.session
        ]

    def errors(self):
        return [
            event for event in self.browser.events if event["method"] == "Runtime.exceptionThrown"
        ]


def frames(strip, size):
    """An interpolation strip's pictures, left to right."""
    return [strip[:, k * size : (k + 1) * size] for k in range(strip.shape[1] // size)]


@pytest.fixture(scope="module")
def explorer_run(tmp_path_factory, mnist_dir):
    """A short real MNIST run (about 10 s on 2 cores), long enough for its decoder to draw
    different things in different places: its folder and its saved decoder."""
    import keras

    import main

    output_dir = tmp_path_factory.mktemp("explorer-run")
    short = dict(limit=LIMIT, epochs=2, batch_size=16, filters=16, hidden_units=64)
    main.train(quick_config(output_dir, mnist_dir, **short))
    decoder = keras.saving.load_model(output_dir / "models" / "decoder.keras")
    return output_dir, decoder


@pytest.mark.slow
def test_the_page_decodes_where_the_pointer_is(browser, explorer_run, mnist_dir):
    output_dir, decoder = explorer_run
    path = output_dir / "plots" / "explorer.html"
    assert path.stat().st_size <= explorer.PAGE_LIMIT
    page = Page(browser, path)
    data, size = page.data, page.data["image_size"]
    assert data["latent_dim"] == 2 and data["cells"] >= 32
    error = data["error"]["max"]
    assert 0 < error <= MAX_ERROR and 0 < data["error"]["mean"] <= MEAN_ERROR
    assert f"at most {error:.3f}" in page.text()

    # Two points of the square, off the grid: the page's picture is the saved decoder's
    # there, within the error the page states, and it differs between the two.
    pictures = []
    for fx, fy in ((0.31, 0.42), (0.68, 0.63)):
        (u, v), picture = page.point(fx, fy)
        _, expected = page.at(fx, fy)
        assert np.allclose((u, v), expected, atol=2 * data["half"] / page.box["width"])
        truth = decoder.predict(np.array([[u, v]], np.float32), verbose=0)[0]
        assert picture.shape == truth.shape == (size, size, 1)
        assert np.abs(picture - truth).max() <= error + 1e-9
        pictures.append((picture, truth))
    (first, first_truth), (second, second_truth) = pictures
    change = np.abs(first - second).mean()
    assert change > max(0.02, 5 * data["error"]["mean"])
    assert abs(change - np.abs(first_truth - second_truth).mean()) < data["error"]["mean"] + 0.01

    # Two clicks pin the ends of a path, drawn as the decoder's pictures along it.
    page.click(0.2, 0.25)
    state = page.click(0.75, 0.8)
    assert len(state["pins"]) == 2
    ends = np.array([[pin["u"], pin["v"]] for pin in state["pins"]])
    steps = frames(page.picture("interpolation"), size)
    assert len(steps) == data["steps"]
    weights = np.linspace(0, 1, len(steps))[:, None]
    truth = decoder.predict(
        ((1 - weights) * ends[0] + weights * ends[1]).astype(np.float32), verbose=0
    )
    assert np.abs(np.stack(steps) - truth).max() <= error + 1e-9
    assert np.abs(steps[0] - steps[-1]).mean() > max(0.02, 5 * data["error"]["mean"])

    # Hovering a test point shows that image and its reconstruction.
    points = data["points"]
    (centre_u, centre_v), half = data["centre"], data["half"]
    u, v = points["u"][len(points["u"]) // 2], points["v"][len(points["v"]) // 2]
    page.point((u - centre_u + half) / (2 * half), (centre_v + half - v) / (2 * half))
    index = page.evaluate("explorer.state.hovered")  # the nearest point within 5 pixels
    u, v = points["u"][index], points["v"][index]
    assert index >= 0
    test_images = data_module.load_images(
        "mnist", mnist_dir, limit=LIMIT, image_size=size, test_only=True, verbose=False
    ).test_images
    assert np.abs(page.picture("original") - test_images[index]).max() <= 0.5 / 255 + 1e-9
    reconstruction = decoder.predict(np.array([[u, v]], np.float32), verbose=0)[0]
    assert np.abs(page.picture("reconstruction") - reconstruction).max() <= 1 / 255

    # Moving across the square, a picture takes under 1/30 s to draw (the median of 30), and
    # the page asked nothing of any network.
    for step in range(30):
        page.point(0.05 + 0.03 * step, 0.5)
    assert np.median(page.evaluate("explorer.state.drawMs")[-30:]) < 1000 / 30
    urls = page.requests()
    assert urls[0] == path.resolve().as_uri()
    assert all(url.startswith("data:") for url in urls[1:]), urls
    assert page.evaluate("performance.getEntriesByType('resource').length") == 0
    assert not page.errors()


@pytest.mark.slow
def test_a_conditional_colour_page_decodes_the_chosen_class(tmp_path, browser):
    model = small_vae(conditional=True, colour="rgb", latent_dim=3, image_size=16)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (60, 16, 16, 3)).astype(np.float32)
    labels = np.arange(60) % 10
    path = tmp_path / "explorer.html"
    names = [f"class {k}" for k in range(10)]
    written = explorer.write_explorer(model.encoder, model.decoder, images, labels, names, path)
    assert written == path.stat().st_size <= explorer.PAGE_LIMIT
    page = Page(browser, path)
    data = page.data
    assert data["conditional"] and len(data["grids"]) == 10 and data["channels"] == 3
    assert 0 < data["error"]["max"] <= MAX_ERROR and 0 < data["error"]["mean"] <= MEAN_ERROR
    assert "principal components" in page.text()
    # The plane of latent_space.png: the test images' first two principal components.
    z_mean = plotting.encode(model.encoder, images, labels)
    plane = np.stack([data["points"]["u"], data["points"]["v"]], axis=1)
    assert np.allclose(plane, plotting.principal_components(z_mean), atol=1e-4)

    origin, axes = np.array(data["origin"]), np.array(data["axes"])
    pictures = {}
    for label in (0, 7):
        page.evaluate(
            f"$('class').value = '{label}'; $('class').dispatchEvent(new Event('change'))"
        )
        (u, v), picture = page.point(0.4, 0.55)
        z = (origin + np.array([u, v]) @ axes).astype(np.float32)[None]
        truth = model.decoder.predict([z, np.eye(10, dtype=np.float32)[[label]]], verbose=0)[0]
        assert np.abs(picture - truth).max() <= data["error"]["max"] + 1e-9
        pictures[label] = picture
    assert np.abs(pictures[0] - pictures[7]).max() > 0
    assert not page.errors()


@pytest.mark.slow
def test_evaluate_only_writes_the_same_page_again(explorer_run, mnist_dir):
    import main

    output_dir, _ = explorer_run
    path = output_dir / "plots" / "explorer.html"
    written = path.read_bytes()
    path.unlink()
    main.main(
        ["--evaluate-only", "--output-dir", str(output_dir), "--data-dir", mnist_dir]
        + ["--limit", str(LIMIT), "--iw-samples", "2"]
    )
    assert path.read_bytes() == written


def test_the_page_keeps_under_its_size_limit_with_pictures_that_do_not_compress(
    tmp_path, monkeypatch
):
    """Noise for test images and for what the decoder draws: the page takes fewer test
    images and a coarser grid, and stays within its limit (here a twelfth of the real one,
    for 16x16 colour images)."""
    import keras

    monkeypatch.setattr(explorer, "PAGE_LIMIT", 400_000)
    size, channels = 16, 3
    image = keras.Input((size, size, channels))
    flat = keras.layers.Flatten()(image)
    encoder = keras.Model(image, [keras.layers.Dense(2)(flat), keras.layers.Dense(2)(flat)])
    z = keras.Input((2,))
    noise = keras.initializers.RandomNormal(stddev=20.0, seed=1)  # every pixel its own value
    pixels = keras.layers.Dense(size * size * channels, "sigmoid", kernel_initializer=noise)(z)
    decoder = keras.Model(z, keras.layers.Reshape((size, size, channels))(pixels))
    images = np.random.default_rng(0).uniform(0, 1, (600, size, size, channels)).astype("float32")
    path = tmp_path / "explorer.html"
    written = explorer.write_explorer(encoder, decoder, images, None, None, path)
    assert written == path.stat().st_size <= 400_000
    data = json.loads(path.read_text().split('type="application/json">')[1].split("</script>")[0])
    assert explorer.COARSEST_GRID < data["cells"] < explorer.FINEST_GRID
    assert 0 < len(data["points"]["u"]) < 600  # not every test image fits
