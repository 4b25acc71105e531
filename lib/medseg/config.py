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


@dataclass(frozen=True)
class ConfKey:
    """One ``--conf`` key as users read about it; docs/configuration.md is generated from these."""

    name: str
    default: str  # as the docs show it
    meaning: str


# Every key the app accepts (others are logged and ignored), in the order the docs list them.
CONF_KEYS = (
    ConfKey("models", "`all`",
            "comma list of model names to serve and train, or `all`"),
    ConfKey("labels", "`grey_matter=1,white_matter=2`",
            "label names and indices 1..N, as `name=index` pairs separated by commas (no spaces: the "
            "`monailabel` launcher splits arguments on spaces), or a JSON object without spaces"),
    ConfKey("device", "`auto`",
            "`auto` (GPU when PyTorch sees one), `cpu`, `cuda` or `cuda:N`"),
    ConfKey("tta", "`false`",
            'mirror test-time augmentation for infer requests that do not say (`params={"tta": true}`)'),
    ConfKey("modality", "`MR`",
            "`MR` or `CT`: the normalization of plans made from the data (CT: clip to foreground 0.5/99.5 "
            "percentiles, dataset z-score; MR: per-image z-score)"),
    ConfKey("gpu_memory_gb", "sized for the machine",
            "memory budget (GiB) that sizes the patch and batch of plans made from the data. Unset: on a GPU "
            "8; on a CPU a small network, a patch sized for iterations per minute (0.06 GiB of activations) "
            "and a spacing coarse enough that the median image has at most 4 M "
            'voxels (`planned_for: "cpu"` in the plan). Set, it is used as given, also on a CPU'),
    ConfKey("shipped_weights", "`true`",
            "`false`: ignore the weights shipped in `apps/medseg/model/`, so every model starts from scratch "
            "on the datastore's own `final` labels (other anatomy, or a benchmark that must not start from a "
            "trained brain model). The guided-editing model's weights are kept: they are class-agnostic"),
    ConfKey("shipped_interactive_weights", "`true`",
            "`false`: ignore the shipped weights of the class-agnostic guided-editing model as well (`learned` "
            "then answers only after `POST /train/interactive`; `seeded` answers meanwhile)"),
    ConfKey("work_dir", "`<studies>/.medseg`",
            "published weights, plans, split, preprocessing cache, training progress, uncertainty scores, "
            "reservations"),
    ConfKey("al_model", "(empty)",
            "model the `epistemic`/`tta` strategies score with: empty = the first served model with weights, "
            "`auto` = the `auto` task's choice (when that is the ensemble, its member with the best "
            "validation Dice), or a served model's name"),
    ConfKey("al_passes", "`5`",
            "N: MC-dropout passes (`epistemic`) or augmentations (`tta`, at most 8 in 3D) per score, 2..64; a"
            " scoring request's `passes` overrides it"),
    ConfKey("al_dropout", "`0.1`",
            "dropout probability of the MC-dropout passes, 0.01..0.5"),
    ConfKey("al_reservation_s", "`600`",
            "seconds an image served by a strategy is withheld from other clients"),
    ConfKey("al_auto_scoring", "`true`",
            "let the server start the uncertainty scoring methods by itself (`false`: only `POST "
            "/scoring/<method>`)"),
    ConfKey("auto_train_after", "`0`",
            "retrain by itself after this many new `final` labels (0: never); the `PUT /datastore/label` "
            'answer then says `"auto_train": {"model", "started"}`'),
    ConfKey("auto_train_model", "first served model",
            "which model the automatic runs train"),
    ConfKey("auto_train_options", "`{}`",
            "training options of the automatic runs, as a JSON object without spaces (the `monailabel` "
            'launcher splits arguments on spaces), e.g. `{"max_iterations":100}`'),
    ConfKey("max_upload_mb", "`2048`",
            "largest request body; larger uploads get 413 before they are read"),
    ConfKey("max_image_voxels", "`268435456`",
            "largest image (or label) a header may claim (512 x 512 x 1024)"),
    ConfKey("open_network", "`false`",
            "with authentication off, answer clients on other machines too (see docs/security.md)"),
    ConfKey("interactive_cache_mb", "`2048`",
            "memory for the images `POST /infer/interactive` keeps between clicks (least recently used out "
            "first; 0: none)"),
    ConfKey("infer_server_paths", "`false`",
            "let `POST /infer` read a file on the server by absolute path (`?image=/path`), not only "
            "datastore ids"),
)


def unknown_keys(conf: dict) -> list[str]:
    return sorted(set(conf) - {key.name for key in CONF_KEYS})


@dataclass
class AppConfig:
    models: list[ModelSpec]
    labels: dict[str, int]
    device: str  # "auto", "cpu", "cuda", "cuda:1"
    work_dir: Path  # published weights, caches, training progress
    shipped_model_dir: Path | None  # None: ignore the shipped weights (conf shipped_weights false)
    # The guided-editing model segments any structure, so other anatomy keeps it (conf shipped_interactive_weights)
    shipped_interactive_model_dir: Path | None
    tta: bool  # default for infer requests that do not say
    modality: str  # "MR" or "CT": picks the normalization when a plan is made from the data
    gpu_memory_gb: float | None  # planning budget of plans made from the data; None: sized for the machine
    al_model: str = ""  # model the uncertainty strategies use: "" (first served with weights), "auto" or a name
    al_passes: int = 5  # stochastic passes (MC dropout) or augmentations (TTA) per uncertainty score
    al_dropout: float = 0.1  # feature-map dropout probability of the MC-dropout passes
    al_reservation_s: float = 600.0  # an image served to one client is withheld from others this long
    al_auto_scoring: bool = True  # let MONAI Label start uncertainty scoring runs by itself
    auto_train_after: int = 0  # retrain after this many new final labels (0: never by itself)
    auto_train_model: str = ""  # which model: "" = the first served one
    auto_train_options: dict | None = None  # training options of the automatic runs (as in POST /train/)
    max_image_voxels: int = 512 * 512 * 1024  # largest image (or label) a header may claim
    max_upload_mb: float = 2048.0  # largest request body; 413 beyond
    infer_server_paths: bool = False  # let POST /infer read files on the server by path, not only datastore ids
    open_network: bool = False  # with auth off, answer clients that are not on this machine (loopback) too
    interactive_cache_mb: int = 2048  # images the interactive model keeps in memory between clicks

    @classmethod
    def from_conf(cls, conf: dict, studies: str, app_dir: str) -> "AppConfig":
        labels = TISSUE_LABELS
        if conf.get("labels"):
            labels = parse_labels(conf["labels"])
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
        gpu_memory_gb = None
        if "gpu_memory_gb" in conf:
            try:
                gpu_memory_gb = float(conf["gpu_memory_gb"])
            except ValueError as e:
                raise ConfigError(f"--conf gpu_memory_gb must be a number, got {conf['gpu_memory_gb']!r}") from e
            if not 0 < gpu_memory_gb < 1e4:
                raise ConfigError("--conf gpu_memory_gb must be positive (GiB)")
        unknown = unknown_keys(conf)
        if unknown:
            import logging

            logging.getLogger(__name__).warning("ignoring unknown --conf keys: %s", unknown)
        models = select_models(conf.get("models", "all"))
        return cls(
            models=models,
            labels=labels,
            device=device,
            work_dir=work_dir,
            # Without the shipped weights every model starts from scratch on the datastore's own labels
            # (other anatomy, or a benchmark that must not start from a trained brain model).
            shipped_model_dir=Path(app_dir) / "model" if _bool("shipped_weights", conf.get("shipped_weights", "true")) else None,
            shipped_interactive_model_dir=Path(app_dir) / "model" if _bool(
                "shipped_interactive_weights", conf.get("shipped_interactive_weights", "true")) else None,
            tta=_bool("tta", conf.get("tta", "false")),
            modality=modality,
            gpu_memory_gb=gpu_memory_gb,
            **_active_learning(conf, [m.name for m in models]),
            **_safety(conf),
            interactive_cache_mb=_number(conf, "interactive_cache_mb", 2048, int, 0, 1024 * 1024),
        )

    def grid_limits(self):
        from medseg.volume import GridLimits

        return GridLimits(max_voxels=self.max_image_voxels)


def parse_labels(text: str) -> dict[str, int]:
    """``--conf labels``: ``name=index,name=index`` or a JSON object of name: index.

    The first form has no spaces or quotes to lose: MONAI Label's ``monailabel`` launcher
    passes its arguments on unquoted, so a JSON value with spaces arrives in pieces.
    """
    text = str(text).strip()
    try:
        if text.startswith("{"):
            pairs = json.loads(text).items()
        else:
            pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
        labels = {str(k).strip(): int(v) for k, v in pairs}
    except (ValueError, AttributeError, TypeError) as e:
        raise ConfigError(f"--conf labels must be name=index pairs (ribs=1,spine=2) or a JSON object of "
                          f"name: index, got {text!r}") from e
    if not labels or any(not name for name in labels):
        raise ConfigError(f"--conf labels names no labels: {text!r}")
    return labels


SAFETY_KEYS = ("max_image_voxels", "max_upload_mb", "infer_server_paths", "open_network")


def _safety(conf: dict) -> dict:
    return {
        "max_image_voxels": _number(conf, "max_image_voxels", 512 * 512 * 1024, int, 4**3, 2**34),
        "max_upload_mb": _number(conf, "max_upload_mb", 2048, float, 0.001, 1024 * 1024),
        "infer_server_paths": _bool("infer_server_paths", conf.get("infer_server_paths", "false")),
        "open_network": _bool("open_network", conf.get("open_network", "false")),
    }


ACTIVE_LEARNING_KEYS = ("al_model", "al_passes", "al_dropout", "al_reservation_s", "al_auto_scoring",
                        "auto_train_after", "auto_train_model", "auto_train_options")


def _number(conf: dict, name: str, default, kind, low, high):
    try:
        value = kind(conf.get(name, default))
    except ValueError as e:
        raise ConfigError(f"--conf {name} must be a number, got {conf[name]!r}") from e
    if not low <= value <= high:
        raise ConfigError(f"--conf {name} must be between {low} and {high}, got {value}")
    return value


def _active_learning(conf: dict, served: list[str]) -> dict:
    al_model = str(conf.get("al_model", "")).strip()
    if al_model not in ("", "auto", *served):
        raise ConfigError(f"--conf al_model must be auto or a served model ({', '.join(served)}), got {al_model!r}")
    return {
        "al_model": al_model,
        "al_passes": _number(conf, "al_passes", 5, int, 2, 64),
        "al_dropout": _number(conf, "al_dropout", 0.1, float, 0.01, 0.5),
        "al_reservation_s": _number(conf, "al_reservation_s", 600, float, 0, 7 * 24 * 3600),
        "al_auto_scoring": _bool("al_auto_scoring", conf.get("al_auto_scoring", "true")),
        **_auto_train(conf, served),
    }


def _auto_train(conf: dict, served: list[str]) -> dict:
    model = str(conf.get("auto_train_model", "")).strip() or (served[0] if served else "")
    if model not in served:
        raise ConfigError(f"--conf auto_train_model must be a served model ({', '.join(served)}), got {model!r}")
    try:
        options = json.loads(conf.get("auto_train_options") or "{}")
    except ValueError as e:
        raise ConfigError(f"--conf auto_train_options must be a JSON object, got {conf['auto_train_options']!r}") from e
    if not isinstance(options, dict):
        raise ConfigError("--conf auto_train_options must be a JSON object of training options")
    from medseg.pipeline.training import TrainConfig

    try:
        TrainConfig.from_request(options)  # refuse bad values at start, not at the first automatic run
    except Exception as e:
        raise ConfigError(f"--conf auto_train_options: {getattr(e, 'detail', e)}") from e
    return {"auto_train_after": _number(conf, "auto_train_after", 0, int, 0, 100000),
            "auto_train_model": model, "auto_train_options": options}
