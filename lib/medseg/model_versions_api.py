"""REST routes for model weight versions: list them, and roll back to one.

Every training run that publishes keeps the weights it replaces as
``model.v<N>.pt`` (medseg.checkpoint.ModelStore); a rollback makes one of them
current again, archiving the current one, and the next infer uses it (hot reload).

    GET  /medseg/models/{model}/versions                    every version on disk, with its record
    POST /medseg/models/{model}/versions/{version}/restore  make it the served weights
"""
from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from monailabel.config import RBAC_ADMIN, RBAC_USER, settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

from medseg.checkpoint import ModelStore

router = APIRouter(prefix="/medseg/models", tags=["MedSeg model versions"],
                   responses={404: {"description": "Not found"}})


def _store(model: str) -> ModelStore:
    stores = getattr(app_instance(), "stores", {})
    if model not in stores:
        raise HTTPException(status_code=404, detail=f"model '{model}' is not served; models: {', '.join(stores)}")
    return stores[model]


@router.get("/{model}/versions", summary=f"{RBAC_USER}List a model's weight versions")
def list_versions(model: str, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    return {"model": model, "versions": _store(model).versions()}


@router.post("/{model}/versions/{version}/restore", summary=f"{RBAC_ADMIN}Serve an earlier weight version again")
def restore_version(model: str, version: int, user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
    store = _store(model)
    try:
        restored = store.restore(version)
    except KeyError:
        known = sorted(store.version_paths())
        raise HTTPException(status_code=404, detail=f"model '{model}' has no version {version}; versions: {known}")
    return {"model": model, "restored": restored, "current_version": version}
