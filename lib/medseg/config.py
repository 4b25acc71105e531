"""The app's configuration, parsed once from MONAI Label's ``--conf key value`` strings."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from medseg.data.template import TISSUE_LABELS
from medseg.errors import ConfigError
from medseg.models import ModelSpec, select_models


def _bool(name: str, value) -> bool:
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"--conf {name} must be true or false, got {value!r}")


@dataclass
class AppConfig:
    models: list[ModelSpec]
    labels: dict[str, int]
    device: str  # "auto", "cpu", "cuda", "cuda:1"
    work_dir: Path  # published weights, caches, training progress
    shipped_model_dir: Path
    tta: bool  # default for infer requests that do not say
    modality: str  # "MR" or "CT": picks the normalization when a plan is made from the data
    gpu_memory_gb: float  # planning budget for patch and batch size of plans made from the data

    @classmethod
    def from_conf(cls, conf: dict, studies: str, app_dir: str) -> "AppConfig":
        known = {"models", "labels", "device", "work_dir", "tta", "modality", "gpu_memory_gb"}
        labels = TISSUE_LABELS
        if conf.get("labels"):
            try:
                labels = {str(k): int(v) for k, v in json.loads(conf["labels"]).items()}
            except (ValueError, AttributeError) as e:
                raise ConfigError(f"--conf labels must be a JSON object of name: index, got {conf['labels']!r}") from e
            if sorted(labels.values()) != list(range(1, len(labels) + 1)):
                raise ConfigError("--conf labels indices must be 1..N without gaps (0 is background)")
        device = str(conf.get("device", "auto"))
        if not (device in ("auto", "cpu") or device.startswith("cuda")):
            raise ConfigError(f"--conf device must be auto, cpu or cuda[:N], got {device!r}")
        if conf.get("work_dir"):
            work_dir = Path(conf["work_dir"])
        elif studies.startswith(("http://", "https://")):
            digest = hashlib.sha1(studies.encode()).hexdigest()[:12]
            work_dir = Path(app_dir) / "work" / digest
        else:
            # Weights trained on a datastore belong with it.
            work_dir = Path(studies) / ".medseg"
        modality = str(conf.get("modality", "MR")).upper()
        if modality not in ("MR", "CT"):
            raise ConfigError(f"--conf modality must be MR or CT, got {conf['modality']!r}")
        try:
            gpu_memory_gb = float(conf.get("gpu_memory_gb", 8.0))
        except ValueError as e:
            raise ConfigError(f"--conf gpu_memory_gb must be a number, got {conf['gpu_memory_gb']!r}") from e
        if gpu_memory_gb <= 0:
            raise ConfigError("--conf gpu_memory_gb must be positive")
        unknown = sorted(set(conf) - known)
        if unknown:
            import logging

            logging.getLogger(__name__).warning("ignoring unknown --conf keys: %s", unknown)
        return cls(
            models=select_models(conf.get("models", "all")),
            labels=labels,
            device=device,
            work_dir=work_dir,
            shipped_model_dir=Path(app_dir) / "model",
            tta=_bool("tta", conf.get("tta", "false")),
            modality=modality,
            gpu_memory_gb=gpu_memory_gb,
        )
