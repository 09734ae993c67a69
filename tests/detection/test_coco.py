"""Reading COCO folders: a hand-made folder read exactly, one clear line per kind of bad input, and a round trip
of generated scenes through write_coco."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdistill.detection.coco import DetectionData, load_coco_folder, write_coco
from kdistill.detection.scenes import CLASSES, make_scenes

# three 40x30 images, each one flat colour so that their order shows; listed out of id order on purpose
COLOURS = {1: (255, 0, 0), 5: (0, 128, 255), 9: (10, 20, 30)}
INSTANCES = {
    "images": [
        {"id": 5, "file_name": "b.png", "width": 40, "height": 30},
        {"id": 1, "file_name": "a.png", "width": 40, "height": 30},
        {"id": 9, "file_name": "c.png", "width": 40, "height": 30},
    ],
    "annotations": [
        {"id": 11, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5], "iscrowd": 0},
        {"id": 12, "image_id": 1, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 0},
        {"id": 13, "image_id": 5, "category_id": 3, "bbox": [30.5, 20.25, 9.5, 9.75]},
        {"id": 14, "image_id": 5, "category_id": 7, "bbox": [1, 1, 5, 5], "iscrowd": 1},
    ],
    "categories": [{"id": 7, "name": "bus"}, {"id": 3, "name": "car"}],
}


def write_folder(
    folder: Path, instances: dict | str = INSTANCES, sizes: dict[int, tuple[int, int]] | None = None
):
    (folder / "images").mkdir(parents=True)
    for image_id, colour in COLOURS.items():
        name = {1: "a.png", 5: "b.png", 9: "c.png"}[image_id]
        size = (sizes or {}).get(image_id, (40, 30))
        Image.new("RGB", size, colour).save(folder / "images" / name)
    text = instances if isinstance(instances, str) else json.dumps(instances)
    (folder / "instances.json").write_text(text)
    return folder


def edited(change) -> dict:
    instances = json.loads(json.dumps(INSTANCES))
    change(instances)
    return instances


def test_a_handmade_folder_reads_exactly(tmp_path):
    data = load_coco_folder(write_folder(tmp_path))
    assert data.class_names == ("car", "bus")  # category ids 3, 7 -> labels 0, 1
    assert data.skipped_crowd == 1
    assert data.images.shape == (3, 3, 30, 40)
    for index, image_id in enumerate((1, 5, 9)):  # in id order
        expected = torch.tensor(COLOURS[image_id], dtype=torch.float32) / 255
        assert torch.equal(data.images[index], expected[:, None, None].expand(3, 30, 40))
    assert data.boxes[0].tolist() == [[2, 3, 12, 8], [0, 0, 40, 30]]
    assert data.labels[0].tolist() == [1, 0]
    assert data.boxes[1].tolist() == [[30.5, 20.25, 40, 30]]
    assert data.labels[1].tolist() == [0]
    assert data.boxes[2].shape == (0, 4) and data.labels[2].shape == (0,)
    assert data.boxes[2].dtype == torch.float32 and data.labels[2].dtype == torch.int64


def test_resizing_scales_the_boxes(tmp_path):
    data = load_coco_folder(write_folder(tmp_path), size=20)
    assert data.images.shape == (3, 3, 20, 20)
    assert torch.allclose(data.images[0], torch.tensor([1.0, 0, 0])[:, None, None].expand(3, 20, 20))
    sx, sy = 20 / 40, 20 / 30
    expected = torch.tensor([[2 * sx, 3 * sy, 12 * sx, 8 * sy], [0, 0, 20, 20]])
    assert torch.allclose(data.boxes[0], expected)


def test_images_may_lie_elsewhere_or_beside_the_json(tmp_path):
    write_folder(tmp_path / "a")
    (tmp_path / "a" / "images").rename(tmp_path / "pictures")
    data = load_coco_folder(tmp_path / "a", images_dir=tmp_path / "pictures")
    assert data.labels[0].tolist() == [1, 0]
    for file in (tmp_path / "pictures").iterdir():
        file.rename(tmp_path / "a" / file.name)
    assert torch.equal(load_coco_folder(tmp_path / "a").images, data.images)


def test_images_of_different_sizes_need_a_size(tmp_path):
    folder = write_folder(
        tmp_path, edited(lambda d: d["images"][2].update(width=20, height=20)), {9: (20, 20)}
    )
    message = f"{folder}: images differ in size (image 1 is 40x30, image 9 is 20x20); "
    message += "pass size= to resize them to one square size"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        load_coco_folder(folder)
    assert load_coco_folder(folder, size=16).images.shape == (3, 3, 16, 16)


def expect_error(folder: Path, message: str, **kwargs) -> None:
    with pytest.raises(ValueError) as caught:
        load_coco_folder(folder, **kwargs)
    assert str(caught.value) == message


def test_missing_instances(tmp_path):
    expect_error(
        tmp_path,
        f"{tmp_path / 'instances.json'}: not found (a COCO folder holds instances.json beside its images)",
    )


def test_not_json(tmp_path):
    write_folder(tmp_path, '{"images": [}')
    expect_error(tmp_path, f"{tmp_path / 'instances.json'}: not JSON: Expecting value (line 1, column 13)")


def test_not_the_three_lists(tmp_path):
    write_folder(tmp_path, edited(lambda d: d.pop("annotations")))
    expect_error(tmp_path, f"{tmp_path / 'instances.json'}: expected a list under 'annotations'")


def test_a_missing_image_file(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "images" / "b.png").unlink()
    expect_error(
        tmp_path, f"{tmp_path / 'images' / 'b.png'}: not found (image 5 in {tmp_path / 'instances.json'})"
    )


def test_an_image_whose_size_is_not_the_declared_one(tmp_path):
    write_folder(tmp_path, sizes={5: (41, 30)})
    path, file = tmp_path / "instances.json", tmp_path / "images" / "b.png"
    expect_error(tmp_path, f"{file}: 41x30 pixels, but {path} gives image 5 as 40x30")


@pytest.mark.parametrize(
    ("bbox", "problem"),
    [
        ([2, 3, 0, 5], "bbox [2, 3, 0, 5] has a width or height <= 0"),
        ([2, 3, 10, -1], "bbox [2, 3, 10, -1] has a width or height <= 0"),
        ([35, 3, 10, 5], "bbox [35, 3, 10, 5] extends outside the 40x30 image"),
        ([-1, 3, 10, 5], "bbox [-1, 3, 10, 5] extends outside the 40x30 image"),
        ([2, 3, 10], "'bbox' must be 4 numbers [x, y, w, h], got [2, 3, 10]"),
    ],
)
def test_a_bad_bbox(tmp_path, bbox, problem):
    write_folder(tmp_path, edited(lambda d: d["annotations"][0].update(bbox=bbox)))
    expect_error(tmp_path, f"{tmp_path / 'instances.json'}: annotation 11 (image 1): {problem}")


def test_unknown_image_and_category_ids(tmp_path):
    write_folder(tmp_path / "a", edited(lambda d: d["annotations"][2].update(image_id=4)))
    expect_error(
        tmp_path / "a",
        f"{tmp_path / 'a' / 'instances.json'}: annotation 13: image_id 4 is not the id of any image",
    )
    write_folder(tmp_path / "b", edited(lambda d: d["annotations"][3].update(category_id=1)))
    expect_error(
        tmp_path / "b",
        f"{tmp_path / 'b' / 'instances.json'}: annotation 14: category_id 1 is not the id of any category",
    )


def test_a_bad_size(tmp_path):
    expect_error(write_folder(tmp_path), "size must be a positive number of pixels, got 0", size=0)


def test_generated_scenes_round_trip_through_coco(tmp_path):
    scenes = make_scenes(6, seed=2, size=64)
    path = write_coco(tmp_path / "coco", scenes)
    assert path == tmp_path / "coco" / "instances.json"
    back = load_coco_folder(tmp_path / "coco")
    assert back.class_names == CLASSES and back.skipped_crowd == 0
    assert (back.images - scenes.images).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit PNG
    for a, b, la, lb in zip(scenes.boxes, back.boxes, scenes.labels, back.labels, strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=0) and torch.equal(la, lb)
    assert sum(len(b) for b in back.boxes) > 10


def test_write_coco_refuses_an_existing_folder_and_keeps_any_data(tmp_path):
    data = DetectionData(
        images=torch.full((1, 3, 4, 5), 0.5),
        boxes=[torch.tensor([[0.5, 1.0, 5.0, 4.0]])],
        labels=[torch.tensor([0])],
        class_names=("thing",),
    )
    write_coco(tmp_path, data)
    instances = json.loads((tmp_path / "instances.json").read_text())
    assert instances["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0.5, 1.0, 4.5, 3.0], "area": 13.5, "iscrowd": 0}
    ]
    assert np.asarray(Image.open(tmp_path / "images" / "000000.png")).tolist() == [[[128] * 3] * 5] * 4
    with pytest.raises(ValueError, match="already exists; write_coco writes a new folder$"):
        write_coco(tmp_path, data)


def test_detection_data_needs_one_box_list_per_image():
    with pytest.raises(ValueError, match=r"^2 images but 1 box lists and 1 label lists$"):
        DetectionData(torch.zeros(2, 3, 4, 4), [torch.zeros(0, 4)], [torch.zeros(0)], ("a",))
