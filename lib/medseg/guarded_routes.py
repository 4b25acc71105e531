"""MONAI Label's routes that take client input, answered by MedSeg first.

Same paths, parameters and answers as MONAI Label's (its stock clients work unchanged),
but the inputs are checked where they enter, before anything is written or started:

- ``params`` and ``info`` form fields: a JSON object, or 422 (``medseg.request_options``);
- uploaded files: the client's file name decides the type (415 naming that file), and
  the datastore checks the content (``medseg.datastore.local``);
- infer: the image is a datastore id or the uploaded file, never a path a client names
  (``MedSegApp.infer``); unknown options are refused;
- train: every option typed and bounded (``medseg.tasks.train.check_train_request``) before
  MONAI Label starts the training process; unknown models and strategies are 404.

Ids and tags are checked by the datastore, which every route and task goes through.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any, Optional

from fastapi import APIRouter, BackgroundTasks, Body, Depends, File, Form, UploadFile
from fastapi.responses import Response
from monailabel.config import settings
from monailabel.endpoints.infer import ResultType, send_response
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.interfaces.utils.app import app_instance
from monailabel.utils.others.generic import remove_file

from medseg.errors import MedSegInputError, UnknownModelError, UnsupportedMediaError
from medseg.request_options import client_id, json_object, number
from medseg.tasks.infer import UploadedImage
from medseg.tasks.interactive_train import InteractiveTrainTask, check_interactive_train_request
from medseg.tasks.train import check_train_request

logger = logging.getLogger(__name__)

router = APIRouter()
USER, ANNOTATOR, ADMIN = (settings.MONAI_LABEL_AUTH_ROLE_USER, settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR,
                          settings.MONAI_LABEL_AUTH_ROLE_ADMIN)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".zip", ".dcm")
LABEL_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".nrrd", ".dcm")


class UnknownTaskError(MedSegInputError):
    http_status = 404


def _suffix(upload: UploadFile, allowed: tuple[str, ...], what: str) -> str:
    name = os.path.basename((upload.filename or "").replace("\\", "/"))
    for suffix in allowed:
        if name.lower().endswith(suffix):
            return suffix
    shown = repr(name[:80]) if name else "the upload"
    raise UnsupportedMediaError(f"{shown} is not {what} ({', '.join(allowed)}); convert it first")


def _client_name(upload: UploadFile, suffix: str) -> str:
    """The file name as the client sent it, without its suffix (an image id when none is given)."""
    name = os.path.basename((upload.filename or "").replace("\\", "/"))
    return name[: len(name) - len(suffix)]


def _save_upload(upload: UploadFile, suffix: str, background_tasks: BackgroundTasks) -> str:
    """The upload in a temporary file of ours (removed after the answer); its size is bounded by the guard."""
    fd, path = tempfile.mkstemp(prefix="medseg_upload_", suffix=suffix)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(upload.file, out, 1 << 20)
    background_tasks.add_task(remove_file, path)
    return path


# ---------------------------------------------------------------- datastore


@router.put("/datastore/", include_in_schema=False, deprecated=True)
@router.put("/datastore/image", summary="Upload a new image (params {\"replace\": true} replaces one)")
def put_image(background_tasks: BackgroundTasks, image: Optional[str] = None, params: str = Form("{}"),
              file: UploadFile = File(...), user: User = Depends(RBAC(ANNOTATOR))):
    info = json_object(params, "params")
    suffix = _suffix(file, IMAGE_SUFFIXES, "a NIfTI or NRRD image, or a .zip of a DICOM series")
    image_id = image if image else _client_name(file, suffix)
    path = _save_upload(file, suffix, background_tasks)
    return {"image": app_instance().datastore().add_image(image_id, path, info)}


@router.put("/datastore/label", summary="Save a finished label")
def put_label(background_tasks: BackgroundTasks, image: str, params: str = Form("{}"),
              tag: str = DefaultLabelTag.FINAL.value, label: UploadFile = File(...),
              user: User = Depends(RBAC(ANNOTATOR))):
    info = json_object(params, "params")
    if "source" in info:
        raise MedSegInputError("params source is set by the server (upload, restore, infer), not by clients")
    suffix = _suffix(label, LABEL_SUFFIXES, "a NIfTI or NRRD label, a Slicer .seg.nrrd or a DICOM SEG")
    path = _save_upload(label, suffix, background_tasks)
    instance = app_instance()
    label_id = instance.datastore().save_label(image, path, tag or DefaultLabelTag.FINAL.value, info)
    result = instance.on_save_label(image, label_id) or {}
    return {**result, "image": image, "label": label_id}


@router.put("/datastore/image/info", summary="Update image info")
def put_image_info(image: str, info: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
    return app_instance().datastore().update_image_info(image, json_object(info, "info"))


@router.put("/datastore/label/info", summary="Update label info")
def put_label_info(label: str, tag: str, info: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
    return app_instance().datastore().update_label_info(label, tag, json_object(info, "info"))


@router.put("/datastore/updatelabelinfo", include_in_schema=False, deprecated=True)
def put_label_info_old(label: str, tag: str, params: str = Form("{}"), user: User = Depends(RBAC(ANNOTATOR))):
    return app_instance().datastore().update_label_info(label, tag, json_object(params, "params"))


# ---------------------------------------------------------------- infer


@router.post("/infer/{model}", summary="Run inference (output=dicom_seg: a DICOM SEG over the image's series)")
def post_infer(background_tasks: BackgroundTasks, model: str, image: str = "", session_id: str = "",
               params: str = Form("{}"), file: UploadFile = File(None), label: UploadFile = File(None),
               output: Optional[ResultType] = None, user: User = Depends(RBAC(USER))):
    from medseg.dicom import infer_output

    instance = app_instance()
    options = json_object(params, "params")
    for key in ("model", "session", "label_file"):
        if key in options:
            raise MedSegInputError(f"params may not set {key!r}; it comes from the request itself")
    request: dict[str, Any] = {**instance.info().get("config", {}).get("infer", {}), "image": image, **options}
    if file is not None:
        request["image"] = UploadedImage(_save_upload(file, _suffix(file, IMAGE_SUFFIXES[:3], "a NIfTI or NRRD image"),
                                                      background_tasks))
    if label is not None:
        # Scribbles or a prior segmentation for the interactive model ("label" in params is a label name).
        request["label_file"] = UploadedImage(_save_upload(label, _suffix(label, LABEL_SUFFIXES[:2], "a NIfTI label"),
                                                           background_tasks))
    if session_id:
        raise UnknownTaskError(NO_SESSIONS)
    if output == ResultType.dicom_seg:
        infer_output.check_request(instance, request, file)
    result = instance.infer({**request, "model": model})
    if output == ResultType.dicom_seg:
        return infer_output.seg_response(instance, background_tasks, model, request["image"], result)
    return send_response(instance.datastore(), result, output, background_tasks)


# ---------------------------------------------------------------- train, active learning, scoring, logs


def _trainer(model: str):
    trainers = app_instance()._trainers
    if model not in trainers:
        raise UnknownModelError(f"no train task {model!r}; train tasks: {', '.join(trainers)}")
    return trainers[model]


def _checked_options(trainer, params: dict) -> dict:
    """The interactive model has options of its own; every other model takes TrainConfig's."""
    if isinstance(trainer, InteractiveTrainTask):
        return check_interactive_train_request(params)
    return check_train_request(params)


@router.post("/train/{model}", summary="Run training for one model (options checked first)")
def post_train(model: str, params: Optional[dict] = Body(None), run_sync: Optional[bool] = False,
               enqueue: Optional[bool] = False, user: User = Depends(RBAC(ADMIN))):
    from monailabel.endpoints.train import run_model

    return run_model(model, _checked_options(_trainer(model), params or {}), run_sync, enqueue)


@router.post("/train/", include_in_schema=False, deprecated=True)
def post_train_all(params: Optional[dict] = Body(None), run_sync: Optional[bool] = False,
                   user: User = Depends(RBAC(ADMIN))):
    from monailabel.endpoints.train import run

    # MONAI Label's Python client names itself here too ({"client_id": null}); the rest are models.
    params = {k: v for k, v in (params or {}).items() if k != "client_id"}
    for model, options in params.items():
        trainer = _trainer(model)
        if not isinstance(options, dict):
            raise MedSegInputError(f"params[{model!r}] must be a JSON object of training options")
        params[model] = _checked_options(trainer, options)
    return run(params, run_sync)


@router.delete("/train/", summary="Stop training")
def delete_train(user: User = Depends(RBAC(ADMIN))):
    from monailabel.endpoints.train import stop

    result = stop()
    for trainer in app_instance()._trainers.values():
        if hasattr(trainer, "mark_stopped"):
            trainer.mark_stopped()
    return result


@router.post("/activelearning/{strategy}", summary="Run an active learning strategy to get the next sample")
def post_activelearning(strategy: str, params: Optional[dict] = Body(None), user: User = Depends(RBAC(USER))):
    from monailabel.endpoints.activelearning import sample

    strategies = app_instance()._strategies
    if strategy not in strategies:
        raise UnknownTaskError(f"no strategy {strategy!r}; strategies: {', '.join(strategies)}")
    return sample(strategy, client_id(params or {}), user.username)


@router.post("/scoring/{method}", summary="Run one scoring method")
def post_scoring(method: str, params: Optional[dict] = Body(None), run_sync: Optional[bool] = False,
                 user: User = Depends(RBAC(ANNOTATOR))):
    from monailabel.endpoints.scoring import run_method

    methods = app_instance()._scoring_methods
    if method not in methods:
        raise UnknownTaskError(f"no scoring method {method!r}; methods: {', '.join(methods)}")
    return run_method(method, params, run_sync)


# ---------------------------------------------------------------- login


class LoginRefused(MedSegInputError):
    http_status = 401


@router.get("/auth/", summary="Whether this server asks for a login")
def get_auth_enabled():
    """MONAI Label's answer, also when auth is off (its route exists only when it is on, so a client
    asking on an open server got a 404 it had to read as "no login")."""
    from monailabel.config import settings

    return {"enabled": settings.MONAI_LABEL_AUTH_ENABLE,
            "client_id": settings.MONAI_LABEL_AUTH_CLIENT_ID if settings.MONAI_LABEL_AUTH_ENABLE else None}


@router.post("/auth/token", summary="Log in: a bearer token from the OpenID issuer (password grant)")
def post_auth_token(username: str = Form(...), password: str = Form(...)):
    """MONAI Label's password login, with the issuer's refusal answered as 401, not as a server error."""
    import requests
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import token_uri

    if not settings.MONAI_LABEL_AUTH_ENABLE:  # as MONAI Label answers: no token to give
        return {"access_token": None, "token_type": None}
    data = {"client_id": settings.MONAI_LABEL_AUTH_CLIENT_ID, "username": username, "password": password,
            "grant_type": "password"}
    answer = requests.post(token_uri(), data=data, timeout=settings.MONAI_LABEL_AUTH_TIMEOUT)
    if answer.status_code in (400, 401, 403):
        raise LoginRefused(f"the login of {username!r} was refused: wrong user name or password")
    answer.raise_for_status()  # the issuer itself failing is a server error (502 would hide nothing more)
    token = answer.json()
    return {"access_token": token["access_token"], "token_type": token.get("token_type", "bearer")}


# ---------------------------------------------------------------- routes MedSeg does not serve

NO_SESSIONS = ("sessions are not served by MedSeg (MONAI Label's session upload unpacks archives unchecked); "
               "upload the image with PUT /datastore/image, or send it with the infer request")


@router.put("/session/", include_in_schema=False)
@router.get("/session/{session_id}", include_in_schema=False)
@router.delete("/session/{session_id}", include_in_schema=False)
def no_sessions(session_id: str = ""):
    raise UnknownTaskError(NO_SESSIONS)


@router.post("/infer/wsi/{model}", include_in_schema=False)
@router.post("/infer/wsi_v2/{model}", include_in_schema=False)
def no_wsi(model: str):
    raise UnknownTaskError("MedSeg serves 3D volume models; whole-slide (WSI) inference is not served")


class MethodNotAllowed(MedSegInputError):
    http_status = 405


@router.put("/model/{model}", include_in_schema=False)
@router.delete("/model/{model}", include_in_schema=False)
def no_weight_upload(model: str):
    # A weights file is a pickle: loading an uploaded one runs whatever code it holds.
    raise MethodNotAllowed("weights are not uploaded or deleted over REST: train a model (POST /train/<model>) or "
                           "serve an earlier version (POST /medseg/models/<model>/versions/<n>/restore)")


@router.get("/logs/", summary="The server's log (admin)")
def get_server_logs(lines: int = 300, html: bool = True, text: bool = False, refresh: int = 0,
                    user: User = Depends(RBAC(ADMIN))):
    from monailabel.endpoints.logs import get_logs

    lines = number("lines", lines, int, 0, 1_000_000)
    refresh = number("refresh", refresh, int, 0, 3600)
    return get_logs(os.path.join(settings.MONAI_LABEL_APP_DIR, "logs", "app.log"), lines, html, text, refresh)


@router.get("/datastore/dataset", summary="Download the labeled dataset as a ZIP archive")
def get_dataset(limit_cases: Optional[int] = None, user: User = Depends(RBAC(ANNOTATOR))):
    from monailabel.endpoints.datastore import download_dataset

    if limit_cases is not None:
        number("limit_cases", limit_cases, int, 1, 1_000_000)
    if not app_instance().datastore().datalist():
        raise UnknownTaskError("no image has a final label yet, so there is no dataset to download")
    return download_dataset(limit_cases)


@router.get("/logs/gpu", summary="GPU status (nvidia-smi)")
def get_gpu_logs(user: User = Depends(RBAC(ADMIN))):
    import subprocess

    if shutil.which("nvidia-smi") is None:
        raise UnknownTaskError("this server has no NVIDIA GPU (nvidia-smi not found)")
    answer = subprocess.run(["nvidia-smi"], stdout=subprocess.PIPE, timeout=30)
    return Response(content=answer.stdout.decode("utf-8", "replace"), media_type="text/plain")


def install() -> bool:
    """Put these routes ahead of MONAI Label's; False outside the server."""
    from medseg.server_routes import include_ahead

    return include_ahead(router)
