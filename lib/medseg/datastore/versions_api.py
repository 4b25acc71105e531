"""REST routes for label versions, added to MONAI Label's server under /medseg/labels.

MONAI Label's own contract already shows the history (``GET /datastore/image/info``
includes ``label_versions``), but it has no way to fetch or restore one version:
``PUT /datastore/label`` requires an uploaded file. These three routes fill that gap.

    GET  /medseg/labels/{image}/versions                    the history (oldest first)
    GET  /medseg/labels/{image}/versions/{version}          one version's NIfTI file
    POST /medseg/labels/{image}/versions/{version}/restore  make it the final label (a new version)
"""
from __future__ import annotations

import logging
import os
from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi.responses import FileResponse
from monailabel.config import RBAC_ADMIN, RBAC_USER, settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from medseg.datastore.local import FINAL, MedSegLocalDatastore

logger = logging.getLogger(__name__)
PREFIX = "/medseg/labels"

router = APIRouter(prefix=PREFIX, tags=["MedSeg label versions"], responses={404: {"description": "Not found"}})


def _datastore() -> MedSegLocalDatastore:
    store = app_instance().datastore()
    if not isinstance(store, MedSegLocalDatastore):
        raise HTTPException(status_code=501, detail="label versions are kept only by the local (folder) datastore")
    return store


# Plain (not async) functions: FastAPI runs them in its thread pool, so file I/O and
# waiting for the datastore lock never block the server's event loop.
@router.get("/{image}/versions", summary=f"{RBAC_USER}List the versions of an image's final label")
def list_versions(image: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    return {"image": image, "tag": FINAL, "versions": _datastore().label_versions(image)}


@router.get("/{image}/versions/{version}", summary=f"{RBAC_USER}Download one version of an image's final label")
def download_version(image: str, version: int, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    path = _datastore().label_version_path(image, version)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{image}_v{version}{_suffix(path)}")


@router.post("/{image}/versions/{version}/restore",
             summary=f"{RBAC_ADMIN}Make a version the final label again (stored as a new version)")
def restore_version(
    image: str,
    version: int,
    params: dict[str, Any] | None = Body(None),
    user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN)),
):
    # Like PUT /datastore/label, the client names itself in the body (MONAI Label's client sends client_id).
    client_id = (params or {}).get("client_id")
    return _datastore().restore_label_version(image, version, client_id=client_id)


def _suffix(path: str) -> str:
    return ".nii.gz" if path.endswith(".nii.gz") else os.path.splitext(path)[1]
