"""The whole loop, measured: interactions per image while MedSeg learns a structure it has never seen.

A simulated annotator labels a pool of real images through a real server and only the REST calls
a client makes (the Slicer module and the browser page make the same ones):

1. the next image (``POST /activelearning/<strategy>``);
2. the current model's prediction (``POST /infer/<model>``, stored with the tag ``original``), or
   nothing before the first training;
3. corrections until Dice >= ``--target-dice`` against the expert label, or ``--max-interactions``,
   each one a ``POST /infer/interactive`` with the prediction as the prior (``prior_tag``) and the
   server's default method: clicks at the deepest point of the largest error
   (``medseg.pipeline.click_simulation``), after a 3D box around the object (the CVPR 2025
   challenge's first prompt) where the annotator starts one (``--annotator``). An image whose
   prediction already reaches the target costs nothing;
4. submit: the expert label as ``final`` with ``effort`` ({interactions, seconds}). The annotator
   finishes what the clicks did not reach by hand, as a clinician would with the brush; that
   is not counted, and the Dice after every interaction says how far they got;
5. every ``--retrain-every`` labels, ``POST /train/<model>`` with a fixed budget, fine-tuned from
   the current weights, published by the server's own rule (not worse on its validation image).

The annotator (``--annotator``):
- ``corrects_prediction`` (the default): starts from the better of the prediction and a box. It
  corrects the prediction with clicks, as a clinician corrects what the model proposes, unless a
  box alone does better on this image (the ``interactive_only`` arm's first interaction, measured
  in the same run; without that arm, unless the prediction's Dice is below ``BOX_BELOW_DICE``):
  then it clears the prediction and draws the box, as on an image without one (a box drawn over
  the prediction would keep its false pieces outside the box). A clinician sees whether a
  prediction is nearly right; this annotator knows, which flatters the loop a little.
- ``box_first``: a box first on every image, whatever the prediction. The box segments the object
  inside it afresh, so a prediction saves interactions only where it reaches the target by itself.

The model (``--model``): ``unet2d`` by default. On this pool at 2 mm and this CPU budget, ``unet3d``
learnt the whole tumour poorly (the validation Dice per retraining is in every results file), and
its predictions never beat the box.

Arms, run on the same pool: ``interactive_only`` (no model, no retraining: the cost of guided
editing alone; it does not depend on the order, so each image is corrected once and the seeds
only reorder them), ``random`` (the loop, images in random order), and the uncertainty strategy
``epistemic`` (the loop; the scores for the current weights are computed before each request).

Pools (say which one every number comes from):
- ``brats_whole_tumour``: the 10 BraTS 2018 gliomas in ``../shared/data/brats`` (never
  committed), whole tumour on FLAIR; ``brats_tumour_core``: tumour core on T1ce. Images cropped
  to the head and resampled to ``--spacing`` mm so that a CPU trains in minutes;
- ``colin27_putamen``: Colin27 (real T1, with skull) under random rigid-plus-scale warps with
  noise, the right putamen (AAL 74);
- ``chest_lung``: the slicerio chest CT under random warps with noise, the right lung.

The learned interactive model trained on 5 of the BraTS cases (``medseg.data.brats.TRAIN_CASES``)
and on the chest CT; those images' corrections are flagged ``interactive_model_trained_on``.

Writes ``bench/results/loop_<pool>.json`` and ``.png``, and the table in bench/README.md and
docs/active-learning.md.

    python bench/loop.py                          # BraTS whole tumour, 3 seeds (under an hour here)
    python bench/loop.py --quick                  # a smoke test: 3 images, 1 seed, 2 arms
    python bench/loop.py --pool colin27_putamen --arms interactive_only,random --seeds 0,1
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from common import start_run, update_readme_table  # noqa: E402
from server import BenchServer  # noqa: E402

RESULTS = REPO / "bench" / "results"
DEFAULT_MODEL = "unet2d"
ANNOTATORS = ("corrects_prediction", "box_first")
BOX_BELOW_DICE = 0.5  # corrects_prediction without a measured box: a prediction below this gets a box first
CLIENT = "simulated-annotator"
ARMS = ("interactive_only", "random", "epistemic")
TARGET_RATIO = 0.5  # the target: the tenth image costs at most half the interactions of the first
LOWERING_DICE = 0.05  # an interaction that lowers the Dice by more than this undoes work
THRESHOLDS = (0.80, 0.85)  # also read off each trajectory: where 0.90 is out of the clicks' reach, these still move


def dice(a: np.ndarray | None, b: np.ndarray) -> float:
    if a is None:
        return 0.0
    total = int(a.sum() + b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 1.0


# ---------------------------------------------------------------- pools


@dataclass
class PoolImage:
    name: str
    image: Path  # written into the studies folder
    truth: Path  # the expert label, outside the datastore
    spacing_mm: tuple
    interactive_model_trained_on: bool = False


def _write(path: Path, array: np.ndarray, affine: np.ndarray, dtype) -> None:
    from medseg.data.pseudo_subjects import write_nifti

    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, array, affine, dtype)


def _crop_resample(image: np.ndarray, truth: np.ndarray, affine: np.ndarray, spacing_mm: float, margin_vox: int = 4):
    """The head's bounding box (non-zero voxels) on an isotropic grid: image linear, label nearest."""
    from common import resample_isotropic_arrays

    nz = np.argwhere(image > 0)
    lo, hi = np.maximum(nz.min(0) - margin_vox, 0), np.minimum(nz.max(0) + margin_vox + 1, image.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    affine = affine.copy()
    affine[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return resample_isotropic_arrays(image[box], truth[box], affine, spacing_mm)


def brats_pool(structure: str, spacing_mm: float, out: Path) -> list[PoolImage]:
    import nibabel as nib

    from medseg.data import brats

    if not brats.available():
        sys.exit(brats.why_absent())
    sequence, values = brats.OBJECTS[structure]
    pool = []
    for case in sorted(brats.TRAIN_CASES + brats.HELD_OUT_CASES):
        item = PoolImage(case, out / "images" / f"{case}.nii.gz", out / "truth" / f"{case}.nii.gz",
                         (spacing_mm,) * 3, case in brats.TRAIN_CASES)
        if not (item.image.exists() and item.truth.exists()):
            img = nib.load(str(brats.BRATS_DIR / case / f"{case}_{sequence}.nii.gz"))
            seg = np.asarray(nib.load(str(brats.BRATS_DIR / case / f"{case}_seg.nii.gz")).dataobj)
            image, truth, affine = _crop_resample(np.asarray(img.dataobj, np.float32), np.isin(seg, values),
                                                  img.affine, spacing_mm)
            _write(item.image, image, affine, np.float32)
            _write(item.truth, truth, affine, np.uint8)
        pool.append(item)
    return pool


def warped_pool(kind: str, n: int, spacing_mm: float, out: Path) -> list[PoolImage]:
    """Warped, noised copies of one real scan and one of its structures (one person: see the docs)."""
    import nibabel as nib

    from chest_ct import warped_copy

    if kind == "colin27_putamen":
        colin = REPO / "sample-data" / "colin27"
        img = nib.load(str(colin / "ch2.nii.gz"))
        structure = np.asarray(nib.load(str(colin / "aal.nii.gz")).dataobj) == 74
        array, structure, affine = _crop_resample(np.asarray(img.dataobj, np.float32), structure, img.affine,
                                                  spacing_mm)
        noise_sd, trained = (4, 8), False
    else:
        from importlib import resources

        from chest_ct import LABELS
        from medseg.imageio import read_volume
        from medseg.nrrd_files import read_segmentation_as_label

        data = resources.files("slicerio") / "data"
        source = read_volume(str(data / "CTChest4.nrrd"))
        labels = read_segmentation_as_label(str(data / "Segmentation.seg.nrrd"), LABELS, source, "the segmentation")
        structure, noise_sd, trained = labels.array == LABELS["right_lung"], (20, 40), True
        array, affine = source.array, source.affine
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    if kind == "colin27_putamen":
        source = SimpleNamespace(array=array, spacing_mm=spacing, shape=array.shape)
    pool = []
    for index in range(n):
        name = f"{kind}_{index:02d}"
        item = PoolImage(name, out / "images" / f"{name}.nii.gz", out / "truth" / f"{name}.nii.gz", spacing,
                         trained)
        if not (item.image.exists() and item.truth.exists()):
            image, truth = warped_copy(source, structure.astype(np.uint8), seed=7000 + index, noise_sd=noise_sd)
            _write(item.image, image, affine, np.float32)
            _write(item.truth, truth, affine, np.uint8)
        pool.append(item)
    return pool


POOLS = {  # name: (label name, modality, how to build it)
    "brats_whole_tumour": ("whole_tumour", "MR", lambda a, out: brats_pool("whole_tumour", a.spacing, out)),
    "brats_tumour_core": ("tumour_core", "MR", lambda a, out: brats_pool("tumour_core", a.spacing, out)),
    "colin27_putamen": ("putamen", "MR", lambda a, out: warped_pool("colin27_putamen", a.pool_size, a.spacing, out)),
    "chest_lung": ("right_lung", "CT", lambda a, out: warped_pool("chest_lung", a.pool_size, a.spacing, out)),
}


# ---------------------------------------------------------------- the annotator


def read_truth(item: PoolImage) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(item.truth)).dataobj) > 0


def predict(url: str, model: str, image_id: str, label_value: int = 1) -> tuple[np.ndarray, float]:
    """The served model's prediction, stored as the ``original`` label as clients store it."""
    from tests.e2e.helpers import parse_multipart_label

    t = time.perf_counter()
    r = requests.post(f"{url}/infer/{model}", params={"image": image_id},
                      data={"params": json.dumps({"save_label": True, "label_tag": "original"})}, timeout=1800)
    r.raise_for_status()
    label, _ = parse_multipart_label(r)
    return np.asarray(label.dataobj) == label_value, time.perf_counter() - t


def correct(url: str, image_id: str, truth: np.ndarray, spacing_mm, prediction: np.ndarray | None, label: str,
            args, box_alone_dice: float | None = None) -> dict:
    """The annotator's box and clicks until the target Dice or the cap; Dice and seconds after each."""
    from interactive import timed_answer
    from medseg.pipeline.click_simulation import next_click

    current, dices, seconds = prediction, [], []
    if dice(current, truth) >= args.target_dice:
        return {"interactions": 0, "dice_per_interaction": [], "seconds_per_interaction": [], "reached_target": True,
                "started_with_box": False, **{f"interactions_to_{int(t * 100)}": 0 for t in THRESHOLDS}}
    params = {"foreground": [], "background": [], "label": label, "edit_id": uuid.uuid4().hex}
    with_box = starts_with_box(args.annotator, dice(prediction, truth) if prediction is not None else None,
                               box_alone_dice)
    if with_box:
        nz = np.argwhere(truth)
        params["box"] = [nz.min(0).tolist(), nz.max(0).tolist()]
    if args.method:
        params["method"] = args.method
    # corrects_prediction: a box alone does better, so the prediction is cleared, not boxed over (a
    # box over it keeps the prediction's false pieces outside the box).
    discards = with_box and args.annotator == "corrects_prediction"
    if prediction is not None and prediction.any() and not discards:
        params["prior_tag"] = "original"
    for n in range(args.max_interactions):
        if n > 0 or not with_box:
            click = next_click(truth, current, spacing_mm)
            if click is None:
                break
            params[click[0]].append(click[1])
        current, took_s = timed_answer(url, "interactive", image_id, params, timeout_s=600)
        seconds.append(round(took_s, 3))
        dices.append(round(dice(current, truth), 4))
        if dices[-1] >= args.target_dice:
            break
    return {"interactions": len(dices), "dice_per_interaction": dices, "seconds_per_interaction": seconds,
            "reached_target": bool(dices) and dices[-1] >= args.target_dice, "started_with_box": with_box,
            **{f"interactions_to_{int(t * 100)}": interactions_to(dice(prediction, truth), dices, t, args.max_interactions)
               for t in THRESHOLDS}}


def starts_with_box(annotator: str, prediction_dice: float | None, box_alone_dice: float | None = None) -> bool:
    """Whether the annotator's first interaction is a box (see ``--annotator``)."""
    if annotator == "box_first" or prediction_dice is None:
        return True
    return prediction_dice < (BOX_BELOW_DICE if box_alone_dice is None else box_alone_dice)


def box_alone(interactive_only_runs: dict | None) -> dict[str, float]:
    """Per image, the Dice of a box alone (the ``interactive_only`` arm's first interaction)."""
    rows = next(iter((interactive_only_runs or {}).values()), [])
    return {r["image"]: r["dice_per_interaction"][0] for r in rows if r["dice_per_interaction"]}


def interactions_to(dice_before: float, dices: list[float], threshold: float, cap: int) -> int:
    """Interactions until the Dice first reaches ``threshold`` (0 when the prediction does; ``cap`` when never)."""
    if dice_before >= threshold:
        return 0
    return next((n for n, d in enumerate(dices, start=1) if d >= threshold), cap)


def submit(url: str, image_id: str, truth_path: Path, interactions: int, seconds: float) -> None:
    with open(truth_path, "rb") as f:
        r = requests.put(f"{url}/datastore/label", params={"image": image_id, "tag": "final"},
                         files={"label": (f"{image_id}.nii.gz", f)},
                         data={"params": json.dumps({"client_id": CLIENT, "effort": {
                             "interactions": interactions, "seconds": round(seconds, 3)}})}, timeout=300)
    r.raise_for_status()


def train(srv: BenchServer, model: str, iterations: int, seed: int) -> dict:
    t0 = time.time()
    r = requests.post(f"{srv.url}/train/{model}", json={"max_iterations": iterations, "seed": seed}, timeout=60)
    r.raise_for_status()
    status = srv.wait_for("train")
    if status.get("status") != "DONE":
        raise RuntimeError(f"training failed: {json.dumps(status)[-2000:]}")
    stats = requests.get(f"{srv.url}/info/", timeout=30).json()["train_stats"][model]
    return {"train_s": round(time.time() - t0, 1), "published": stats.get("published"),
            "trained_version": stats.get("version"), "val_dice": stats.get("val_dice_per_label"),
            "publish_reason": (stats.get("val_comparison") or {}).get("reason")}


def next_image(srv: BenchServer, strategy: str, trained: bool) -> tuple[str, dict]:
    """The strategy's answer; an uncertainty strategy's scores are computed for the current weights first."""
    timing = {}
    if strategy == "epistemic" and trained:
        t0 = time.time()
        while True:  # 429 while a scoring run the server started by itself (Dice, after a submit) is on
            r = requests.post(f"{srv.url}/scoring/{strategy}", json={}, timeout=60)
            if r.status_code != 429 or time.time() - t0 > 600:
                break
            time.sleep(2)
        r.raise_for_status()
        status = srv.wait_for("scoring")
        if status.get("status") != "DONE":
            raise RuntimeError(f"scoring failed: {json.dumps(status)[-2000:]}")
        timing["scoring_s"] = round(time.time() - t0, 1)
    r = requests.post(f"{srv.url}/activelearning/{strategy}", json={"client_id": CLIENT}, timeout=60)
    r.raise_for_status()
    answer = r.json()
    if not answer.get("id"):
        raise RuntimeError(f"/activelearning/{strategy} answered no image: {answer}")
    return answer["id"], timing


# ---------------------------------------------------------------- runs


def server_conf(label: str, modality: str, model: str) -> dict:
    return {"models": model, "shipped_weights": "false", "labels": f"{label}=1", "modality": modality,
            "al_auto_scoring": "false", "al_model": model, "al_passes": "3"}


def studies_for(pool: list[PoolImage], run_dir: Path) -> Path:
    shutil.rmtree(run_dir, ignore_errors=True)
    studies = run_dir / "studies"
    studies.mkdir(parents=True)
    for item in pool:
        os.symlink(item.image, studies / item.image.name)
    return studies


def interactive_only(pool: list[PoolImage], label: str, modality: str, seeds: list[int], args, work: Path) -> dict:
    """Guided editing alone: every image corrected once from nothing; each seed is an order of them."""
    by_name = {p.name: p for p in pool}
    costs = {}
    with BenchServer(studies_for(pool, work / "interactive_only"), server_conf(label, modality, args.model),
                     work / "interactive_only" / "server.log") as srv:
        for item in pool:
            costs[item.name] = correct(srv.url, item.name, read_truth(item), item.spacing_mm, None, label, args)
            costs[item.name].update(dice_before=0.0, server_s=round(sum(costs[item.name]["seconds_per_interaction"]), 3))
            print(f"interactive_only {item.name}: {costs[item.name]['interactions']} interactions", flush=True)
    runs = {}
    for seed in seeds:
        order = list(np.random.default_rng(seed).permutation(sorted(by_name)))
        runs[f"seed{seed}"] = [{"n": n, "image": name, **_flags(by_name[name]), **costs[name]}
                               for n, name in enumerate(order, start=1)]
    return runs


def _flags(item: PoolImage) -> dict:
    return {"interactive_model_trained_on": item.interactive_model_trained_on}


def loop(pool: list[PoolImage], label: str, modality: str, strategy: str, seed: int, args, work: Path,
         box_dice: dict[str, float]) -> list[dict]:
    by_name = {p.name: p for p in pool}
    run_dir = work / f"{strategy}_seed{seed}"
    rows, trainings = [], 0
    with BenchServer(studies_for(pool, run_dir), server_conf(label, modality, args.model), run_dir / "server.log") as srv:
        for n in range(1, min(args.images, len(pool)) + 1):
            image_id, timing = next_image(srv, strategy, trainings > 0)
            item = by_name[image_id]
            truth = read_truth(item)
            prediction, predict_s = (None, 0.0) if trainings == 0 else predict(srv.url, args.model, image_id)
            row = {"n": n, "image": image_id, **_flags(item), **timing, "dice_before": round(dice(prediction, truth), 4),
                   "predict_s": round(predict_s, 3), "model_trainings": trainings}
            row.update(correct(srv.url, image_id, truth, item.spacing_mm, prediction, label, args,
                               box_dice.get(image_id)))
            row["server_s"] = round(predict_s + sum(row["seconds_per_interaction"]), 3)
            submit(srv.url, image_id, item.truth, row["interactions"], row["server_s"])
            if n % args.retrain_every == 0 and n < min(args.images, len(pool)):
                row.update(train(srv, args.model, args.iterations, seed))
                trainings += 1
            rows.append(row)
            print(f"{strategy} seed {seed} #{n} {image_id}: Dice before {row['dice_before']:.2f}, "
                  f"{row['interactions']} interactions", flush=True)
        row_check = check_effort_report(srv.url, label, rows)
    rows[-1]["effort_report_agrees"] = row_check
    return rows


def check_effort_report(url: str, label: str, rows: list[dict]) -> bool:
    """GET /medseg/effort must list what the annotator submitted, in order."""
    report = requests.get(f"{url}/medseg/effort", timeout=60).json()
    served = [(r["image"], r["interactions"]) for r in report["per_structure"].get(label, [])]
    expected = [(r["image"], r["interactions"]) for r in rows]
    if served != expected:
        raise RuntimeError(f"/medseg/effort disagrees with what was submitted: {served} != {expected}")
    return True


# ---------------------------------------------------------------- report


def summarize(runs_by_arm: dict, images: int) -> dict:
    """Per arm and position in labelling order: median, min and max over seeds."""
    out = {}
    for arm, runs in runs_by_arm.items():
        per_n = {}
        for key in ("interactions", *(f"interactions_to_{int(t * 100)}" for t in THRESHOLDS), "dice_before",
                    "server_s"):
            matrix = np.array([[row[key] for row in rows[:images]] for rows in runs.values()], float)
            per_n[key] = {"median": np.round(np.median(matrix, 0), 3).tolist(),
                          "min": np.round(matrix.min(0), 3).tolist(), "max": np.round(matrix.max(0), 3).tolist()}
        # Costs are all-or-nothing (the box finishes an image, or the 20-interaction cap is reached), so
        # the running total over the images labelled so far is the steadier curve.
        total = np.cumsum([[row["interactions"] for row in rows[:images]] for rows in runs.values()], axis=1)
        per_n["cumulative_interactions"] = {"median": np.median(total, 0).tolist(), "min": total.min(0).tolist(),
                                            "max": total.max(0).tolist()}
        first, last = per_n["interactions"]["median"][0], per_n["interactions"]["median"][-1]
        out[arm] = {**per_n, "seeds": len(runs), "first_median": first, "last_median": last,
                    "last_over_first": round(last / first, 3) if first else None,
                    # The same images in every arm: totals compare the arms without the order's confound
                    # (a strategy that leaves the easy images for last makes its last image look cheap).
                    **{f"total_to_{int(t * 100)}_median": float(np.median([
                        sum(r[f"interactions_to_{int(t * 100)}"] for r in rows[:images]) for rows in runs.values()]))
                       for t in THRESHOLDS},
                    "total_interactions_median": float(np.median([sum(r["interactions"] for r in rows[:images])
                                                                  for rows in runs.values()])),
                    "images_reaching_target": int(sum(r["reached_target"] for rows in runs.values()
                                                      for r in rows[:images])),
                    "interactions_total": int(sum(r["interactions"] for rows in runs.values() for r in rows[:images])),
                    "interactions_lowering_dice": int(sum(lowering(r) for rows in runs.values() for r in rows[:images])),
                    "images": len(runs) * images}
    return out


def lowering(row: dict, by: float = LOWERING_DICE) -> int:
    """Interactions on an image that lowered its Dice by more than ``by`` (issue 32's rule)."""
    dices = [row["dice_before"], *row["dice_per_interaction"]]
    return sum(after < before - by for before, after in zip(dices, dices[1:]))


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm, s in summary.items():
        n = np.arange(1, len(s["interactions"]["median"]) + 1)
        for ax, key in zip(axes, ("cumulative_interactions", "dice_before")):
            ax.plot(n, s[key]["median"], marker="o", ms=3, label=f"{arm} ({s['seeds']} seeds)")
            ax.fill_between(n, s[key]["min"], s[key]["max"], alpha=0.15)
    axes[0].set_ylabel("interactions so far (median over seeds)")
    axes[1].set_ylabel("Dice of the prediction before any correction")
    for ax in axes:
        ax.set_xlabel("image, in labelling order")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _cell(stat: dict, i: int) -> str:
    return f"{stat['median'][i]:g} [{stat['min'][i]:g}-{stat['max'][i]:g}]"


def write_tables(result: dict, key: str) -> None:
    s, a = result["summary"], result["args"]
    images = len(next(iter(s.values()))["interactions"]["median"])
    rows = []
    for arm, v in s.items():
        rows.append([f"`{arm}`", str(v["seeds"]), _cell(v["interactions"], 0), _cell(v["interactions"], images - 1),
                     f"{v['last_over_first']:.2f}" if v["last_over_first"] is not None else "-",
                     *(f"{_cell(v[f'interactions_to_{int(t * 100)}'], 0)} → "
                       f"{_cell(v[f'interactions_to_{int(t * 100)}'], images - 1)}" for t in THRESHOLDS),
                     " / ".join(f"{v[k]:g}" for k in ("total_interactions_median",
                                                      *(f"total_to_{int(t * 100)}_median" for t in THRESHOLDS))),
                     f"{v['images_reaching_target']}/{v['images']}",
                     f"{v['dice_before']['median'][-1]:.2f}",
                     f"{v['interactions_lowering_dice']}/{v['interactions_total']}", f"{np.median(v['server_s']['median']):.1f}"])
    m = result["machine"]
    caption = (f"Pool `{a['pool']}` ({result['pool_description']}), generated by `bench/loop.py` on {m['date']} "
               f"({m['cpu']}, {m['threads']} threads, load before {m['load_average_before']}, "
               f"{round(result['wall_s'] / 60)} min); target Dice {a['target_dice']}, at most {a['max_interactions']} "
               f"interactions per image, `{a['model']}` retrained every {a['retrain_every']} labels for {a['iterations']} "
               f"iterations, {a['spacing']} mm, annotator `{a['annotator']}`, guided-editing method "
               f"{'`' + a['method'] + '`' if a['method'] else 'the server default'}. Interactions: median over seeds [min-max] for the first and the "
               f"last (number {images}) image in labelling order; the issue's target for last / first is "
               f"{TARGET_RATIO:g} or less.")
    header = ["arm", "seeds", f"interactions to {a['target_dice']}, image 1", f"image {images}", "last / first",
              *(f"to {t}: image 1 → {images}" for t in THRESHOLDS), f"all images, to {a['target_dice']} / {' / '.join(map(str, THRESHOLDS))} (median)", "images reaching target",
              f"Dice before, image {images}", f"interactions lowering Dice > {LOWERING_DICE}",
              "median server s per image"]
    docs = [REPO / "docs" / "active-learning.md"] if key == f"loop_{a['pool']}" else []  # other settings: bench only
    for readme in [REPO / "bench" / "README.md", *docs]:
        update_readme_table(readme, key, header, rows, caption)


def report(result: dict, out: Path) -> None:
    a = result["args"]
    plot(result["summary"], out.with_suffix(".png"),
         f"{a['pool']}: interactions per image as {a['model']} learns it (retrain every {a['retrain_every']}), "
         f"annotator {a['annotator']}")
    write_tables(result, out.stem)


def results_path(args) -> Path:
    """``loop_<pool>.json`` for the default model, annotator and method; a suffix names any other."""
    suffix = "".join(f"_{v}" for v, default in ((args.model, DEFAULT_MODEL), (args.annotator, ANNOTATORS[0]),
                                                (args.method, "")) if v != default)
    return Path(args.out) / f"loop_{args.pool}{suffix}{'_quick' if args.quick else ''}.json"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool", default="brats_whole_tumour", choices=sorted(POOLS))
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--images", type=int, default=10, help="images labelled per run (the pool's size at most)")
    ap.add_argument("--pool-size", type=int, default=10, help="copies in a warped pool")
    ap.add_argument("--retrain-every", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=300, help="training iterations per retraining")
    ap.add_argument("--spacing", type=float, default=2.0,
                    help="mm; the head pools (BraTS, Colin27) are cropped to the head and resampled to it")
    ap.add_argument("--target-dice", type=float, default=0.90)
    ap.add_argument("--max-interactions", type=int, default=20)
    ap.add_argument("--method", default="", help="guided-editing method (empty: the server's default)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="the model that learns the structure")
    ap.add_argument("--annotator", default=ANNOTATORS[0], choices=ANNOTATORS,
                    help="whether the first correction is a box (see the module's docstring)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 images, 1 seed, 20 iterations, 5 interactions")
    ap.add_argument("--work", default=str(REPO / "work" / "bench-loop"))
    ap.add_argument("--out", default=str(RESULTS), help="folder of the results file (tests write elsewhere)")
    ap.add_argument("--report-only", action="store_true", help="run nothing: plot and tabulate the results file")
    ap.add_argument("--resume", action="store_true", help="keep the runs in the results file made with the same options")
    args = ap.parse_args(argv)
    if args.report_only:  # the summary is derived from the runs, so it is recomputed with this version's rules
        out = results_path(args)
        result = json.loads(out.read_text())
        result["summary"] = summarize(result["runs"], min(result["args"]["images"], len(result["images"])))
        out.write_text(json.dumps(result, indent=1))
        return report(result, out)
    if args.quick:
        args.images, args.seeds, args.iterations, args.max_interactions = 3, "0", 20, 5
        args.arms = "interactive_only,random"
    seeds, arms = [int(s) for s in args.seeds.split(",")], args.arms.split(",")
    label, modality, build = POOLS[args.pool]
    work = Path(args.work)
    info, _ = start_run(work / "runs")
    pool = build(args, work / "data" / f"{args.pool}_{args.spacing:g}mm")
    if args.quick:
        pool = pool[:args.images]
    t0 = time.time()
    out = results_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = min(args.images, len(pool))
    runs: dict = {}
    if args.resume and out.exists():  # keep the runs an interrupted benchmark finished with the same settings
        previous = json.loads(out.read_text())
        if {k: v for k, v in previous["args"].items() if k != "resume"} == {k: v for k, v in vars(args).items()
                                                                             if k != "resume"}:
            runs, t0 = previous["runs"], t0 - previous["wall_s"]

    def save() -> dict:  # after every run, so that an interrupted benchmark keeps what it measured
        info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        result = {"machine": info, "args": vars(args), "wall_s": round(time.time() - t0),
                  "pool_description": POOL_DESCRIPTIONS[args.pool], "images": [p.name for p in pool],
                  "summary": summarize(runs, images), "runs": runs}
        tmp = out.with_name(f".{out.name}")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.rename(out)
        return result

    if "interactive_only" in arms and "interactive_only" not in runs:
        runs["interactive_only"] = interactive_only(pool, label, modality, seeds, args, work / "runs")
        save()
    for seed in seeds:  # seed by seed, so that an interrupted run still compares the arms
        for arm in (a for a in arms if a != "interactive_only" and f"seed{seed}" not in runs.get(a, {})):
            runs.setdefault(arm, {})[f"seed{seed}"] = loop(pool, label, modality, arm, seed, args, work / "runs",
                                                           box_alone(runs.get("interactive_only")))
            result = save()
            print(f"{round(time.time() - t0)} s so far", flush=True)
    result = save()
    print(json.dumps(result["summary"], indent=1))
    if not args.quick:
        report(result, out)
    print(f"wrote {out} in {result['wall_s']} s")


POOL_DESCRIPTIONS = {
    "brats_whole_tumour": "10 real BraTS 2018 gliomas, whole tumour on FLAIR, expert labels",
    "brats_tumour_core": "10 real BraTS 2018 gliomas, tumour core on T1ce, expert labels",
    "colin27_putamen": "warped, noised copies of one real T1 (Colin27), the right putamen of the AAL atlas",
    "chest_lung": "warped, noised copies of one real chest CT (slicerio), the right lung",
}

if __name__ == "__main__":
    main()
