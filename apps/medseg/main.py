"""MedSeg: the MONAI Label app.

    monailabel start_server --app apps/medseg --studies <folder> [--conf models unet3d]

One table (medseg.models.MODELS) says which models exist; this file only wires
each selected model to an infer task and a train task over the datastore.
"""
import logging
import os

from monailabel.interfaces.app import MONAILabelApp
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random

import medseg
from medseg.activelearning.scoring import DiceScoring
from medseg.checkpoint import model_stores
from medseg.config import AppConfig
from medseg.datastore.local import MedSegLocalDatastore
from medseg.errors import UnknownImageError
from medseg.tasks.infer import AutoInferTask, EnsembleInferTask, MedSegInferTask
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
            return super().init_datastore()
        from monailabel.config import settings

        return MedSegLocalDatastore(
            self.studies,
            labels=self.cfg.labels,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
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
        return infers

    def init_trainers(self):
        return train_tasks(self.cfg, self.stores)

    def infer(self, request, datastore=None):
        image = request.get("image")
        store = datastore or self.datastore()
        if isinstance(image, str) and not os.path.exists(image) and not store.get_image_uri(image):
            raise UnknownImageError(f"image '{image}' is not in the datastore; list images with GET /datastore/?output=all")
        return super().infer(request, datastore)

    def init_strategies(self):
        return {"random": Random(), "first": First()}

    def init_scoring_methods(self):
        return {"dice": DiceScoring(self.cfg.labels)}

    def async_scoring(self, method, params=None):
        # MONAI Label starts every scoring method by itself (at start, after training, after
        # each next-sample request), each in a new process of some 20 s of CPU; skip those
        # automatic runs while no image has a label pair without a current score.
        if not method and not DiceScoring.has_work(self.datastore()):
            return {}
        return super().async_scoring(method, params)

    def on_init_complete(self):
        # Runs only inside the server (not in task subprocesses): add the /medseg/... routes.
        from medseg import model_versions_api
        from medseg.server_routes import include_in_server

        routers = [model_versions_api.router]
        if isinstance(self.datastore(), MedSegLocalDatastore):
            from medseg.datastore import versions_api

            routers.append(versions_api.router)
        include_in_server(*routers)
        super().on_init_complete()
