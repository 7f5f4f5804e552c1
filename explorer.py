"""plots/explorer.html: the latent-space explorer, one page that opens from disk.

The page draws the test images' z_mean as a scatter coloured by class and, beside it, the
decoder's image wherever the pointer is in the visible square. It needs no server, no
network and no library: everything it shows is inside the file.

How the decoder reaches the page (docs/explorer.md): the run's own decoder decodes a fine
grid of points over the square (one grid per class for a conditional model), stored as
8-bit PNG sprite sheets; the page blends the four grid images around the pointer
(bilinear interpolation). The grid is as fine as the page's size limit allows, and the
blend's error against the decoder's true output is measured here, at points between the
grid's, and written on the page. For a latent size above 2 the square lies in the plane of
the first two principal components of the test images' z_mean, as in latent_space.png.
"""

import base64
import html
import io
import json
import math
import os

import matplotlib
import numpy as np
from PIL import Image

import plotting

PAGE_LIMIT = 5_000_000  # bytes: the whole page, its pictures included
FINEST_GRID = 64  # decoded images along each side of the square, at most
COARSEST_GRID = 8
POINTS = 2000  # test images on the scatter (the first ones), each with its reconstruction
POINTS_SHARE = 0.35  # of PAGE_LIMIT, at most, for those test images and reconstructions
PAGE_TEXT = 40_000  # bytes kept for the page's HTML, script and coordinates
RANDOM_CHECKS = 500  # random points, besides every cell's centre, where the error is measured
INTERPOLATION_STEPS = 10
VIEW_QUANTILE = 99  # percent: the middle of the test points, along each axis, in the square
UNLABELLED_COLOUR = "#1f77b4"  # matplotlib's first colour, as in latent_space.png


def latent_plane(z_mean):
    """(origin, axes, coordinates): the plane the page shows, z = origin + (u, v) @ axes, and
    the test points' (u, v) in it. A 2-D latent space is the plane itself; a larger one is
    seen in the plane of its first two principal components (latent_space.png's)."""
    latent_dim = z_mean.shape[1]
    if latent_dim == 2:
        origin, axes = np.zeros(2), np.eye(2)
    else:
        # As latent_space.png computes them (in z_mean's float32: the axes' signs match).
        origin, axes = (part.astype(np.float64) for part in plotting.principal_plane(z_mean))
    return origin, axes, (z_mean - origin) @ axes.T


def visible_square(coordinates):
    """(centre u, centre v, half its side): the square the page shows, around the middle
    VIEW_QUANTILE percent of the points along each axis (with a margin of a twentieth),
    its centre rounded to a hundredth, its half side up to a tenth, and at least 1."""
    tail = (100 - VIEW_QUANTILE) / 2
    low, high = np.percentile(coordinates, [tail, 100 - tail], axis=0)
    centre = np.round((low + high) / 2, 2)
    reach = max(np.max(high - centre), np.max(centre - low)) * 1.05
    return float(centre[0]), float(centre[1]), max(1.0, math.ceil(10 * reach) / 10)


def to_latent(origin, axes, uv):
    return (origin + np.asarray(uv, np.float64) @ axes).astype(np.float32)


def grid_points(cells, square):
    """The grid's (u, v) over the square, row by row from the top down, each row from left
    to right: `cells` points along each side, its corners included."""
    centre_u, centre_v, half = square
    values = np.linspace(-half, half, cells)
    return np.stack(
        [centre_u + np.tile(values, cells), centre_v + np.repeat(values[::-1], cells)], axis=1
    )


def decode_plane(decoder, origin, axes, uv, label):
    """The decoder's images at these (u, v), with this class if conditional."""
    return plotting.decode(decoder, to_latent(origin, axes, uv), np.full(len(uv), label))


def eight_bit(images):
    scaled = np.clip(images, 0, 1).astype(np.float32, copy=False)
    scaled *= 255  # in place: these arrays run to hundreds of megabytes
    return np.round(scaled, out=scaled).astype(np.uint8)


def png_uri(picture):
    """An (h, w, channels) uint8 picture as a data: URI of a PNG (grey or RGB)."""
    buffer = io.BytesIO()
    Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(
        buffer, format="PNG", optimize=True
    )
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def sheet_uri(images, columns):
    """Images in [0, 1] as one PNG sprite sheet, `columns` to a row."""
    return png_uri(eight_bit(plotting.image_grid(images, columns)))


def blend(grid, uv, square):
    """What the page draws at each (u, v): the bilinear blend of the four 8-bit grid images
    around it, rounded to 8 bits, in [0, 1]. `grid`: (cells, cells, size, size, channels)
    uint8, rows from the top. The arithmetic is the page's, step by step."""
    cells, (centre_u, centre_v, half) = grid.shape[0], square
    u, v = np.asarray(uv, np.float64).T
    gx = np.clip((u - centre_u + half) / (2 * half) * (cells - 1), 0, cells - 1)
    gy = np.clip((half - (v - centre_v)) / (2 * half) * (cells - 1), 0, cells - 1)
    i = np.minimum(np.floor(gx), cells - 2).astype(int)
    j = np.minimum(np.floor(gy), cells - 2).astype(int)
    fx, fy = gx - i, gy - j
    weights = [(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]
    corners = [grid[j, i], grid[j, i + 1], grid[j + 1, i], grid[j + 1, i + 1]]
    # Summed in place, in the page's order: a blend of many large pictures would otherwise
    # spend most of its time making temporary arrays. Weights that sum to 1 keep the value
    # within [0, 255].
    value = np.zeros(corners[0].shape)
    for weight, corner in zip(weights, corners, strict=True):
        value += weight.reshape(-1, 1, 1, 1) * corner
    np.round(value, out=value)  # a canvas rounds halves to even too
    value /= 255
    return value


def blend_errors(decoder, origin, axes, grid, square, label, seed=0):
    """|blend - decoder| at every cell's centre, where a blend is furthest from the grid,
    and at RANDOM_CHECKS points drawn uniformly over the square: (max, mean, points)."""
    cells, (centre_u, centre_v, half) = grid.shape[0], square
    step = 2 * half / (cells - 1)
    centres = grid_points(cells - 1, (centre_u, centre_v, half - step / 2))
    uniform = np.random.default_rng(seed).uniform(-half, half, (RANDOM_CHECKS, 2))
    uv = np.concatenate([centres, uniform + [centre_u, centre_v]])
    error = np.abs(blend(grid, uv, square) - decode_plane(decoder, origin, axes, uv, label))
    return float(error.max()), float(error.mean()), len(uv)


def class_colours(class_names):
    """Each class's colour as in latent_space.png (plotting.class_colours)."""
    if not class_names:
        return [UNLABELLED_COLOUR]
    colours, top = plotting.class_colours(len(class_names))
    colour_map = matplotlib.colormaps[colours] if isinstance(colours, str) else colours
    scale = matplotlib.colors.Normalize(-0.5, top)
    return [matplotlib.colors.to_hex(colour_map(scale(label))) for label in range(len(class_names))]


def point_sheets(decoder, test_images, z_mean, labels, count):
    """The first `count` test images and their reconstructions (decoded from z_mean), as
    two sprite sheets; fewer images where the two would take more than their share."""
    while True:
        columns = math.ceil(math.sqrt(count))
        reconstructions = plotting.decode(
            decoder, z_mean[:count], plotting.take(labels, slice(count))
        )
        sheets = [sheet_uri(test_images[:count], columns), sheet_uri(reconstructions, columns)]
        size = sum(map(len, sheets))
        if size <= POINTS_SHARE * PAGE_LIMIT or count == 1:
            return count, columns, sheets
        count = max(1, int(count * POINTS_SHARE * PAGE_LIMIT / size * 0.95))


def grid_sheets(decoder, origin, axes, square, labels, budget):
    """One sheet of grid images per class (one in all if unconditional), with as many cells
    as `budget` bytes hold, from FINEST_GRID down: (cells, grids as uint8, sheets)."""
    cells = FINEST_GRID
    while True:
        grids, sheets = [], []
        for label in labels:
            images = decode_plane(decoder, origin, axes, grid_points(cells, square), label)
            grids.append(eight_bit(images).reshape(cells, cells, *images.shape[1:]))
            sheets.append(sheet_uri(images, cells))
            # The first class's sheet tells what every class's takes: too much, stop early.
            if len(sheets[0]) * len(labels) > budget and cells > COARSEST_GRID:
                break
        else:
            if sum(map(len, sheets)) <= budget or cells == COARSEST_GRID:
                return cells, grids, sheets
        size = max(sum(map(len, sheets)), len(sheets[0]) * len(labels))
        cells = max(COARSEST_GRID, min(cells - 1, int(cells * math.sqrt(budget / size) * 0.97)))


def explorer_data(encoder, decoder, test_images, test_labels, class_names):
    """Everything the page shows, as a dictionary that becomes the page's JSON."""
    z_mean = plotting.encode(encoder, test_images, test_labels)
    origin, axes, coordinates = latent_plane(z_mean)
    square = visible_square(coordinates)
    conditional = plotting.is_conditional(decoder)
    classes = list(range(decoder.inputs[1].shape[-1])) if conditional else [None]

    count, columns, point_uris = point_sheets(
        decoder, test_images, z_mean, test_labels, min(len(test_images), POINTS)
    )
    budget = PAGE_LIMIT - sum(map(len, point_uris)) - PAGE_TEXT
    cells, grids, grid_uris = grid_sheets(decoder, origin, axes, square, classes, budget)
    errors = [
        blend_errors(decoder, origin, axes, grid, square, label)
        for grid, label in zip(grids, classes, strict=True)
    ]
    labels = test_labels[:count] if test_labels is not None else np.zeros(count, int)
    return {
        "image_size": int(test_images.shape[1]),
        "channels": int(test_images.shape[-1]),
        "latent_dim": int(z_mean.shape[1]),
        "origin": origin.tolist(),
        "axes": axes.tolist(),
        "centre": square[:2],
        "half": square[2],
        "cells": cells,
        "grids": grid_uris,
        "conditional": conditional,
        "class_names": list(class_names) if class_names else None,
        "colours": class_colours(class_names),
        "points": {
            "u": [float(f"{value:.6g}") for value in coordinates[:count, 0]],
            "v": [float(f"{value:.6g}") for value in coordinates[:count, 1]],
            "label": [int(label) for label in labels],
            "columns": columns,
            "originals": point_uris[0],
            "reconstructions": point_uris[1],
            "of": len(test_images),
        },
        "error": {
            "max": max(error[0] for error in errors),
            "mean": float(np.mean([error[1] for error in errors])),
            "points": sum(error[2] for error in errors),
        },
        "steps": INTERPOLATION_STEPS,
    }


def describe(data):
    """The page's words on what it shows and how: (plane, method)."""
    cells, error = data["cells"], data["error"]
    (centre_u, centre_v), half = data["centre"], data["half"]
    spans = [f"[{centre - half:.2f}, {centre + half:.2f}]" for centre in (centre_u, centre_v)]
    if data["latent_dim"] == 2:
        plane = f"The latent space z = (z[0], z[1]), over z[0] in {spans[0]}, z[1] in {spans[1]}."
    else:
        plane = (
            f"The {data['latent_dim']}-D latent space seen in the plane of the first two "
            "principal components of the test images' z_mean (as in latent_space.png): "
            "z = mean + u·pc1 + v·pc2, the other directions held at the mean, over "
            f"u in {spans[0]}, v in {spans[1]}. A point's reconstruction is decoded from its "
            "own z_mean, off the plane."
        )
    per_class = ", one per class" if data["conditional"] else ""
    method = (
        f"The picture at the pointer blends the four nearest of a {cells} × {cells} grid of "
        f"the run's decoder images over the square{per_class} (bilinear, 8-bit). Against "
        f"the decoder's own output at {error['points']:,} points between the grid's (every "
        f"cell's centre and {RANDOM_CHECKS} random points{' per class' if per_class else ''}), "
        f"its pixel values differ by at most {error['max']:.3f} (mean {error['mean']:.4f}) "
        "on the 0-1 scale."
    )
    return plane, method


def page(data):
    """The page's HTML, the data inside it as JSON."""
    plane, method = describe(data)
    points = data["points"]
    shown = len(points["u"])
    (centre_u, centre_v), half = data["centre"], data["half"]
    outside = sum(
        max(abs(u - centre_u), abs(v - centre_v)) > half
        for u, v in zip(points["u"], points["v"], strict=True)
    )
    scatter = f"Test images' z_mean: the first {shown:,} of {points['of']:,}"
    if outside:
        scatter += f" ({outside:,} outside the square)"
    if data["latent_dim"] > 2:
        scatter += ", principal components 1 and 2"
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (
        TEMPLATE.replace("__SCATTER__", html.escape(scatter))
        .replace("__PLANE__", html.escape(plane))
        .replace("__METHOD__", html.escape(method))
        .replace("__DATA__", payload)
    )


def write_explorer(encoder, decoder, test_images, test_labels, class_names, path):
    """Write the explorer page of these test images to `path`; return its size in bytes."""
    text = page(explorer_data(encoder, decoder, test_images, test_labels, class_names))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        file.write(text)
    return len(text.encode("utf-8"))


TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>Latent-space explorer</title>
<style>
body { font: 14px sans-serif; margin: 16px; color: #222; max-width: 1100px; }
h1 { font-size: 20px; margin: 0 0 8px; }
#main { display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; }
#scatter { display: block; width: 480px; height: 480px; cursor: crosshair; }
#frame { outline: 1px solid #999; }
canvas.picture { image-rendering: pixelated; background: #eee; }
#decoded { width: 224px; height: 224px; }
#original, #reconstruction { width: 104px; height: 104px; }
#interpolation { height: 64px; }
figure { margin: 0 0 12px; }
figcaption, .note { color: #555; font-size: 13px; }
#legend { margin-bottom: 12px; }
#legend span { display: inline-block; margin: 2px 10px 2px 0; }
#legend i { display: inline-block; width: 10px; height: 10px; border-radius: 5px;
 margin-right: 4px; }
</style>
</head>
<body>
<h1>Latent-space explorer</h1>
<p class="note">__PLANE__ Point anywhere in the square: the decoder's image follows. Hover a
test point for its image and reconstruction. Click two points for the path between them.</p>
<div id="main">
<div>
<div id="frame"><canvas id="scatter" width="480" height="480"></canvas></div>
<p class="note">__SCATTER__</p>
<div id="legend"></div>
</div>
<div>
<p id="classes" hidden><label>Decode as class <select id="class"></select></label></p>
<figure><canvas id="decoded" class="picture"></canvas>
<figcaption id="where">Point into the square</figcaption></figure>
<div style="display: flex; gap: 12px">
<figure><canvas id="original" class="picture"></canvas><figcaption>test image</figcaption></figure>
<figure><canvas id="reconstruction" class="picture"></canvas>
<figcaption>reconstruction</figcaption></figure>
</div>
<p id="hovered" class="note">Hover a test point</p>
</div>
</div>
<figure><canvas id="interpolation" class="picture"></canvas>
<figcaption id="path">Click two points: the decoder's images on the straight line between
them</figcaption></figure>
<p class="note">__METHOD__</p>
<script id="explorer-data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("explorer-data").textContent);
const S = D.image_size, N = D.cells, H = D.half, [CU, CV] = D.centre, P = D.points;
const $ = (id) => document.getElementById(id);
const state = { u: null, v: null, label: 0, pins: [], hovered: -1, updates: 0, drawMs: [] };
window.explorer = { state, ready: false };
const scatter = $("scatter"), W = scatter.width;
const pixel = (u, v) => [(u - CU + H) / (2 * H) * W, (H - (v - CV)) / (2 * H) * W];
const picture = (id, width) => {
  const canvas = $(id);
  canvas.width = width; canvas.height = S;
  return canvas.getContext("2d");
};
const decoded = picture("decoded", S), frame = new ImageData(S, S);
const strip = picture("interpolation", S * D.steps);
$("interpolation").style.width = (S * D.steps * 2) + "px";
const original = picture("original", S), reconstruction = picture("reconstruction", S);

async function pixels(uri) {  // a PNG's RGBA bytes and width
  const image = new Image();
  image.src = uri;
  await image.decode();
  const canvas = document.createElement("canvas");
  canvas.width = image.width; canvas.height = image.height;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(image, 0, 0);
  return { data: context.getImageData(0, 0, image.width, image.height).data, width: image.width };
}

// The bilinear blend of the four grid images around (u, v) (explorer.blend in Python).
function blend(sheet, u, v, out) {
  const gx = Math.min(Math.max((u - CU + H) / (2 * H) * (N - 1), 0), N - 1);
  const gy = Math.min(Math.max((H - (v - CV)) / (2 * H) * (N - 1), 0), N - 1);
  const i = Math.min(Math.floor(gx), N - 2), j = Math.min(Math.floor(gy), N - 2);
  const fx = gx - i, fy = gy - j;
  const w00 = (1 - fx) * (1 - fy), w10 = fx * (1 - fy), w01 = (1 - fx) * fy, w11 = fx * fy;
  const d = sheet.data, row = sheet.width * 4, across = S * 4;
  for (let y = 0; y < S; y++) {
    const a = (j * S + y) * row + i * across, c = a + S * row, o = y * across;
    for (let x = 0; x < across; x++) {
      out.data[o + x] = w00 * d[a + x] + w10 * d[a + across + x] + w01 * d[c + x] +
        w11 * d[c + across + x];
    }
  }
  return out;
}

function tile(sheet, index, context) {  // one test image from a sprite sheet
  const image = new ImageData(S, S), row = sheet.width * 4;
  const left = (index % P.columns) * S * 4, top = Math.floor(index / P.columns) * S;
  for (let y = 0; y < S; y++) {
    image.data.set(sheet.data.subarray((top + y) * row + left, (top + y) * row + left + S * 4),
      y * S * 4);
  }
  context.putImageData(image, 0, 0);
}

let sheets, originals, reconstructions, dots;
const name = (label) => D.class_names ? D.class_names[label] : "";

function drawScatter() {
  const context = scatter.getContext("2d");
  context.drawImage(dots, 0, 0);
  context.strokeStyle = "#000"; context.fillStyle = "#000";
  const pins = state.pins.map((pin) => pixel(pin.u, pin.v));
  if (pins.length === 2) {
    context.beginPath(); context.moveTo(...pins[0]); context.lineTo(...pins[1]); context.stroke();
  }
  for (const [x, y] of pins) {
    context.beginPath(); context.arc(x, y, 5, 0, 2 * Math.PI); context.stroke();
  }
  if (state.hovered >= 0) {
    const [x, y] = pixel(P.u[state.hovered], P.v[state.hovered]);
    context.beginPath(); context.arc(x, y, 4, 0, 2 * Math.PI); context.stroke();
  }
}

function drawStrip() {
  if (state.pins.length < 2) return;
  const [a, b] = state.pins, image = new ImageData(S, S);
  for (let k = 0; k < D.steps; k++) {
    const t = k / (D.steps - 1);
    blend(sheets[state.label], a.u + t * (b.u - a.u), a.v + t * (b.v - a.v), image);
    strip.putImageData(image, k * S, 0);
  }
  const at = (p) => `(${p.u.toFixed(2)}, ${p.v.toFixed(2)})`;
  $("path").textContent = `From ${at(a)} to ${at(b)}, ${D.steps} steps` +
    (D.conditional ? `, class ${name(state.label)}` : "");
}

let pending = false;
function draw() {
  pending = false;
  const start = performance.now();
  if (state.u !== null) {
    decoded.putImageData(blend(sheets[state.label], state.u, state.v, frame), 0, 0);
    const axis = D.latent_dim === 2 ? ["z[0]", "z[1]"] : ["u", "v"];
    $("where").textContent =
      `${axis[0]} = ${state.u.toFixed(2)}, ${axis[1]} = ${state.v.toFixed(2)}`;
  }
  drawScatter();
  state.updates += 1;
  state.drawMs = [...state.drawMs.slice(-99), performance.now() - start];  // the last 100
}
const redraw = () => { if (!pending) { pending = true; requestAnimationFrame(draw); } };

function pointer(event) {  // the latent (u, v) under the pointer
  const box = scatter.getBoundingClientRect();
  const x = (event.clientX - box.left) / box.width, y = (event.clientY - box.top) / box.height;
  return { u: CU - H + 2 * H * x, v: CV + H - 2 * H * y, x: x * W, y: y * W };
}

function hover(at) {  // the nearest test point within 5 pixels, if any
  let best = -1, nearest = 25;
  for (let k = 0; k < P.u.length; k++) {
    const [x, y] = pixel(P.u[k], P.v[k]), distance = (x - at.x) ** 2 + (y - at.y) ** 2;
    if (distance < nearest) { best = k; nearest = distance; }
  }
  if (best < 0 || best === state.hovered) return;
  state.hovered = best;
  tile(originals, best, original);
  tile(reconstructions, best, reconstruction);
  $("hovered").textContent = `Test image ${best}` +
    (D.class_names ? `, class ${name(P.label[best])}` : "");
}

scatter.addEventListener("pointermove", (event) => {
  const at = pointer(event);
  state.u = at.u; state.v = at.v;
  hover(at);
  redraw();
});
scatter.addEventListener("click", (event) => {
  const at = pointer(event);
  if (state.pins.length === 2) state.pins = [];
  state.pins.push({ u: at.u, v: at.v });
  drawStrip();
  redraw();
});

async function start() {
  sheets = await Promise.all(D.grids.map(pixels));
  originals = await pixels(P.originals);
  reconstructions = await pixels(P.reconstructions);
  dots = document.createElement("canvas");
  dots.width = dots.height = W;
  const context = dots.getContext("2d");
  context.fillStyle = "#fff"; context.fillRect(0, 0, W, W);
  context.strokeStyle = "#ddd";
  context.fillStyle = "#777"; context.font = "11px sans-serif";
  for (let value = Math.ceil(CU - H); value <= CU + H; value++) {  // whole values of u
    const x = pixel(value, CV)[0];
    context.beginPath(); context.moveTo(x, 0); context.lineTo(x, W); context.stroke();
    context.fillText(value, Math.min(x + 2, W - 12), W - 3);
  }
  for (let value = Math.ceil(CV - H); value <= CV + H; value++) {  // and of v
    const y = pixel(CU, value)[1];
    context.beginPath(); context.moveTo(0, y); context.lineTo(W, y); context.stroke();
    context.fillText(value, 2, Math.max(y - 2, 11));
  }
  for (let k = 0; k < P.u.length; k++) {
    context.fillStyle = D.colours[D.class_names ? P.label[k] : 0];
    const [x, y] = pixel(P.u[k], P.v[k]);
    context.fillRect(x - 1.5, y - 1.5, 3, 3);
  }
  const names = D.class_names || ["test image (unlabelled)"];
  $("legend").innerHTML = "";
  names.forEach((text, label) => {
    const entry = document.createElement("span"), dot = document.createElement("i");
    dot.style.background = D.colours[D.class_names ? label : 0];
    entry.append(dot, text);
    $("legend").append(entry);
  });
  if (D.conditional) {
    $("classes").hidden = false;
    D.class_names.forEach((text, label) => $("class").add(new Option(text, label)));
    $("class").addEventListener("change", () => {
      state.label = Number($("class").value);
      drawStrip();
      redraw();
    });
  }
  drawScatter();
  window.explorer.ready = true;
}
start();
</script>
</body>
</html>
"""
