"""The generated scenes: seeded, independent of how many are made, and their boxes are where the pixels are.

Box checks do not trust the owner map the boxes are computed from: they repaint the scene without an object
(or with it alone) and take the box of the pixels that changed.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from kdistill.detection.scenes import (
    CAMERA_HEIGHT_M,
    CAR,
    CLASSES,
    MIN_BOX_SIDE,
    MIN_VISIBLE,
    Part,
    SceneLayout,
    find_objects,
    gaussian_blur,
    make_scenes,
    paint,
    render_scene,
    sample_layout,
)

SIZE = 96


def changed_box(a: np.ndarray, b: np.ndarray) -> tuple[tuple[int, int, int, int] | None, int]:
    """Box (x1, y1, x2, y2) and count of the pixels where two (3, H, W) images differ."""
    rows, cols = np.nonzero(np.any(a != b, axis=0))
    if rows.size == 0:
        return None, 0
    return (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1), rows.size


@pytest.fixture(scope="module")
def layouts():
    """(layout, painting, objects) of 40 scenes."""
    out = []
    for i in range(40):
        layout = sample_layout(np.random.default_rng((11, i)), SIZE)
        painting = paint(layout)
        out.append((layout, painting, find_objects(layout, painting)))
    return out


@pytest.fixture(scope="module")
def many():
    return make_scenes(200, seed=5, size=64)


def test_same_seed_same_scenes_other_seed_other_scenes():
    a, b, c = (
        make_scenes(4, seed=3, size=SIZE),
        make_scenes(4, seed=3, size=SIZE),
        make_scenes(4, seed=4, size=SIZE),
    )
    assert torch.equal(a.images, b.images)
    assert all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(a.labels, b.labels, strict=True))
    assert (a.images - c.images).abs().mean() > 0.02  # whole scenes differ, not a few noise pixels


def test_scene_i_does_not_depend_on_how_many_are_made():
    few, more = make_scenes(2, seed=7, size=SIZE), make_scenes(5, seed=7, size=SIZE)
    assert torch.equal(few.images, more.images[:2])
    assert all(torch.equal(x, y) for x, y in zip(few.boxes, more.boxes[:2], strict=True))
    alone = render_scene(np.random.default_rng((7, 3)), SIZE)
    assert np.array_equal(alone.image, more.images[3].numpy())
    assert np.array_equal(alone.labels, more.labels[3].numpy())


def test_shapes_types_and_ranges(many):
    assert many.images.shape == (200, 3, 64, 64) and many.images.dtype == torch.float32
    assert many.images.min() >= 0 and many.images.max() <= 1
    assert many.class_names == CLASSES
    for boxes, labels in zip(many.boxes, many.labels, strict=True):
        assert (
            boxes.dtype == torch.float32 and labels.dtype == torch.int64 and boxes.shape == (len(labels), 4)
        )
        assert ((labels >= 0) & (labels < len(CLASSES))).all()
        x1, y1, x2, y2 = boxes.unbind(1)
        assert ((x1 >= 0) & (y1 >= 0) & (x2 <= 64) & (y2 <= 64)).all()
        assert ((x2 - x1 >= MIN_BOX_SIDE) & (y2 - y1 >= MIN_BOX_SIDE)).all()


def test_every_class_appears_often(many):
    counts = torch.bincount(torch.cat(many.labels), minlength=len(CLASSES))
    assert counts.min() >= 40, dict(zip(CLASSES, counts.tolist(), strict=True))


def test_each_box_is_the_box_of_the_pixels_its_object_changes(layouts):
    checked = 0
    for layout, painting, objects in layouts:
        for box, index in zip(objects.boxes, objects.elements, strict=True):
            without = paint(layout, skip={int(index)})
            assert changed_box(painting.image, without.image)[0] == tuple(box.astype(int))
            checked += 1
    assert checked > 100


def test_a_box_lies_within_its_object_drawn_alone_and_equals_it_when_unoccluded(layouts):
    unoccluded = 0
    for layout, _, objects in layouts:
        nothing = paint(layout, skip=range(len(layout.elements)))
        for box, index, fraction in zip(
            objects.boxes, objects.elements, objects.visible_fraction, strict=True
        ):
            others = set(range(len(layout.elements))) - {int(index)}
            (x1, y1, x2, y2), _ = changed_box(paint(layout, skip=others).image, nothing.image)
            assert x1 <= box[0] and y1 <= box[1] and box[2] <= x2 and box[3] <= y2
            if fraction == 1.0:
                assert tuple(box.astype(int)) == (x1, y1, x2, y2)
                unoccluded += 1
    assert unoccluded > 50


def pixels_alone_unbounded(layout: SceneLayout, index: int) -> int:
    """Pixels of one element drawn alone on a canvas reaching 2 frames beyond each edge: the scene moved by an
    integer offset into a 5x larger frame, where pixel centres and so the rasterised shapes move with it."""
    shift = 2 * layout.size

    def moved(part: Part) -> Part:
        g = part.geometry
        geometry = (
            (g[0] + shift, g[1] + shift, *g[2:]) if part.kind == "ellipse" else tuple(v + shift for v in g)
        )
        return dataclasses.replace(part, geometry=geometry)

    element = layout.elements[index]
    big = dataclasses.replace(
        layout,
        size=5 * layout.size,
        horizon=layout.horizon + shift,
        vanish_x=layout.vanish_x + shift,
        elements=(dataclasses.replace(element, parts=tuple(moved(p) for p in element.parts)),),
    )
    return changed_box(paint(big).image, paint(big, skip={0}).image)[1]


def test_occlusion_happens_and_the_visible_fraction_counts_pixels(layouts):
    """Visible fraction = pixels the object changes in the scene / pixels of the whole object drawn alone."""
    occluded = truncated = dropped = 0
    for layout, painting, objects in layouts:
        everything = set(range(len(layout.elements)))
        nothing = paint(layout, skip=everything).image
        labelled = dict(zip(objects.elements.tolist(), objects.visible_fraction.tolist(), strict=True))
        for index, element in enumerate(layout.elements):
            if element.label < 0:
                continue
            alone_box, alone = changed_box(paint(layout, skip=everything - {index}).image, nothing)
            if alone == 0:
                continue  # wholly outside the frame
            if min(alone_box[:2]) == 0 or max(alone_box[2:]) == layout.size:  # reaches the frame's edge
                alone = pixels_alone_unbounded(layout, index)
                truncated += 1
            visible_box, visible = changed_box(painting.image, paint(layout, skip={index}).image)
            if index in labelled:
                assert labelled[index] == pytest.approx(visible / alone)
                occluded += labelled[index] < 1.0
            else:  # drawn but left out: mostly hidden, or too small
                mostly_hidden = visible < MIN_VISIBLE * alone
                tiny = (
                    visible == 0
                    or min(visible_box[2] - visible_box[0], visible_box[3] - visible_box[1]) < MIN_BOX_SIDE
                )
                assert mostly_hidden or tiny
                dropped += 1
    assert occluded >= 20 and truncated >= 10 and dropped >= 5


def test_cars_are_as_tall_as_their_depth_says(layouts):
    """A car's height h (1.35..1.6 m) seen at its foot row v is h / camera height times v - horizon pixels."""
    ratios = []
    for layout, _, objects in layouts:
        for (_, y1, _, y2), label, fraction in zip(
            objects.boxes, objects.labels, objects.visible_fraction, strict=True
        ):
            if label == CAR and fraction == 1.0 and y2 < layout.size and y2 - layout.horizon >= 15:
                ratios.append((y2 - y1) / (y2 - layout.horizon))
    assert len(ratios) >= 10
    # each box edge is within half a pixel of the drawing, so allow 1 px on the height and on the foot row
    assert min(ratios) >= 1.35 / CAMERA_HEIGHT_M - 0.15 and max(ratios) <= 1.6 / CAMERA_HEIGHT_M + 0.15


def test_blur_spreads_a_point_as_a_normalised_gaussian_and_keeps_flat_images_flat():
    point = np.zeros((1, 15, 15), dtype=np.float32)
    point[0, 7, 7] = 1.0
    sigma = 0.8
    spread = gaussian_blur(point, sigma)[0]
    offsets = np.arange(-2, 3)  # radius ceil(2 sigma) = 2
    g = np.exp(-(offsets**2) / (2 * sigma**2))
    expected = np.zeros((15, 15))
    expected[5:10, 5:10] = np.outer(g, g) / g.sum() ** 2
    np.testing.assert_allclose(spread, expected, atol=1e-6)
    flat = np.full((3, 9, 9), 0.3, dtype=np.float32)
    np.testing.assert_allclose(gaussian_blur(flat, 1.1), flat, atol=1e-6)


def test_no_scenes_and_bad_arguments():
    assert make_scenes(0, seed=1).images.shape == (0, 3, 128, 128)
    with pytest.raises(ValueError, match=r"^size must be at least 32 pixels, got 16$"):
        render_scene(np.random.default_rng(0), 16)
    with pytest.raises(ValueError, match=r"^seed must be >= 0, got -1$"):
        make_scenes(1, seed=-1)
