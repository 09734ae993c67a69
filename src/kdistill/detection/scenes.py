"""Seeded driving-like scenes for detection: something real to learn, with room for distillation to help.

A pinhole camera CAMERA_HEIGHT_M above a flat road looks at the horizon (row `horizon`). A thing standing on the
ground at depth Z metres has its foot focal * CAMERA_HEIGHT_M / Z pixels below the horizon and is focal / Z
pixels per metre: far objects are small and near the horizon. Everything (objects, poles, trees, buildings,
distractor shapes) is drawn back to front, so nearer things occlude farther ones; then lighting, blur and
sensor noise are applied to the whole image.

Boxes are of the *visible* extent, as in COCO: the tight box of the pixels an object still owns once all in
front of it is drawn, x1 y1 x2 y2 with pixel (row r, column c) covering [c, c + 1) x [r, r + 1). An object is
left unlabelled (drawn, not in the boxes) when less than MIN_VISIBLE of its pixels are visible (mostly hidden:
by nearer things or by the frame's edge) or its visible box is narrower or lower than MIN_BOX_SIDE pixels. Boxes are those of the sharp
drawing: blur may spread an edge a pixel or two beyond its box. A sign or light's box is its plate or housing,
not its pole.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import torch

from kdistill.detection.coco import DetectionData

CLASSES: tuple[str, ...] = ("car", "truck", "bus", "pedestrian", "sign", "light")
CAR, TRUCK, BUS, PEDESTRIAN, SIGN, LIGHT = range(len(CLASSES))
SCENERY = -1  # the label of drawn things that are not objects: poles, trees, buildings, distractors

CAMERA_HEIGHT_M = 1.5
FOCAL_PER_PIXEL = 0.9  # focal length in pixels per pixel of image size: a ~58 degree field of view
LANE_WIDTH_M = 3.5
MIN_VISIBLE = 0.5
MIN_BOX_SIDE = 2
MIN_SIZE = 32

# depth ranges (metres) per class: far enough to be a few pixels tall, near enough to stand in the frame
DEPTH_RANGE_M = {CAR: (4.0, 45.0), TRUCK: (6.0, 55.0), BUS: (6.0, 55.0), PEDESTRIAN: (4.0, 30.0)}
DEPTH_RANGE_M |= {SIGN: (5.0, 32.0), LIGHT: (6.0, 35.0)}
# a vehicle crossing the view is nearer than this only when it is too long to fit in the frame
SIDE_VIEW_NEAR_M = {CAR: 5.0, TRUCK: 9.0, BUS: 12.0}

CAR_PAINTS = [(0.92, 0.92, 0.9), (0.7, 0.72, 0.74), (0.12, 0.12, 0.14), (0.7, 0.1, 0.1), (0.15, 0.25, 0.6)]
CAR_PAINTS += [(0.15, 0.35, 0.2), (0.75, 0.68, 0.5), (0.35, 0.35, 0.38)]
TRUCK_PAINTS = [(0.9, 0.9, 0.88), (0.85, 0.55, 0.1), (0.3, 0.45, 0.7), (0.55, 0.55, 0.55), (0.6, 0.12, 0.1)]
BUS_PAINTS = [(0.95, 0.75, 0.1), (0.8, 0.15, 0.1), (0.2, 0.4, 0.75), (0.9, 0.9, 0.88), (0.2, 0.55, 0.3)]
CLOTHES = [(0.8, 0.15, 0.15), (0.15, 0.2, 0.5), (0.9, 0.85, 0.3), (0.2, 0.2, 0.2), (0.85, 0.85, 0.85)]
CLOTHES += [(0.3, 0.55, 0.3), (0.55, 0.35, 0.2)]
SKIN = [(0.95, 0.8, 0.65), (0.8, 0.6, 0.45), (0.55, 0.38, 0.25), (0.35, 0.24, 0.16)]
GLASS, TYRE, HUB, TAIL = (0.16, 0.2, 0.26), (0.06, 0.06, 0.07), (0.5, 0.5, 0.52), (0.8, 0.06, 0.05)
POLE, RED, WHITE, BLUE, DARK = (
    (0.45, 0.46, 0.48),
    (0.82, 0.08, 0.08),
    (0.95,) * 3,
    (0.1, 0.3, 0.75),
    (0.1,) * 3,
)
LAMPS = [(0.95, 0.1, 0.05), (1.0, 0.7, 0.05), (0.1, 0.95, 0.35)]  # red, amber, green


@dataclass(frozen=True, slots=True, eq=False)
class Part:
    """One filled shape in pixels, brightness shaded linearly from its top row to its bottom row."""

    kind: str  # "rect" (x1, y1, x2, y2) | "ellipse" (cx, cy, rx, ry) | "triangle" (x0, y0, x1, y1, x2, y2)
    geometry: tuple[float, ...]
    color: np.ndarray  # (3,) float32 RGB; shaded and clipped to [0, 1] when painted
    shade: tuple[float, float] = (1.0, 1.0)


@dataclass(frozen=True, slots=True)
class Element:
    label: int  # index into CLASSES, or SCENERY
    depth: float  # metres; deeper elements are drawn first
    parts: tuple[Part, ...]


@dataclass(frozen=True, eq=False)
class Ground:
    """The road and its surroundings, drawn before any element; colours are (3,) float32 RGB."""

    sky_top: np.ndarray
    sky_horizon: np.ndarray
    verge: np.ndarray
    sidewalk: np.ndarray
    road: np.ndarray
    road_half_width: float  # metres from the road's centre to its edge
    sidewalk_width: float
    lane_lines: tuple[float, ...]  # lateral positions (metres) of the dashed lines between lanes
    dash_phase: float  # metres
    crosswalk_depth: float | None  # where a zebra crossing starts (metres), or None


@dataclass(frozen=True)
class SceneLayout:
    """Everything random about a scene but its camera effects: `paint` turns it into pixels."""

    size: int
    horizon: float  # row of the horizon, pixels from the top
    vanish_x: float  # column of the road's vanishing point
    focal: float  # pixels
    ground: Ground
    elements: tuple[Element, ...]  # back to front


@dataclass(frozen=True)
class Painting:
    image: np.ndarray  # (3, H, W) float32 in [0, 1], before camera effects
    owner: np.ndarray  # (H, W) int32: index of the element drawn last at each pixel, -1 for road and sky


@dataclass(frozen=True)
class Objects:
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 of the visible pixels
    labels: np.ndarray  # (N,) int64
    visible_fraction: np.ndarray  # (N,) float32: visible pixels / pixels of the whole object drawn alone
    elements: np.ndarray  # (N,) int64: the object's index in the layout's elements


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # (3, H, W) float32 in [0, 1]
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in pixels
    labels: np.ndarray  # (N,) int64, indices into CLASSES
    visible_fraction: np.ndarray  # (N,) float32, 1.0 for an object neither occluded nor cut by the frame


def make_scenes(n: int, seed: int, size: int = 128) -> DetectionData:
    """n scenes; scene i is seeded from (seed, i) alone, so it is the same whatever n is."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    images = np.empty((n, 3, size, size), dtype=np.float32)
    boxes, labels = [], []
    for i in range(n):
        scene = render_scene(np.random.default_rng((seed, i)), size)
        images[i] = scene.image
        boxes.append(torch.from_numpy(scene.boxes))
        labels.append(torch.from_numpy(scene.labels))
    return DetectionData(images=torch.from_numpy(images), boxes=boxes, labels=labels, class_names=CLASSES)


def render_scene(rng: np.random.Generator, size: int = 128) -> Scene:
    """One size x size scene drawn from rng (layout, then camera effects)."""
    layout = sample_layout(rng, size)
    painting = paint(layout)
    objects = find_objects(layout, painting)
    image = apply_camera(painting.image, rng)
    return Scene(image, objects.boxes, objects.labels, objects.visible_fraction)


# ---------------------------------------------------------------------------------------------- drawing


def paint(layout: SceneLayout, skip: Collection[int] = ()) -> Painting:
    """Draw the ground, then every element not in `skip` (indices into layout.elements) back to front."""
    size = layout.size
    image = paint_ground(layout)
    owner = np.full((size, size), -1, dtype=np.int32)
    for index, element in enumerate(layout.elements):
        if index in skip:
            continue
        for part in element.parts:
            hit = raster(part, 0, size)
            if hit is None:
                continue
            rows, cols, mask = hit
            fill = part.color[:, None, None]  # (3, 1, 1), or shaded row by row (3, h, 1)
            if part.shade != (1.0, 1.0):
                fill = fill * _shade(part, rows)[None, :, None]
            if mask is None:
                image[:, rows, cols] = fill
                owner[rows, cols] = index
            else:
                np.copyto(image[:, rows, cols], fill, where=mask)
                owner[rows, cols][mask] = index
    return Painting(np.clip(image, 0.0, 1.0, out=image), owner)


def raster(part: Part, low: int, high: int) -> tuple[slice, slice, np.ndarray | None] | None:
    """(rows, columns, mask (h, w) or None for all) of the window a part covers within [low, high) squared.

    A pixel is covered when its centre is inside the shape; every part also covers the pixel holding its
    centre (rectangles: at least one row and one column), so that thin poles and far lamps do not vanish.
    None when the part lies outside the window.
    """
    g = part.geometry
    left, top, right, bottom = extent(part)
    if part.kind == "rect":
        c1, r1 = _edge(left), _edge(top)
        c2, r2 = max(_edge(right), c1 + 1), max(_edge(bottom), r1 + 1)
    else:  # every pixel whose centre may be inside
        c1, r1, c2, r2 = math.floor(left), math.floor(top), math.floor(right) + 1, math.floor(bottom) + 1
    c1, r1, c2, r2 = max(c1, low), max(r1, low), min(c2, high), min(r2, high)
    if c1 >= c2 or r1 >= r2:
        return None
    if part.kind == "rect":
        return slice(r1, r2), slice(c1, c2), None
    py = np.arange(r1, r2, dtype=np.float32)[:, None] + 0.5  # pixel centres (h, 1)
    px = np.arange(c1, c2, dtype=np.float32)[None, :] + 0.5  # (1, w)
    if part.kind == "ellipse":
        cx, cy, rx, ry = g
        mask = ((px - cx) / max(rx, 1e-6)) ** 2 + ((py - cy) / max(ry, 1e-6)) ** 2 <= 1.0
        _cover_centre(mask, cx, cy, r1, c1)
    else:
        xs, ys = g[0::2], g[1::2]
        # the sign of the cross product of each edge with the pixel centre: one sign on all three = inside
        sides = [
            (xs[j] - xs[i]) * (py - ys[i]) - (ys[j] - ys[i]) * (px - xs[i])
            for i, j in ((0, 1), (1, 2), (2, 0))
        ]
        mask = ((sides[0] >= 0) & (sides[1] >= 0) & (sides[2] >= 0)) | (
            (sides[0] <= 0) & (sides[1] <= 0) & (sides[2] <= 0)
        )
        _cover_centre(mask, sum(xs) / 3, sum(ys) / 3, r1, c1)
    return slice(r1, r2), slice(c1, c2), mask


def pixels_alone(element: Element, size: int) -> int:
    """Pixels the element covers drawn alone on a canvas reaching `2 * size` beyond each edge of the frame.

    Parts outside the frame count, so a half-truncated object is half visible.
    """
    hits = [hit for part in element.parts if (hit := raster(part, -2 * size, 3 * size)) is not None]
    if not hits:
        return 0
    r1, c1 = min(h[0].start for h in hits), min(h[1].start for h in hits)
    r2, c2 = max(h[0].stop for h in hits), max(h[1].stop for h in hits)
    union = np.zeros((r2 - r1, c2 - c1), dtype=bool)
    for rows, cols, mask in hits:
        window = union[rows.start - r1 : rows.stop - r1, cols.start - c1 : cols.stop - c1]
        window |= True if mask is None else mask
    return int(np.count_nonzero(union))


def extent(part: Part) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the shape in pixels."""
    g = part.geometry
    if part.kind == "rect":
        return g
    if part.kind == "ellipse":
        cx, cy, rx, ry = g
        return cx - rx, cy - ry, cx + rx, cy + ry
    xs, ys = g[0::2], g[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def _shade(part: Part, rows: slice) -> np.ndarray:
    """(h,) brightness of the part's rows in the window, linear from its top row to its bottom row."""
    _, top, _, bottom = extent(part)
    centres = np.arange(rows.start, rows.stop, dtype=np.float32) + 0.5
    t = np.clip((centres - top) / max(bottom - top, 1e-6), 0.0, 1.0)
    return part.shade[0] + (part.shade[1] - part.shade[0]) * t


def _edge(x: float) -> int:
    """The pixel edge nearest to x (halves round up, unlike Python's round)."""
    return math.floor(x + 0.5)


def _cover_centre(mask: np.ndarray, cx: float, cy: float, r1: int, c1: int) -> None:
    row, col = math.floor(cy) - r1, math.floor(cx) - c1
    if 0 <= row < mask.shape[0] and 0 <= col < mask.shape[1]:
        mask[row, col] = True


def paint_ground(layout: SceneLayout) -> np.ndarray:
    """(3, H, W) sky above the horizon; verge, sidewalks, road and its markings below, hazier with depth."""
    g, size = layout.ground, layout.size
    rows = np.arange(size, dtype=np.float32)[:, None] + 0.5  # (H, 1)
    cols = np.arange(size, dtype=np.float32)[None, :] + 0.5  # (1, W)
    below = rows > layout.horizon
    px_per_m = np.maximum(rows - layout.horizon, 1e-3) / CAMERA_HEIGHT_M  # lateral scale at each row (H, 1)
    depth = layout.focal / px_per_m  # metres (H, 1)
    lateral = (cols - layout.vanish_x) / px_per_m  # metres from the road's centre (H, W)
    line_half = np.maximum(0.075, 0.5 / px_per_m)  # 15 cm lines, at least a pixel wide
    side = np.abs(lateral)
    road = side <= g.road_half_width
    dashed = ((depth + g.dash_phase) % 9.0) < 3.0
    white = road & (np.abs(side - (g.road_half_width - 0.25)) <= line_half)
    for x in g.lane_lines:
        white |= dashed & (np.abs(lateral - x) <= line_half)
    if g.crosswalk_depth is not None:
        zebra = (depth >= g.crosswalk_depth) & (depth <= g.crosswalk_depth + 3.0)
        white |= road & zebra & ((lateral + 50.0) % 1.2 < 0.6)
    material = np.select(
        [~below, white, road, side <= g.road_half_width + g.sidewalk_width], [0, 4, 3, 2], default=1
    )
    palette = np.array([g.sky_top, g.verge, g.sidewalk, g.road, (0.9, 0.9, 0.88)], dtype=np.float32)
    image = palette[material].transpose(2, 0, 1).copy()  # (3, H, W)
    t = np.clip(rows / max(layout.horizon, 1.0), 0.0, 1.0)[None]  # sky gradient (1, H, 1)
    horizon_colour = g.sky_horizon[:, None, None]  # (3, 1, 1)
    image = np.where(below[None], image, g.sky_top[:, None, None] * (1 - t) + horizon_colour * t)
    haze = (1.0 - np.exp(-depth / 250.0))[None] * below[None]  # far ground fades to the horizon's colour
    return image * (1 - haze) + horizon_colour * haze


def find_objects(layout: SceneLayout, painting: Painting) -> Objects:
    """The labelled objects of a painting: visible boxes, dropping the mostly hidden and the tiny.

    Hidden means covered by something nearer or outside the frame.
    """
    visible = np.bincount(painting.owner.ravel() + 1, minlength=len(layout.elements) + 1)[1:]
    boxes, labels, fractions, indices = [], [], [], []
    for index, element in enumerate(layout.elements):
        if element.label == SCENERY or visible[index] == 0:
            continue
        fraction = visible[index] / pixels_alone(element, layout.size)
        if fraction < MIN_VISIBLE:
            continue
        rows, cols = np.nonzero(painting.owner == index)
        x1, y1, x2, y2 = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
        if min(x2 - x1, y2 - y1) < MIN_BOX_SIDE:
            continue
        boxes.append((x1, y1, x2, y2))
        labels.append(element.label)
        fractions.append(fraction)
        indices.append(index)
    return Objects(
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.array(labels, dtype=np.int64),
        visible_fraction=np.array(fractions, dtype=np.float32),
        elements=np.array(indices, dtype=np.int64),
    )


def apply_camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lighting (gain, tint, a cast shadow, gamma), then sometimes blur, then sensor noise; a new array."""
    size = image.shape[1]
    gain = (rng.uniform(0.6, 1.3) * rng.uniform(0.92, 1.08, size=3)).astype(np.float32)
    out = image * gain[:, None, None]
    if rng.random() < 0.35:  # the shadow of something out of view: one side of a random line, darker
        left, right = rng.uniform(0, size, size=2)
        cols = np.arange(size, dtype=np.float32)[None, :] + 0.5
        rows = np.arange(size, dtype=np.float32)[:, None] + 0.5
        shadowed = rows > left + (right - left) * cols / size
        out *= np.where(shadowed, np.float32(rng.uniform(0.55, 0.85)), np.float32(1.0))
    out = np.clip(out, 0.0, 1.0) ** np.float32(rng.uniform(0.8, 1.25))
    if rng.random() < 0.6:
        out = gaussian_blur(out, rng.uniform(0.3, 1.2))
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(rng.uniform(0.005, 0.04))
    return np.clip(out, 0.0, 1.0, out=out)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a (C, H, W) image over H and W, edges repeated; radius ceil(2 sigma)."""
    radius = max(1, math.ceil(2 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    height, width = image.shape[1:]
    padded = np.pad(image, ((0, 0), (radius, radius), (0, 0)), mode="edge")
    image = sum(w * padded[:, k : k + height] for k, w in enumerate(taps))
    padded = np.pad(image, ((0, 0), (0, 0), (radius, radius)), mode="edge")
    return sum(w * padded[:, :, k : k + width] for k, w in enumerate(taps))


# ---------------------------------------------------------------------------------------------- sampling


class _Sprite:
    """Collects parts given in metres around a ground point (x right, y up), placed in pixels.

    mirror flips x, so a template drawn facing right also faces left.
    """

    def __init__(self, u: float, v: float, scale: float, mirror: bool = False):
        self.u, self.v, self.scale, self.sign = u, v, scale, -1.0 if mirror else 1.0
        self.parts: list[Part] = []

    def _x(self, x: float) -> float:
        return self.u + self.sign * self.scale * x

    def _y(self, y: float) -> float:
        return self.v - self.scale * y

    def rect(self, x1, y1, x2, y2, color, shade=(1.0, 1.0)) -> None:
        a, b = self._x(x1), self._x(x2)
        self.parts.append(Part("rect", (min(a, b), self._y(y2), max(a, b), self._y(y1)), _rgb(color), shade))

    def ellipse(self, cx, cy, rx, ry, color, shade=(1.0, 1.0)) -> None:
        geometry = (self._x(cx), self._y(cy), self.scale * rx, self.scale * ry)
        self.parts.append(Part("ellipse", geometry, _rgb(color), shade))

    def triangle(self, points, color, shade=(1.0, 1.0)) -> None:
        geometry = tuple(v for x, y in points for v in (self._x(x), self._y(y)))
        self.parts.append(Part("triangle", geometry, _rgb(color), shade))


def _rgb(color) -> np.ndarray:
    """(3,) float32; values past [0, 1] (a bright paint shaded up) are clipped once, when painted."""
    return np.asarray(color, dtype=np.float32)


class _Camera:
    def __init__(self, horizon: float, vanish_x: float, focal: float):
        self.horizon, self.vanish_x, self.focal = horizon, vanish_x, focal

    def sprite(self, x: float, depth: float, mirror: bool = False) -> _Sprite:
        """A sprite standing on the ground `x` metres right of the road's centre, `depth` metres ahead."""
        scale = self.focal / depth
        return _Sprite(self.vanish_x + scale * x, self.horizon + scale * CAMERA_HEIGHT_M, scale, mirror)


def sample_layout(rng: np.random.Generator, size: int = 128) -> SceneLayout:
    """A random road (2-4 lanes), its objects and scenery, in the order they are drawn."""
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels, got {size}")
    camera = _Camera(size * rng.uniform(0.33, 0.47), size * rng.uniform(0.38, 0.62), FOCAL_PER_PIXEL * size)
    lanes = int(rng.integers(2, 5))
    half = lanes * LANE_WIDTH_M / 2
    ground = Ground(
        sky_top=_jitter(rng, (0.35, 0.55, 0.85), 0.15),
        sky_horizon=_jitter(rng, (0.75, 0.8, 0.85), 0.1),
        verge=_jitter(rng, (0.3, 0.42, 0.22), 0.08),
        sidewalk=_jitter(rng, (0.62, 0.6, 0.58), 0.06),
        road=_jitter(rng, (0.36, 0.36, 0.38), 0.06),
        road_half_width=half,
        sidewalk_width=rng.uniform(2.0, 4.0),
        lane_lines=tuple(-half + LANE_WIDTH_M * k for k in range(1, lanes)),
        dash_phase=rng.uniform(0, 9),
        crosswalk_depth=rng.uniform(6, 25) if rng.random() < 0.25 else None,
    )
    lane_centres = [-half + LANE_WIDTH_M * (k + 0.5) for k in range(lanes)]
    elements: list[Element] = []
    taken: list[tuple[float, float]] = []  # (lane centre, depth) of the vehicles driving in lanes
    for label, count in (
        (CAR, rng.integers(0, 6)),
        (TRUCK, rng.binomial(2, 0.35)),
        (BUS, rng.binomial(1, 0.4)),
    ):
        for _ in range(count):
            elements += _vehicle(rng, camera, label, lane_centres, half, taken)
    for _ in range(rng.integers(0, 5)):
        elements += _pedestrian(rng, camera, half, ground.sidewalk_width)
    for _ in range(rng.binomial(2, 0.55)):
        elements += _sign(rng, camera, half)
    for _ in range(rng.binomial(2, 0.45)):
        elements += _light(rng, camera, half, lane_centres)
    for _ in range(rng.integers(2, 9)):
        elements.append(_clutter(rng, camera, half, ground.sidewalk_width))
    for _ in range(rng.integers(2, 7)):
        elements.append(_skyline(rng, camera))
    elements.sort(key=lambda e: -e.depth)  # stable: a pole stays behind its own sign
    return SceneLayout(size, camera.horizon, camera.vanish_x, camera.focal, ground, tuple(elements))


def _jitter(rng: np.random.Generator, base, amount: float) -> np.ndarray:
    return _rgb(np.asarray(base) + rng.uniform(-amount, amount, size=3))


def _depth(rng: np.random.Generator, label: int, x: float, near: float = 0.0) -> float:
    """Log-uniform within the class's range, so near and far are both common; a thing x metres to the side
    is at least 2 * FOCAL_PER_PIXEL * |x| deep, so that it stands in the frame (focal |x| / depth <= size / 2).
    """
    low, far = DEPTH_RANGE_M[label]
    near = min(max(low, near, 2 * FOCAL_PER_PIXEL * abs(x)), far)
    return float(math.exp(rng.uniform(math.log(near), math.log(far))))


def _vehicle(rng, camera, label, lane_centres, half, taken) -> list[Element]:
    paints = {CAR: CAR_PAINTS, TRUCK: TRUCK_PAINTS, BUS: BUS_PAINTS}[label]
    body = _jitter(rng, paints[rng.integers(len(paints))], 0.05)
    if rng.random() < 0.25:  # crossing traffic, seen from the side
        x = rng.uniform(-half - 3, half + 3)
        depth = _depth(rng, label, x, SIDE_VIEW_NEAR_M[label])
        sprite = camera.sprite(x, depth, mirror=rng.random() < 0.5)
        {CAR: _car_side, TRUCK: _truck_side, BUS: _bus_side}[label](sprite, rng, body)
    else:  # in a lane, seen from behind; not within 6 m of another vehicle of its lane
        for _ in range(10):
            lane = lane_centres[rng.integers(len(lane_centres))]
            depth = _depth(rng, label, lane)
            if all(lane != other or abs(depth - d) > 6.0 for other, d in taken):
                break
        else:
            return []
        taken.append((lane, depth))
        sprite = camera.sprite(lane + rng.uniform(-0.3, 0.3), depth)
        {CAR: _car_rear, TRUCK: _truck_rear, BUS: _bus_rear}[label](sprite, rng, body)
    return [Element(label, depth, tuple(sprite.parts))]


def _dim(color, factor: float) -> np.ndarray:
    return _rgb(np.asarray(color) * factor)


def _car_rear(s: _Sprite, rng, body) -> None:
    w, h = rng.uniform(1.7, 1.9), rng.uniform(1.35, 1.6)
    hw = w / 2
    for x in (-1, 1):
        s.rect(x * (hw - 0.05), 0, x * (hw - 0.35), 0.3, _jitter(rng, TYRE, 0.02))
    s.rect(-hw, 0.2, hw, 0.58 * h, body, (1.05, 0.8))
    s.rect(-hw + 0.14 * w, 0.58 * h, hw - 0.14 * w, h, _dim(body, 0.92), (1.1, 0.95))
    s.rect(-hw + 0.2 * w, 0.63 * h, hw - 0.2 * w, 0.93 * h, _jitter(rng, GLASS, 0.03), (1.15, 0.85))
    for x in (-1, 1):
        s.rect(x * (hw - 0.04), 0.42 * h, x * (hw - 0.3), 0.5 * h, _jitter(rng, TAIL, 0.05))
    s.rect(-0.25, 0.25 * h, 0.25, 0.33 * h, _jitter(rng, WHITE, 0.05))


def _car_side(s: _Sprite, rng, body) -> None:
    length, h = rng.uniform(3.9, 4.7), rng.uniform(1.35, 1.55)
    hl = length / 2
    s.rect(-hl, 0.25, hl, 0.55 * h, body, (1.05, 0.8))
    s.rect(-hl + 0.22 * length, 0.55 * h, hl - 0.25 * length, h, _dim(body, 0.92), (1.1, 0.95))
    glass = _jitter(rng, GLASS, 0.03)
    s.rect(-hl + 0.25 * length, 0.6 * h, -0.02 * length, 0.93 * h, glass, (1.15, 0.85))
    s.rect(0.02 * length, 0.6 * h, hl - 0.28 * length, 0.93 * h, glass, (1.15, 0.85))
    for x in (-hl + 0.8, hl - 0.8):
        s.ellipse(x, 0.32, 0.32, 0.32, _jitter(rng, TYRE, 0.02))
        s.ellipse(x, 0.32, 0.14, 0.14, _jitter(rng, HUB, 0.05))


def _truck_rear(s: _Sprite, rng, body) -> None:
    w, h = rng.uniform(2.35, 2.55), rng.uniform(3.2, 3.9)
    hw = w / 2
    for x in (-1, 1):
        s.rect(x * (hw - 0.05), 0, x * (hw - 0.6), 0.5, _jitter(rng, TYRE, 0.02))
    s.rect(-hw + 0.1, 0.3, hw - 0.1, 0.56, _jitter(rng, DARK, 0.03))
    s.rect(-hw, 0.55, hw, h, body, (1.05, 0.85))
    for k in (1, 2):
        y = 0.55 + (h - 0.55) * k / 3
        s.rect(-hw, y - 0.03, hw, y + 0.03, _dim(body, 0.8))
    s.rect(-0.03, 0.6, 0.03, h - 0.08, _dim(body, 0.55))
    for x in (-1, 1):
        s.rect(x * (hw - 0.05), 0.35, x * (hw - 0.3), 0.5, _jitter(rng, TAIL, 0.05))


def _truck_side(s: _Sprite, rng, body) -> None:
    length, h = rng.uniform(7.0, 9.5), rng.uniform(3.2, 3.9)
    hl = length / 2
    s.rect(-hl + 0.3, 0.45, hl, 0.95, _jitter(rng, DARK, 0.03))
    s.rect(-hl, 0.95, hl - 2.1, h, body, (1.05, 0.85))
    cab = _jitter(rng, TRUCK_PAINTS[rng.integers(len(TRUCK_PAINTS))], 0.05)
    s.rect(hl - 2.0, 0.5, hl, 2.9, cab, (1.05, 0.85))
    s.rect(hl - 1.1, 1.9, hl - 0.15, 2.7, _jitter(rng, GLASS, 0.03))
    for x in (-hl + 1.0, -hl + 2.1, hl - 1.2):
        s.ellipse(x, 0.5, 0.5, 0.5, _jitter(rng, TYRE, 0.02))
        s.ellipse(x, 0.5, 0.2, 0.2, _jitter(rng, HUB, 0.05))


def _bus_rear(s: _Sprite, rng, body) -> None:
    w, h = rng.uniform(2.45, 2.55), rng.uniform(2.9, 3.3)
    hw = w / 2
    for x in (-1, 1):
        s.rect(x * (hw - 0.1), 0, x * (hw - 0.5), 0.4, _jitter(rng, TYRE, 0.02))
    s.rect(-hw, 0.25, hw, h, body, (1.05, 0.85))
    s.rect(-hw + 0.25, 0.55 * h, hw - 0.25, 0.88 * h, _jitter(rng, GLASS, 0.03), (1.15, 0.85))
    s.rect(-hw + 0.5, 0.9 * h, hw - 0.5, 0.97 * h, _jitter(rng, (0.3, 0.22, 0.05), 0.03))
    for x in (-1, 1):
        s.rect(x * (hw - 0.05), 0.3 * h, x * (hw - 0.25), 0.42 * h, _jitter(rng, TAIL, 0.05))


def _bus_side(s: _Sprite, rng, body) -> None:
    length, h = rng.uniform(10.0, 12.5), rng.uniform(2.9, 3.3)
    hl = length / 2
    s.rect(-hl, 0.3, hl, h, body, (1.05, 0.85))
    s.rect(-hl, 0.3, hl, 0.55, _dim(body, 0.7))
    glass = _jitter(rng, GLASS, 0.03)
    x = -hl + 0.4
    while x + 1.05 < hl - 2.1:
        s.rect(x, 0.55 * h, x + 1.05, 0.88 * h, glass, (1.15, 0.85))
        x += 1.35
    s.rect(hl - 1.9, 0.35, hl - 1.0, 0.88 * h, _dim(glass, 0.8))
    s.rect(hl - 0.8, 0.45 * h, hl - 0.05, 0.9 * h, glass, (1.15, 0.85))
    for x in (-hl + 2.5, hl - 2.3):
        s.ellipse(x, 0.5, 0.5, 0.5, _jitter(rng, TYRE, 0.02))
        s.ellipse(x, 0.5, 0.2, 0.2, _jitter(rng, HUB, 0.05))


def _pedestrian(rng, camera, half, sidewalk) -> list[Element]:
    if rng.random() < 0.25:  # crossing the road
        x = rng.uniform(-half, half)
    else:
        x = rng.choice([-1, 1]) * rng.uniform(half + 0.3, half + sidewalk - 0.3)
    depth = _depth(rng, PEDESTRIAN, x)
    s = camera.sprite(x, depth, mirror=rng.random() < 0.5)
    h, stride = rng.uniform(1.45, 1.95), rng.uniform(-0.12, 0.12)
    shirt = _jitter(rng, CLOTHES[rng.integers(len(CLOTHES))], 0.06)
    trousers = _jitter(rng, CLOTHES[rng.integers(len(CLOTHES))], 0.06)
    s.rect(-0.16 + stride, 0, -0.02 + stride, 0.5 * h, trousers, (1.0, 0.85))
    s.rect(0.02 - stride, 0, 0.16 - stride, 0.5 * h, _dim(trousers, 0.9), (1.0, 0.85))
    s.rect(-0.2, 0.47 * h, 0.2, 0.86 * h, shirt, (1.05, 0.9))
    for side in (-1, 1):
        s.rect(side * 0.19, 0.5 * h, side * 0.27, 0.84 * h, _dim(shirt, 0.85))
    s.ellipse(0, h - 0.12, 0.1, 0.12, _jitter(rng, SKIN[rng.integers(len(SKIN))], 0.04))
    if rng.random() < 0.3:  # a bag
        s.rect(0.2, 0.45 * h, 0.38, 0.62 * h, _jitter(rng, (0.3, 0.2, 0.12), 0.05))
    return [Element(PEDESTRIAN, depth, tuple(s.parts))]


def _roadside(rng, half: float, low: float, high: float) -> float:
    """A lateral position low..high metres beyond the road's edge, on either side."""
    return float(rng.choice([-1, 1]) * (half + rng.uniform(low, high)))


def _sign(rng, camera, half) -> list[Element]:
    x = _roadside(rng, half, 0.5, 2.0)
    depth = _depth(rng, SIGN, x)
    centre, d = rng.uniform(1.9, 2.6), rng.uniform(0.7, 1.1)
    pole = camera.sprite(x, depth)
    pole.rect(-0.04, 0, 0.04, centre, _jitter(rng, POLE, 0.05))
    s = camera.sprite(x, depth)
    kind = rng.integers(4)
    if kind == 0:  # prohibitory: red ring
        s.ellipse(0, centre, d / 2, d / 2, _jitter(rng, RED, 0.05))
        s.ellipse(0, centre, 0.38 * d, 0.38 * d, _jitter(rng, WHITE, 0.04))
        s.rect(-0.2 * d, centre - 0.06 * d, 0.2 * d, centre + 0.06 * d, _jitter(rng, DARK, 0.03))
    elif kind == 1:  # mandatory: blue disc with a white arrow
        s.ellipse(0, centre, d / 2, d / 2, _jitter(rng, BLUE, 0.05))
        s.rect(-0.05 * d, centre - 0.28 * d, 0.05 * d, centre + 0.15 * d, _jitter(rng, WHITE, 0.04))
        s.triangle(
            [(-0.18 * d, centre + 0.1 * d), (0.18 * d, centre + 0.1 * d), (0, centre + 0.3 * d)],
            _jitter(rng, WHITE, 0.04),
        )
    else:  # warning (pointing up) or give way (pointing down): red triangle, white inside
        up = 1 if kind == 2 else -1
        outer = [
            (-d / 2, centre - up * d * 0.43),
            (d / 2, centre - up * d * 0.43),
            (0, centre + up * d * 0.43),
        ]
        s.triangle(outer, _jitter(rng, RED, 0.05))
        s.triangle(
            [(0.62 * px, centre + 0.62 * (py - centre)) for px, py in outer], _jitter(rng, WHITE, 0.04)
        )
    return [Element(SCENERY, depth, tuple(pole.parts)), Element(SIGN, depth, tuple(s.parts))]


def _light(rng, camera, half, lane_centres) -> list[Element]:
    bottom = rng.uniform(2.3, 3.2)
    pole_x = _roadside(rng, half, 0.3, 1.5)
    overhead = rng.random() < 0.4
    x = float(lane_centres[rng.integers(len(lane_centres))]) if overhead else pole_x
    depth = _depth(rng, LIGHT, x)
    pole = camera.sprite(x, depth)
    pole.rect(pole_x - x - 0.06, 0, pole_x - x + 0.06, bottom + 0.95 if overhead else bottom, POLE)
    if overhead:  # an arm from the roadside pole to above the lane
        pole.rect(min(0.0, pole_x - x), bottom + 0.9, max(0.0, pole_x - x), bottom + 1.0, POLE)
    s = camera.sprite(x, depth)
    if rng.random() < 0.5:  # a backboard
        s.rect(-0.3, bottom - 0.1, 0.3, bottom + 1.05, _jitter(rng, (0.2, 0.2, 0.2), 0.05))
    s.rect(-0.17, bottom, 0.17, bottom + 0.95, _jitter(rng, DARK, 0.03), (1.2, 0.8))
    lit = rng.integers(3)
    for k, lamp in enumerate(LAMPS):
        color = lamp if k == lit else _dim(lamp, 0.25)
        s.ellipse(0, bottom + 0.79 - 0.315 * k, 0.11, 0.11, _jitter(rng, color, 0.03))
    return [Element(SCENERY, depth, tuple(pole.parts)), Element(LIGHT, depth, tuple(s.parts))]


def _clutter(rng, camera, half, sidewalk) -> Element:
    """A roadside thing that is not an object: tree, bush, building, bollard, billboard, cone, stain, lamp."""
    kind = rng.integers(8)
    depth = float(math.exp(rng.uniform(math.log(4.0), math.log(90.0))))
    beyond = half + sidewalk
    if kind == 0:  # tree
        s = camera.sprite(_roadside(rng, beyond, 0.5, 8.0), depth)
        trunk, r = rng.uniform(1.5, 3.0), rng.uniform(1.0, 2.5)
        s.rect(-0.15, 0, 0.15, trunk + 0.5, _jitter(rng, (0.35, 0.25, 0.15), 0.05))
        s.ellipse(
            0, trunk + 0.8 * r, r, r * rng.uniform(0.9, 1.3), _jitter(rng, (0.2, 0.4, 0.15), 0.08), (1.1, 0.8)
        )
    elif kind == 1:  # bush
        s = camera.sprite(_roadside(rng, beyond, 0.0, 6.0), depth)
        r = rng.uniform(0.4, 1.0)
        s.ellipse(0, 0.6 * r, r * rng.uniform(1.0, 2.0), 0.6 * r, _jitter(rng, (0.18, 0.35, 0.15), 0.08))
    elif kind == 2:  # building, with windows and perhaps a coloured disc or triangle on its front
        w, h = rng.uniform(6, 20), rng.uniform(5, 20)
        s = camera.sprite(_roadside(rng, beyond, 1.0 + w / 2, 6.0 + w / 2), depth)
        wall = _jitter(rng, (0.6, 0.5, 0.42), 0.15)
        s.rect(-w / 2, 0, w / 2, h, wall, (1.05, 0.9))
        if rng.random() < 0.5:
            s.triangle([(-w / 2, h), (w / 2, h), (0, h + rng.uniform(1, 4))], _dim(wall, 0.7))
        for _ in range(rng.integers(2, 10)):
            wx, wy = rng.uniform(-w / 2 + 0.5, w / 2 - 1.5), rng.uniform(1.0, h - 1.5)
            s.rect(wx, wy, wx + 1.0, wy + 1.2, _jitter(rng, GLASS, 0.08))
        if rng.random() < 0.5:  # a shop logo: red, amber, green or blue, round or pointed
            logo = _jitter(rng, [RED, LAMPS[1], LAMPS[2], BLUE][rng.integers(4)], 0.05)
            lx, ly, r = rng.uniform(-w / 2 + 1, w / 2 - 1), rng.uniform(1.5, 4.0), rng.uniform(0.3, 0.8)
            if rng.random() < 0.5:
                s.ellipse(lx, ly, r, r, logo)
            else:
                s.triangle([(lx - r, ly - r), (lx + r, ly - r), (lx, ly + r)], logo)
    elif kind == 3:  # bollard, red and white
        s = camera.sprite(_roadside(rng, half, 0.1, 0.6), depth)
        for k in range(4):
            s.rect(-0.08, 0.25 * k, 0.08, 0.25 * (k + 1), RED if k % 2 else WHITE)
    elif kind == 4:  # billboard on two posts
        w = rng.uniform(3, 6)
        s = camera.sprite(_roadside(rng, beyond, w / 2, w / 2 + 5), depth)
        legs = rng.uniform(1.5, 3.0)
        for x in (-w / 3, w / 3):
            s.rect(x - 0.08, 0, x + 0.08, legs, POLE)
        s.rect(-w / 2, legs, w / 2, legs + w / 2, _jitter(rng, rng.uniform(0, 1, size=3), 0.0))
        s.rect(-w / 3, legs + w / 8, w / 4, legs + w / 3, _jitter(rng, rng.uniform(0, 1, size=3), 0.0))
    elif kind == 5:  # traffic cone
        s = camera.sprite(rng.uniform(-half, half), depth)
        s.triangle([(-0.2, 0), (0.2, 0), (0, 0.7)], _jitter(rng, (0.95, 0.45, 0.05), 0.05))
        s.rect(-0.08, 0.3, 0.08, 0.4, WHITE)
    elif kind == 6:  # a stain or pothole on the road: flat, so squeezed by perspective
        s = camera.sprite(rng.uniform(-half, half), depth)
        r = rng.uniform(0.3, 1.5)
        s.ellipse(0, 0, r, r * CAMERA_HEIGHT_M / depth, _jitter(rng, (0.2, 0.2, 0.21), 0.05))
    else:  # street lamp
        s = camera.sprite(_roadside(rng, half, 0.2, 1.0), depth)
        top = rng.uniform(4, 7)
        s.rect(-0.07, 0, 0.07, top, POLE)
        s.ellipse(0, top, 0.35, 0.15, _jitter(rng, (0.85, 0.85, 0.7), 0.05))
    return Element(SCENERY, depth, tuple(s.parts))


def _skyline(rng, camera) -> Element:
    """A far building or tree on the horizon."""
    depth = rng.uniform(150, 400)
    s = camera.sprite(rng.uniform(-200, 200), depth)
    if rng.random() < 0.6:
        w, h = rng.uniform(15, 60), rng.uniform(10, 60)
        s.rect(-w / 2, 0, w / 2, h, _jitter(rng, (0.55, 0.58, 0.65), 0.12))
    else:
        r = rng.uniform(5, 15)
        s.ellipse(0, r * 0.7, r, r, _jitter(rng, (0.25, 0.38, 0.25), 0.08))
    return Element(SCENERY, depth, tuple(s.parts))
