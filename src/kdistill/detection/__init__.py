"""Object detection for distillation: seeded driving-like scenes made offline, COCO folders read and written,
FCOS detectors in plain torch (models.py; fcos.py: targets, loss, NMS decoding), and COCO mAP (pycocotools)
with the student's agreement with its teacher.

Every data source gives a `DetectionData`: images (N, 3, H, W) in [0, 1] and, per image, boxes x1 y1 x2 y2 in
pixels and labels 0..C-1.
"""

from kdistill.detection.boxes import box_iou
from kdistill.detection.coco import DetectionData, load_coco_folder, write_coco
from kdistill.detection.fcos import fcos_loss, postprocess
from kdistill.detection.metrics import Detections, GroundTruth, coco_map, teacher_agreement
from kdistill.detection.models import DETECTOR_SIZES, DetectorSize, FCOSDetector, FCOSOutput, build_detector
from kdistill.detection.scenes import CLASSES, Scene, make_scenes, render_scene
from kdistill.detection.transfer import teacher_labelled

__all__ = [
    "CLASSES",
    "DETECTOR_SIZES",
    "DetectionData",
    "Detections",
    "DetectorSize",
    "FCOSDetector",
    "FCOSOutput",
    "GroundTruth",
    "Scene",
    "box_iou",
    "build_detector",
    "coco_map",
    "fcos_loss",
    "load_coco_folder",
    "make_scenes",
    "postprocess",
    "render_scene",
    "teacher_agreement",
    "teacher_labelled",
    "write_coco",
]
