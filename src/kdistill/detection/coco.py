"""Detection data in memory (`DetectionData`), and the COCO folder format it is read from and written to.

A COCO folder is `instances.json` (lists `images`, `annotations`, `categories`) beside its images, which lie
in `images/` or in the folder itself. Boxes are read as COCO's [x, y, w, h] in pixels and kept as x1, y1, x2,
y2, where pixel (row r, column c) covers [c, c + 1) x [r, r + 1): a box around one pixel is 1 wide.
Category ids (any integers) become labels 0..C-1 in increasing id order, so the ids 3 and 7 are labels 0, 1.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

INSTANCES_FILE = "instances.json"
IMAGES_FOLDER = "images"
# a bbox may pass the image edge by this much (float round-off in files written by other tools); it is clipped
EDGE_TOLERANCE_PX = 1e-3


@dataclass(frozen=True)
class DetectionData:
    images: Tensor  # (N, 3, H, W) float32 in [0, 1]
    boxes: list[Tensor]  # per image (M_i, 4) float32, x1 y1 x2 y2 in pixels
    labels: list[Tensor]  # per image (M_i,) int64 in [0, C)
    class_names: tuple[str, ...]  # label -> name
    skipped_crowd: int = 0  # annotations marked iscrowd that were left out (COCO); 0 for generated data

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if len(self.boxes) != n or len(self.labels) != n:
            raise ValueError(f"{n} images but {len(self.boxes)} box lists and {len(self.labels)} label lists")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_coco_folder(
    folder: str | Path, *, images_dir: str | Path | None = None, size: int | None = None
) -> DetectionData:
    """Read a COCO folder: images in the order of their ids, crowd annotations left out and counted.

    images_dir: where the `file_name`s are; default `folder/images` if that is a folder, else `folder`.
    size: resize every image to size x size pixels (boxes scaled with it); without it, all images must
    already have one size. Bad input raises ValueError naming the file and the image or annotation id.
    """
    folder = Path(folder)
    if size is not None and size <= 0:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    path = folder / INSTANCES_FILE
    if not path.is_file():
        raise ValueError(f"{path}: not found (a COCO folder holds {INSTANCES_FILE} beside its images)")
    if images_dir is None:
        images_dir = folder / IMAGES_FOLDER if (folder / IMAGES_FOLDER).is_dir() else folder
    document = _read_json(path)
    label_of, class_names = _categories(document["categories"], path)
    images = _image_entries(document["images"], path)
    if not images:
        raise ValueError(f"{path}: no images")

    arrays, scales, pixel_sizes = [], {}, {}
    for image_id, entry in images.items():
        pixels, (width, height) = _load_image(
            Path(images_dir) / entry["file_name"], image_id, entry, path, size
        )
        arrays.append(pixels)
        pixel_sizes[image_id] = (width, height)
        scales[image_id] = (1.0, 1.0) if size is None else (size / width, size / height)
    if size is None and len(set(pixel_sizes.values())) > 1:
        (id_a, (wa, ha)), (id_b, (wb, hb)) = _two_sizes(pixel_sizes)
        raise ValueError(
            f"{folder}: images differ in size (image {id_a} is {wa}x{ha}, image {id_b} is {wb}x{hb}); "
            "pass size= to resize them to one square size"
        )

    boxes: dict[int, list[list[float]]] = {image_id: [] for image_id in images}
    labels: dict[int, list[int]] = {image_id: [] for image_id in images}
    skipped_crowd = 0
    for index, annotation in enumerate(document["annotations"]):
        name = _annotation_name(annotation, index)
        if not isinstance(annotation, dict):
            raise ValueError(f"{path}: {name}: expected an object, got {annotation!r}")
        image_id, category_id = annotation.get("image_id"), annotation.get("category_id")
        if image_id not in images:
            raise ValueError(f"{path}: {name}: image_id {image_id!r} is not the id of any image")
        if category_id not in label_of:
            raise ValueError(f"{path}: {name}: category_id {category_id!r} is not the id of any category")
        if annotation.get("iscrowd"):
            skipped_crowd += 1
            continue
        x1, y1, x2, y2 = _checked_box(
            annotation.get("bbox"), pixel_sizes[image_id], f"{path}: {name} (image {image_id})"
        )
        sx, sy = scales[image_id]
        boxes[image_id].append([x1 * sx, y1 * sy, x2 * sx, y2 * sy])
        labels[image_id].append(label_of[category_id])

    return DetectionData(
        images=torch.from_numpy(np.stack(arrays)).float().div_(255.0),
        boxes=[torch.tensor(boxes[i], dtype=torch.float32).reshape(-1, 4) for i in images],
        labels=[torch.tensor(labels[i], dtype=torch.int64) for i in images],
        class_names=class_names,
        skipped_crowd=skipped_crowd,
    )


def write_coco(folder: str | Path, data: DetectionData) -> Path:
    """Write `data` as a new COCO folder (PNG images in `images/`, image ids 1..N, category ids 1..C).

    Pixels are rounded to 8 bits; boxes are written exactly. Returns the path of `instances.json`.
    Refuses a folder that already has one, so that stale images of an earlier, larger set cannot mix in.
    """
    folder = Path(folder)
    path = folder / INSTANCES_FILE
    if path.exists():
        raise ValueError(f"{path}: already exists; write_coco writes a new folder")
    (folder / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
    height, width = data.images.shape[2:]
    pixels = (data.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images, annotations = [], []
    for index in range(len(data)):
        file_name = f"{index:06d}.png"
        Image.fromarray(pixels[index]).save(folder / IMAGES_FOLDER / file_name)
        images.append({"id": index + 1, "file_name": file_name, "width": width, "height": height})
        for box, label in zip(data.boxes[index].tolist(), data.labels[index].tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": label + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": label + 1, "name": name} for label, name in enumerate(data.class_names)]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON: {err.msg} (line {err.lineno}, column {err.colno})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not JSON: not UTF-8 text") from None
    keys = ("images", "annotations", "categories")
    if not isinstance(document, dict):
        raise ValueError(f"{path}: expected a JSON object with the lists {', '.join(map(repr, keys))}")
    missing = [key for key in keys if not isinstance(document.get(key), list)]
    if missing:
        raise ValueError(f"{path}: expected a list under {', '.join(map(repr, missing))}")
    return document


def _categories(categories: list[Any], path: Path) -> tuple[dict[int, int], tuple[str, ...]]:
    """category id -> label (0..C-1 in increasing id order), and the names in label order."""
    names: dict[int, str] = {}
    for index, category in enumerate(categories):
        where = f"{path}: category at index {index}"
        category_id = _integer(category, "id", where)
        name = category.get("name")
        if not isinstance(name, str):
            raise ValueError(f"{where}: 'name' must be a string, got {name!r}")
        if category_id in names:
            raise ValueError(f"{path}: category id {category_id} appears twice")
        names[category_id] = name
    if not names:
        raise ValueError(f"{path}: no categories")
    ids = sorted(names)
    return {category_id: label for label, category_id in enumerate(ids)}, tuple(names[i] for i in ids)


def _image_entries(entries: list[Any], path: Path) -> dict[int, dict[str, Any]]:
    """image id -> its entry, in increasing id order."""
    images: dict[int, dict[str, Any]] = {}
    for index, entry in enumerate(entries):
        where = f"{path}: image at index {index}"
        image_id = _integer(entry, "id", where)
        if not isinstance(entry.get("file_name"), str):
            raise ValueError(
                f"{path}: image {image_id}: 'file_name' must be a string, got {entry.get('file_name')!r}"
            )
        if image_id in images:
            raise ValueError(f"{path}: image id {image_id} appears twice")
        images[image_id] = entry
    return dict(sorted(images.items()))


def _integer(item: Any, key: str, where: str) -> int:
    if not isinstance(item, dict):
        raise ValueError(f"{where}: expected an object, got {item!r}")
    value = item.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}: '{key}' must be an integer, got {value!r}")
    return value


def _annotation_name(annotation: Any, index: int) -> str:
    if isinstance(annotation, dict) and "id" in annotation:
        return f"annotation {annotation['id']!r}"
    return f"annotation at index {index}"


def _load_image(
    file: Path, image_id: int, entry: dict[str, Any], path: Path, size: int | None
) -> tuple[np.ndarray, tuple[int, int]]:
    """(3, H, W) uint8 pixels (resized when size is given), and the file's own (width, height)."""
    if not file.is_file():
        raise ValueError(f"{file}: not found (image {image_id} in {path})")
    try:
        with Image.open(file) as opened:
            image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"{file}: not an image Pillow can read (image {image_id} in {path})") from None
    width, height = image.size
    declared = (entry.get("width", width), entry.get("height", height))
    if declared != (width, height):
        raise ValueError(
            f"{file}: {width}x{height} pixels, but {path} gives image {image_id} as {declared[0]}x{declared[1]}"
        )
    if size is not None:
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image).transpose(2, 0, 1), (width, height)


def _two_sizes(pixel_sizes: dict[int, tuple[int, int]]) -> list[tuple[int, tuple[int, int]]]:
    """The first image and the first one after it whose size differs from it."""
    first = next(iter(pixel_sizes.items()))
    other = next(item for item in pixel_sizes.items() if item[1] != first[1])
    return [first, other]


def _checked_box(bbox: Any, image_size: tuple[int, int], where: str) -> tuple[float, float, float, float]:
    """COCO [x, y, w, h] -> (x1, y1, x2, y2), refusing empty boxes and boxes outside the image."""
    if (
        not isinstance(bbox, list)
        or len(bbox) != 4
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    ):
        raise ValueError(f"{where}: 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    width, height = image_size
    if w <= 0 or h <= 0:
        raise ValueError(f"{where}: bbox {bbox} has a width or height <= 0")
    tol = EDGE_TOLERANCE_PX
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise ValueError(f"{where}: bbox {bbox} extends outside the {width}x{height} image")
    return max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
