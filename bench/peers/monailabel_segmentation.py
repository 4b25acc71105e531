"""MONAI Label's own radiology sample app, `segmentation` model (SegResNet), as a peer.

The monailabel 0.8.5 wheel ships its sample apps (``<venv>/monailabel/sample-apps``), so
this peer is the real app, not a re-implementation: the radiology app is copied to the
work folder, ``monailabel_segmentation_config.py`` is added to it as the config
``segmentation_bench`` (the stock ``segmentation`` recipe with the benchmark's patch and
spacing, see that file), and it is served, trained and queried through MONAI Label's
REST API exactly like our app:

* conf: ``models segmentation_bench``, ``labels grey_matter,white_matter`` (so the label
  indices are ours: 1, 2), ``use_pretrained_model false`` (from scratch, and nothing is
  downloaded), ``scribbles false`` and ``sam2 false`` (other models we do not measure);
* train: ``POST /train/segmentation_bench`` with the stock trainer's own options: the
  same training and validation images as ours (``train_ds``/``val_ds``), our batch size
  (``train_batch_size``), and ``max_epochs`` so that epochs x batches per epoch is at
  least our iteration budget (the stock trainer counts epochs, one random crop per image
  per epoch); ``tracking None`` (MLflow's file store refuses to start here, see
  /work/shared/ENVIRONMENT.md); ``SmartCacheDataset`` and ``ThreadDataLoader``, the
  first choices the app offers (what MONAI Label's Slicer module sends by default).
  The stock trainer validates after every epoch and publishes the checkpoint with the
  best validation Dice;
* infer: ``POST /infer/segmentation_bench?image=<path>`` (the stock infer task has no TTA).
"""
from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import requests
from medseg.server_process import LabelServer

MODEL = "segmentation_bench"
SAMPLE_APP = Path(sys.prefix) / "monailabel" / "sample-apps" / "radiology"


def prepare_app(dest: Path, model: str = MODEL,
                config: Path = Path(__file__).with_name("monailabel_segmentation_config.py")) -> Path:
    """A copy of the sample app (without its model folder) with ``config`` added as the config ``model``."""
    if not (SAMPLE_APP / "main.py").exists():
        raise FileNotFoundError(f"MONAI Label's radiology sample app is not at {SAMPLE_APP}")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(SAMPLE_APP, dest, ignore=shutil.ignore_patterns("__pycache__", "model"))
    shutil.copyfile(config, dest / "lib" / "configs" / f"{model}.py")
    return dest


class SampleAppServer(LabelServer):
    """The sample app served like our app in bench/server.py (same launcher, 5 minutes to start)."""

    def __init__(self, app_dir: Path, studies: Path, conf: dict[str, str], log_path: Path):
        log_path = Path(log_path)
        super().__init__(app_dir, studies, conf, log_path.parent, timeout_s=300, log_name=log_path.name)

    def wait_for(self, kind: str, timeout_s: float = 3600) -> dict:
        return self.wait_for_task(kind, timeout_s)


def conf_for(roi_size_vox: list[int], target_spacing_mm: list[float]) -> dict[str, str]:
    # No spaces in values: the monailabel launcher splits its arguments on them.
    compact = lambda x: json.dumps(x, separators=(",", ":"))  # noqa: E731
    return {"models": MODEL, "labels": "grey_matter,white_matter", "use_pretrained_model": "false",
            "scribbles": "false", "sam2": "false", "bench_roi_size": compact(list(roi_size_vox)),
            "bench_target_spacing": compact(list(target_spacing_mm))}


def epochs_for(iterations: int, n_train: int, batch_size: int) -> tuple[int, int]:
    """(max_epochs, batches per epoch) covering at least ``iterations`` optimizer steps."""
    per_epoch = math.ceil(n_train / batch_size)
    return math.ceil(iterations / per_epoch), per_epoch


def train_request(train: list[dict], val: list[dict], work: Path, iterations: int, batch_size: int,
                  device: str) -> tuple[dict, dict]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "train_ds.json").write_text(json.dumps(train, indent=1))
    (work / "val_ds.json").write_text(json.dumps(val, indent=1))
    epochs, per_epoch = epochs_for(iterations, len(train), batch_size)
    request = {"max_epochs": epochs, "train_batch_size": batch_size, "val_batch_size": 1,
               "train_ds": str(work / "train_ds.json"), "val_ds": str(work / "val_ds.json"),
               "dataset": "SmartCacheDataset", "dataloader": "ThreadDataLoader", "tracking": "None",
               "pretrained": False, "multi_gpu": False, "device": device}
    return request, {"epochs": epochs, "iterations_per_epoch": per_epoch, "iterations": epochs * per_epoch}


_ITERATION = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) - INFO - Epoch: (\d+)/\d+, Iter: (\d+)/\d+ -- ")


def train_seconds(log_path: Path) -> dict:
    """Training speed from the stock trainer's per-iteration log lines (MONAI's StatsHandler).

    Those lines carry millisecond timestamps; the gaps between consecutive iterations of
    one epoch are pure training steps (data from the cache, forward, backward), while the
    gap into an epoch's first iteration also holds the previous epoch's validation, so
    it is left out.
    """
    import datetime

    stamps = []
    for line in Path(log_path).read_text(errors="replace").splitlines():
        m = _ITERATION.search(line)
        if m:
            t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
            stamps.append((int(m.group(3)), int(m.group(4)), t))
    gaps = [b[2] - a[2] for a, b in zip(stamps, stamps[1:]) if b[0] == a[0] and b[1] == a[1] + 1]
    return {"iterations_logged": len(stamps), "step_gaps": len(gaps),
            "window": [stamps[0][2], stamps[-1][2]] if stamps else None,
            "seconds_per_iteration": round(sum(gaps) / len(gaps), 3) if gaps else None,
            "iterations_per_s": round(len(gaps) / sum(gaps), 3) if gaps and sum(gaps) > 0 else None}


def start_training(srv: LabelServer, request: dict, model: str = MODEL) -> None:
    r = requests.post(f"{srv.url}/train/{model}", json=request, timeout=120)
    r.raise_for_status()
