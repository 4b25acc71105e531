"""``GET /datastore/image`` for images that are DICOM series: the series as one NIfTI file.

MONAI Label's download route serves single files only, so it answers 404 for a DICOM
series (a folder in a local studies folder, or the folder a DICOMweb datastore fetched
the series into). Clients that cannot see the server's disk (the Slicer extension, curl)
would then have no way to get the image. This route answers for series with the volume
as the pipeline reads it (``medseg.imageio.read_volume``: geometry from the DICOM
positions, rescale applied), so a label drawn on the download lies on exactly the grid
the server checks submitted labels against. Every other image goes to MONAI Label's
handler unchanged.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from monailabel.config import settings
from monailabel.endpoints.datastore import download_image
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from medseg.errors import UnknownImageError
from medseg.imageio import read_volume, write_like

router = APIRouter(prefix="/datastore", tags=["Datastore"])


def series_as_nifti(series_dir: str, cache_dir: Path) -> Path:
    """The series as ``.nii.gz`` (float32), converted once per state of the folder."""
    files = sorted(os.listdir(series_dir))
    stamp = f"{os.path.realpath(series_dir)}:{os.stat(series_dir).st_mtime_ns}:{len(files)}"
    path = Path(cache_dir) / f"{hashlib.sha1(stamp.encode()).hexdigest()[:16]}.nii.gz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        volume = read_volume(series_dir)
        write_like(path, volume.array, volume, dtype=volume.array.dtype)  # atomic
    return path


@router.get("/image", summary="Download an image (a DICOM series comes as one NIfTI file on the same grid)")
async def download_image_or_series(image: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    instance = app_instance()
    uri = instance.datastore().get_image_uri(image)
    if not uri or not os.path.isdir(uri):
        return download_image(image)
    if not os.listdir(uri):
        raise UnknownImageError(f"image '{image}' is an empty folder")
    path = series_as_nifti(uri, instance.cfg.work_dir / "series_nifti")
    return FileResponse(path, media_type="application/gzip", filename=f"{os.path.basename(image)}.nii.gz")


def install() -> bool:
    """Put this route ahead of MONAI Label's ``GET /datastore/image``; False outside the server."""
    from medseg.server_routes import include_ahead

    return include_ahead(router)
