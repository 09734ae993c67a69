"""Object detection for distillation: seeded driving-like scenes made offline, COCO folders read and written,
and COCO mAP (pycocotools) with the student's agreement with its teacher.

Every data source gives a `DetectionData`: images (N, 3, H, W) in [0, 1] and, per image, boxes x1 y1 x2 y2 in
pixels and labels 0..C-1.
"""

from kdistill.detection.coco import DetectionData, load_coco_folder, write_coco
from kdistill.detection.metrics import Detections, GroundTruth, box_iou, coco_map, teacher_agreement
from kdistill.detection.scenes import CLASSES, Scene, make_scenes, render_scene

__all__ = [
    "CLASSES",
    "DetectionData",
    "Detections",
    "GroundTruth",
    "Scene",
    "box_iou",
    "coco_map",
    "load_coco_folder",
    "make_scenes",
    "render_scene",
    "teacher_agreement",
    "write_coco",
]
