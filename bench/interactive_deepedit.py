"""The peer of our guided editing: MONAI Label's DeepEdit, trained on the same objects for the same time, clicked the same way.

The peer is MONAI Label's own radiology sample app from the monailabel wheel, served and
trained through its REST API, with the config ``bench/peers/monailabel_deepedit_config.py``:
the stock DeepEdit recipe (DynUNet on the whole image resized to one input size, stock 128^3,
Adam 1e-4, DeepEdit's click simulation) with one class-agnostic label, ``object``. Data and budget are those of
our shipped interactive model (``scripts/train_interactive_model.py``): each training pair is
one object of its images (the odd-numbered AAL regions and the brain of Colin27 with its
skull, the MNI tissues, the 7 labels of the slicerio chest CT, and the synthetic lesion
crops), trained for the wall-clock seconds in our model's card, on this CPU. The stock
trainer validates after every epoch on a few training-kind objects and publishes its best
checkpoint; when the budget is spent the run is stopped (``DELETE /train/``) and the last
published checkpoint is the one measured. At the stock 128^3 one epoch outlasts that budget on
a CPU (a short probe run measures it), so the budget run's input is 64^3 by default.

Clicks follow ``bench/interactive.py``'s protocol (``medseg.pipeline.click_simulation``): the
first at the object's deepest point, each next one at the deepest point of the largest
error, up to 20, sent DeepEdit style (``{"object": [...], "background": [...]}``) to
``POST /infer/deepedit_bench``, timed as the caller sees it. Images are written with their
voxel axes as RAS (a diagonal affine), so DeepEdit's own reorientation to RAS leaves the
click indices as they are. Measured on the held-out AAL regions 2, 26, 50, 74, 98 (no weights
saw them) and the chest CT's 7 labels (of the training kind);
``bench/results/interactive_cpu.json`` has our model on the same objects.

    python bench/interactive_deepedit.py [--train-seconds N] [--spatial-size 64,64,64] [--probe-seconds 240]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from common import start_run, update_readme_table  # noqa: E402
from interactive import (AAL_HELD_OUT, THRESHOLDS, chest_ct_objects, click_object,  # noqa: E402
                         colin27_objects, summarize)
from monailabel_segmentation import SampleAppServer, prepare_app, start_training, train_seconds  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "deepedit_bench"
CONFIG = REPO / "bench" / "peers" / "monailabel_deepedit_config.py"
CARD = REPO / "apps" / "medseg" / "model" / "interactive" / "model_card.json"
VAL_OBJECTS = 3  # training-kind objects the stock trainer validates on after each epoch


def save_ras(path: Path, array: np.ndarray, spacing) -> None:
    """``array`` as NIfTI with its voxel axes as RAS: DeepEdit's Orientationd("RAS") then changes nothing."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, np.diag([*map(float, spacing), 1.0])), str(path))


def training_pairs(folder: Path) -> list[dict]:
    """One (image, binary object) pair per object our interactive model trained on."""
    sys.path.insert(0, str(REPO / "scripts"))
    from train_interactive_model import object_images

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    pairs = []
    for obj in object_images(n_lesion_crops=8):
        image_path = folder / "images" / f"{obj.name}.nii.gz"
        save_ras(image_path, obj.image.astype(np.float32), obj.spacing_mm)
        values = obj.objects or [int(v) for v in np.unique(obj.labels) if v > 0]
        for v in values:
            label_path = folder / "labels" / f"{obj.name}_{v}.nii.gz"
            save_ras(label_path, (obj.labels == v).astype(np.uint8), obj.spacing_mm)
            pairs.append({"image": str(image_path), "label": str(label_path)})
    return pairs


def train_request(pairs: list[dict], work: Path, device: str) -> dict:
    rng = np.random.default_rng(0)
    order = rng.permutation(len(pairs))
    val = [pairs[i] for i in order[:VAL_OBJECTS]]
    (work / "train_ds.json").write_text(json.dumps(pairs, indent=1))
    (work / "val_ds.json").write_text(json.dumps(val, indent=1))
    # Epochs are many; the budget, not the epoch count, ends the run.
    return {"max_epochs": 1000, "train_batch_size": 1, "val_batch_size": 1, "train_ds": str(work / "train_ds.json"),
            "val_ds": str(work / "val_ds.json"), "dataset": "Dataset", "dataloader": "DataLoader",
            "tracking": "None", "pretrained": False, "multi_gpu": False, "device": device}


def published(app_dir: Path) -> Path:
    return app_dir / "model" / f"{MODEL}_dynunet.pt"


def train_for(srv: SampleAppServer, app_dir: Path, request: dict, budget_s: float) -> dict:
    """Train until ``budget_s`` seconds have passed (or the run ends), then stop it; what was published by then."""
    started = time.time()
    start_training(srv, request, MODEL)
    while time.time() - started < budget_s:
        time.sleep(10)
        if requests.get(f"{srv.url}/train/", timeout=30).json().get("status") != "RUNNING":
            break
    requests.delete(f"{srv.url}/train/", timeout=60)
    model = published(app_dir)
    return {"seconds": round(time.time() - started, 1), "published": model.exists(),
            "last_published_after_s": round(model.stat().st_mtime - started, 1) if model.exists() else None}


def probe_stock_size(app_dir: Path, studies: Path, conf: dict, request: dict, work: Path, seconds: float) -> dict:
    """Seconds per training iteration of the stock 128^3 input on this machine, from a short run.

    At the stock size one epoch over all the objects outlasts our whole budget on a CPU, so
    the stock trainer would never validate nor publish; the budget run uses a smaller input.
    """
    log = work / "server_stock_size.log"
    with SampleAppServer(app_dir, studies, {**conf, "bench_spatial_size": "[128,128,128]"}, log) as srv:
        trained = train_for(srv, app_dir, request, seconds)
    published(app_dir).unlink(missing_ok=True)  # a 128^3 checkpoint must not pass for the budget run's
    speed = train_seconds(log)
    per_epoch = len(json.loads(Path(request["train_ds"]).read_text()))
    s_per_it = speed.get("seconds_per_iteration")
    return {"spatial_size": [128, 128, 128], "trained_s": trained["seconds"], **speed, "iterations_per_epoch": per_epoch,
            "epoch_minutes": round(per_epoch * s_per_it / 60, 1) if s_per_it else None}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-seconds", type=float, default=None, help="default: our interactive model's training time")
    ap.add_argument("--spatial-size", default="64,64,64",
                    help="DeepEdit's input size for the budget run (stock 128,128,128: see --probe-seconds)")
    ap.add_argument("--probe-seconds", type=float, default=240,
                    help="first train the stock 128^3 input this long, to measure its seconds per iteration (0: skip)")
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--objects", type=int, default=None, help="train on the first N objects only (a smoke run)")
    ap.add_argument("--work", default=str(REPO / "work" / "bench-interactive-deepedit"))
    ap.add_argument("--table-only", action="store_true",
                    help="no run: rewrite the table from the committed DeepEdit results and bench/interactive.py's "
                         "committed ones, after a rerun of ours (DeepEdit's rows stay as measured)")
    args = ap.parse_args(argv)
    if args.table_only:
        committed = json.loads((REPO / "bench" / "results" / "interactive_deepedit_cpu.json").read_text())
        clicks = len(next(iter(committed["groups"].values()))["summary"]["mean_dice_per_click"])
        write_table(committed, committed["machine"], clicks)
        return

    import nibabel as nib
    import torch

    ours = json.loads(CARD.read_text())["training"]
    budget_s = args.train_seconds or float(ours["seconds"])
    spatial = [int(x) for x in args.spatial_size.split(",")]
    work = Path(args.work)
    info, studies = start_run(work)
    cases = {}
    originals = work / "originals"
    originals.mkdir()
    for image_id, objects_of in (("colin27", colin27_objects), ("chest_ct", chest_ct_objects)):
        cases[image_id] = objects_of(originals)  # the objects and truths bench/interactive.py clicks on
        array = np.asarray(nib.load(str(originals / f"{image_id}.nii.gz")).dataobj)
        save_ras(studies / f"{image_id}.nii.gz", array.astype(np.float32), cases[image_id][1])
    pairs = training_pairs(work / "train")[:args.objects]
    app_dir = prepare_app(work / "radiology", MODEL, CONFIG)
    conf = {"models": MODEL, "use_pretrained_model": "false", "scribbles": "false", "sam2": "false",
            "bench_spatial_size": json.dumps(spatial, separators=(",", ":"))}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    request = train_request(pairs, work, device)
    probe = probe_stock_size(app_dir, studies, conf, request, work, args.probe_seconds) if args.probe_seconds else None
    result = {"machine": info, "peer": "MONAI Label radiology sample app, DeepEdit (DynUNet), class-agnostic config",
              "spatial_size": spatial, "data": __doc__.split("\n\n")[1].replace("\n", " "),
              "training_objects": len(pairs), "our_training": {k: ours[k] for k in ("iterations", "seconds")},
              "budget_s": budget_s, "stock_size_probe": probe}
    with SampleAppServer(app_dir, studies, conf, work / "server.log") as srv:
        result["training"] = train_for(srv, app_dir, request, budget_s)
        result["training"].update(train_seconds(work / "server.log"))
        if not result["training"]["published"]:
            raise SystemExit(f"DeepEdit published no checkpoint within {budget_s:.0f} s: {result['training']}")
        groups = {}
        for title, image_id, regions in (("colin27 held-out AAL regions, clicks", "colin27", AAL_HELD_OUT),
                                         ("chest CT labels, clicks", "chest_ct", None)):
            objects, spacing = cases[image_id]
            runs = {name: click_object(srv.url, image_id, truth, spacing, args.max_clicks, task=MODEL,
                                       foreground_key="object", extra={"device": device})
                    for name, truth in objects.items()
                    if (regions is None) or (name.startswith("aal_") and int(name[4:]) in regions)}
            groups[title] = {"image": image_id, "method": "deepedit", "runs": runs,
                             "summary": summarize(runs, args.max_clicks)}
            print(title, json.dumps(groups[title]["summary"]), flush=True)
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    result["groups"] = groups
    out = REPO / "bench" / "results" / f"interactive_deepedit_{info['device']}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    write_table(result, info, args.max_clicks)


def write_table(result: dict, info: dict, max_clicks: int) -> None:
    """Ours (from bench/results/interactive_cpu.json) and DeepEdit's, per group, in one table."""
    ours_run = json.loads((REPO / "bench" / "results" / f"interactive_{info['device']}.json").read_text())
    ours = ours_run["groups"]
    rows = []
    for title, g in result["groups"].items():
        for method, summary in (("DeepEdit (peer)", g["summary"]), ("learned (ours)", ours[f"{title} (learned)"]["summary"]),
                                ("seeded (ours)", ours[f"{title} (seeded)"]["summary"])):
            rows.append([title.rsplit(",", 1)[0], method, str(summary["objects"]),
                         *(f"{summary[f'noc@{int(t * 100)}']:.1f}" for t in THRESHOLDS),
                         f"{summary['mean_dice_per_click'][0]:.2f}", f"{summary['mean_dice_per_click'][-1]:.2f}",
                         f"{summary['median_s_per_click']:.2f}"])
    t = result["training"]
    caption = (f"MONAI Label's DeepEdit against our guided editing, generated by `bench/interactive_deepedit.py` on "
               f"{info['date']} ({info['cpu']}, {info['threads']} threads, load {info['load_average_before']}). DeepEdit "
               f"trained from scratch on the same {result['training_objects']} objects for {t['seconds']:.0f} s "
               f"(input {result['spatial_size']}, {t.get('seconds_per_iteration')} s per iteration); our rows are "
               f"from `bench/interactive.py`'s committed run of {ours_run['machine']['date']}. NoC: clicks to reach "
               "the Dice (20 when never).")
    header = ["objects", "method", "n", "NoC@80", "NoC@85", "NoC@90", "Dice after 1", f"Dice after {max_clicks}",
              "median s per click"]
    for readme in (REPO / "bench" / "README.md", REPO / "docs" / "interactive.md"):
        update_readme_table(readme, f"interactive_deepedit_{info['device']}", header, rows, caption)


if __name__ == "__main__":
    main()
