"""``POST /infer/<model>?output=dicom_seg``: the prediction as a DICOM SEG over the image's series.

(The route is ``medseg.guarded_routes.post_infer``; this module checks such a request and
writes its answer.)

MONAI Label's own ``dicom_seg`` output (``monailabel/endpoints/infer.py``) answers
500 for any datastore but its DICOMweb one, needs a ``label_info`` parameter, and
converts with dcmqi's ``itkimage2segimage`` binary, which MONAI Label downloads
from GitHub at server start. This route takes its place for that one output: it
refuses images that are not DICOM series with a 4xx before any inference, runs
MONAI Label's normal inference with ``output=image``, and writes the label map as
a SEG with ``medseg.dicom.seg.write_seg`` (in-process, offline). Every other
output goes to MONAI Label's handler unchanged.
"""
from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
from fastapi import BackgroundTasks
from fastapi.responses import FileResponse
from monailabel.utils.others.generic import remove_file

from medseg.errors import MedSegInputError, UnknownImageError
from medseg.imageio import is_dicom_file, read_volume
from medseg.tasks.infer import _flag
from medseg.volume import same_grid

logger = logging.getLogger(__name__)

# Outputs that are float maps, not label maps: a SEG of them would be wrong.
FLOAT_OUTPUT_PARAMS = ("probabilities", "uncertainty")


def dicom_source_path(instance, image: str) -> str:
    """The series folder of datastore image ``image``; a 4xx when there is none."""
    if not image:
        raise MedSegInputError("output=dicom_seg needs an image of the datastore (?image=<id>), not an uploaded file")
    uri = instance.datastore().get_image_uri(image)
    if not uri or not os.path.exists(uri):
        raise UnknownImageError(f"image '{image}' is not in the datastore; list images with GET /datastore/?output=all")
    if not (os.path.isdir(uri) or is_dicom_file(uri)):
        raise MedSegInputError(f"image '{image}' is not a DICOM series, so a DICOM SEG cannot reference it; "
                               "use output=image (NIfTI) for it")
    return uri


def check_request(instance, request: dict, file) -> None:
    """Refuse a dicom_seg request that cannot give a SEG, before any inference."""
    if file is not None:
        raise MedSegInputError("output=dicom_seg needs an image of the datastore (?image=<id>), not an uploaded file")
    if any(_flag(request.get(k, False)) for k in FLOAT_OUTPUT_PARAMS):
        raise MedSegInputError("a DICOM SEG holds label maps; drop probabilities/uncertainty or use output=image")
    dicom_source_path(instance, request.get("image"))


def seg_response(instance, background_tasks: BackgroundTasks, model: str, image: str, result: dict):
    """The prediction in ``result`` as a DICOM SEG over image ``image``'s series."""
    prediction = read_volume(result["file"], what="the prediction")
    background_tasks.add_task(remove_file, result["file"])
    source = read_volume(dicom_source_path(instance, image))
    if not same_grid(prediction, source):
        raise RuntimeError(f"the prediction of {model} is not on the grid of image {image}")
    labels = _app_labels(instance)
    fd, seg_path = tempfile.mkstemp(prefix="medseg_seg_", suffix=".dcm")
    os.close(fd)
    background_tasks.add_task(remove_file, seg_path)
    from medseg.dicom.seg import write_seg

    write_seg(np.rint(prediction.array).astype(np.uint8), source, labels, seg_path,
              series_description=f"MedSeg {model}"[:64], algorithm_type="AUTOMATIC", algorithm_name=f"MedSeg {model}")
    logger.info("infer %s on %s: DICOM SEG with %d segments", model, image, len(labels))
    return FileResponse(seg_path, media_type="application/dicom", filename=f"{image}_{model}_seg.dcm")


def _app_labels(instance) -> dict[str, int]:
    cfg = getattr(instance, "cfg", None)
    if cfg is not None and getattr(cfg, "labels", None):
        return dict(cfg.labels)
    return {str(k): int(v) for k, v in (instance.info().get("labels") or {}).items()}
