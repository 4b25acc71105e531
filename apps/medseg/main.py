"""MedSeg: the MONAI Label app.

    monailabel start_server --app apps/medseg --studies <folder> [--conf models unet3d]

One table (medseg.models.MODELS) says which models exist; this file only wires
each selected model to an infer task and a train task over the datastore.
"""
import logging
import os

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import DefaultLabelTag
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.async_tasks.task import AsyncTask

import medseg
from medseg.activelearning.auto_train import AutoTrain
from medseg.activelearning.reservations import Reservations
from medseg.activelearning.scores import pick_model
from medseg.activelearning.scoring import DiceScoring, UncertaintyScoring
from medseg.activelearning.strategies import UncertaintyStrategy, with_default_first
from medseg.checkpoint import model_stores
from medseg.config import AppConfig
from medseg.datastore.local import STUDY_FILE_PATTERNS, MedSegLocalDatastore
from medseg.errors import MedSegInputError, UnknownImageError, UnknownModelError
from medseg.ids import image_id as checked_image_id
from medseg.request_options import infer_options
from medseg.volume_cache import VolumeCache
from medseg.tasks.infer import AutoInferTask, EnsembleInferTask, MedSegInferTask, UploadedImage, device_name
from medseg.tasks.interactive import INTERACTIVE_MODEL, InteractiveInferTask, split_interactive_options
from medseg.tasks.interactive_train import InteractiveTrainTask, interactive_store
from medseg.tasks.train import train_tasks

logger = logging.getLogger(__name__)


class MedSegApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        self.cfg = AppConfig.from_conf(conf or {}, studies, app_dir)
        self.stores = model_stores(self.cfg)
        logger.info("MedSeg %s: models %s, device %s, work dir %s", medseg.__version__,
                    [s.name for s in self.cfg.models], self.cfg.device, self.cfg.work_dir)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MedSeg",
            description="Self-configuring 3D segmentation (nnU-Net-style pipeline) with active learning",
            version=medseg.__version__,
            labels=self.cfg.labels,
        )

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            # Not MONAI Label's own DICOMweb setup, which downloads dcmqi from GitHub at start.
            from medseg.datastore.dicomweb import dicomweb_datastore

            return dicomweb_datastore(self.studies, self.cfg.labels, self.cfg.work_dir)
        from monailabel.config import settings

        return MedSegLocalDatastore(
            self.studies,
            labels=self.cfg.labels,
            extensions=STUDY_FILE_PATTERNS,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
            limits=self.cfg.grid_limits(),
        )

    def init_infers(self):
        infers = {
            spec.name: MedSegInferTask(spec, self.stores[spec.name], self.cfg.labels, self.cfg.device, self.cfg.tta)
            for spec in self.cfg.models
        }
        members = list(infers.values())
        ensemble = EnsembleInferTask(members, self.cfg.labels, self.cfg.tta)
        infers["ensemble"] = ensemble
        infers["auto"] = AutoInferTask(members, self.cfg.labels, self.cfg.tta, ensemble, self.cfg.work_dir)
        infers[INTERACTIVE_MODEL] = InteractiveInferTask(self.cfg.labels, VolumeCache(self.cfg.interactive_cache_mb << 20),
                                                         interactive_store(self.cfg), self.cfg.device)
        return infers

    def init_trainers(self):
        return {**train_tasks(self.cfg, self.stores),
                INTERACTIVE_MODEL: InteractiveTrainTask(interactive_store(self.cfg), self.cfg.work_dir, self.cfg.device)}

    def infer(self, request, datastore=None):
        """Every inference comes through here (REST, batch, scoring): its image and options checked first.

        The image is a datastore id, or a file MedSeg's infer route received with the request
        (``UploadedImage``, which no JSON can forge); a path on the server only with
        ``--conf infer_server_paths true``. A prediction is saved under its own tag, never as
        the clinician's ``final`` label.
        """
        model = request.get("model")
        if model not in self._infers:
            raise UnknownModelError(f"model {model!r} is not served here; served models: {', '.join(self._infers)}")
        store = datastore or self.datastore()
        options = {k: v for k, v in request.items() if k not in ("model", "image")}
        guidance = {}
        if model == INTERACTIVE_MODEL:
            guidance, options = split_interactive_options(options, self.cfg.labels)
        request = {**request, **infer_options(options, device_name(self.cfg.device))}
        image = self._infer_image(request.get("image"), store)
        if guidance.get("prior_tag"):
            request["prior_path"] = self._stored_label(store, image, guidance["prior_tag"])
        save = request.pop("save_label", False)
        tag = request.pop("label_tag", DefaultLabelTag.ORIGINAL.value)
        if save:
            if isinstance(image, UploadedImage):
                raise MedSegInputError("save_label needs an image of the datastore (?image=<id>), not an uploaded file")
            if tag == DefaultLabelTag.FINAL.value:
                raise MedSegInputError("a prediction cannot be saved as the final label, which only a person submits; "
                                       "use label_tag original (the default) or a tag of its own")
            if request.get("uncertainty") or request.get("probabilities"):
                # Those outputs are float maps, not label maps: storing one as a label would corrupt the datastore.
                raise MedSegInputError("save_label stores label maps only; drop uncertainty/probabilities or save_label")
        result = super().infer({**request, "image": image, "save_label": False}, store)
        if save:
            store.save_label(image, result["file"], tag, {"model": model, "params": result["params"], "source": "infer"})
            result.update(label=image, tag=tag)
        return result

    @staticmethod
    def _stored_label(store, image, tag: str) -> str:
        if isinstance(image, UploadedImage):
            raise MedSegInputError("prior_tag names a label of a datastore image; upload the prior with the image")
        path = store.get_label_uri(image, tag)
        if not path or not os.path.exists(path):
            raise UnknownImageError(f"image {image!r} has no label tagged {tag!r}")
        return path

    def _infer_image(self, image, store):
        if isinstance(image, UploadedImage):
            return image
        if not image:
            raise MedSegInputError("infer needs an image: ?image=<datastore id>, or the image file in the request")
        if self.cfg.infer_server_paths and isinstance(image, str) and os.path.isabs(image):
            if not os.path.exists(image):
                raise UnknownImageError(f"no file {image!r} on the server")
            return image
        checked_image_id(image)
        if not store.get_image_uri(image):
            raise UnknownImageError(f"image '{image}' is not in the datastore; list images with GET /datastore/?output=all")
        return image

    def uncertainty_model(self):
        """The infer task whose network the uncertainty scores use (conf al_model); None without weights."""
        return pick_model(self._infers, self.cfg.al_model)

    def uncertainty_scoring(self) -> dict[str, UncertaintyScoring]:
        # One instance per method, shared by the strategy and the scoring method of that name.
        if not hasattr(self, "_uncertainty"):
            self._uncertainty = {
                m: UncertaintyScoring(m, self.uncertainty_model, self.cfg.work_dir, self.cfg.al_passes, self.cfg.al_dropout)
                for m in ("epistemic", "tta")
            }
        return self._uncertainty

    def init_strategies(self):
        reservations = Reservations(self.cfg.work_dir / "activelearning" / "reservations.json",
                                    self.cfg.al_reservation_s)
        uncertainty = {m: UncertaintyStrategy(s, reservations) for m, s in self.uncertainty_scoring().items()}
        return with_default_first({"random": Random(), "first": First(), **uncertainty})

    def init_scoring_methods(self):
        return {"dice": DiceScoring(self.cfg.labels), **self.uncertainty_scoring()}

    def async_scoring(self, method, params=None):
        # MONAI Label starts every scoring method by itself (at start, after training, after
        # each next-sample request), each in a new process of some 20 s of CPU; start only
        # the methods that have work (Dice: a label pair without a current score; uncertainty:
        # an unlabeled image without a score for the current weights) and are not queued yet.
        if method:
            return super().async_scoring(method, params)
        result = {}
        for name in self.methods_with_work():
            result[name] = super().async_scoring(name, params)
        return result

    def methods_with_work(self) -> list[str]:
        from monailabel.utils.async_tasks.utils import background_tasks

        pending = {t["request"].get("method") for t in background_tasks.get("scoring", [])
                   if t.get("status") in ("SUBMITTED", "RUNNING")}
        automatic = {"dice"} | ({"epistemic", "tta"} if self.cfg.al_auto_scoring else set())
        store = self.datastore()
        return [name for name, m in self._scoring_methods.items()
                if name in automatic and name not in pending and m.has_work(store)]

    def on_save_label(self, image_id, label_id):
        result = super().on_save_label(image_id, label_id) or {}
        auto = self.auto_train()
        if auto is not None and auto.due(self.datastore()):
            model = self.cfg.auto_train_model
            task, _ = AsyncTask.run("train", request={"model": model, **(self.cfg.auto_train_options or {})})
            if task:  # None while another training runs: the next label tries again
                auto.started(self.datastore())
                logger.info("auto_train_after %d reached: training %s", self.cfg.auto_train_after, model)
            result["auto_train"] = {"model": model, "started": bool(task)}
        return result

    def auto_train(self) -> AutoTrain | None:
        if self.cfg.auto_train_after <= 0:
            return None
        if not hasattr(self, "_auto_train"):
            self._auto_train = AutoTrain(self.cfg.work_dir / "activelearning" / "auto_train.json",
                                         self.cfg.auto_train_after, self.datastore())
        return self._auto_train

    def on_init_complete(self):
        # Runs only inside the server (not in task subprocesses): add the /medseg/... routes.
        from medseg import model_versions_api
        from medseg.server_routes import include_in_server

        from medseg import guarded_routes, http_guard

        store = self.datastore()
        if isinstance(store, MedSegLocalDatastore):
            store.recover()  # before any request: finish or undo what a kill interrupted
        http_guard.install(self.cfg.max_upload_mb, self.cfg.open_network)
        from medseg import effort, viewer

        routers = [model_versions_api.router, viewer.router, effort.router]
        if isinstance(store, MedSegLocalDatastore):
            from medseg.datastore import versions_api

            routers.append(versions_api.router)
        include_in_server(*routers)
        # Checked inputs on MONAI Label's routes (and infer output=dicom_seg by our offline SEG
        # writer); image download of DICOM series (folders), which MONAI Label's route cannot serve.
        from medseg.datastore import image_download

        guarded_routes.install()
        image_download.install()
        self.auto_train()  # start counting new final labels from now
        super().on_init_complete()
