"""Guided editing, clicked the standard way, through a real server: Dice per click, NoC, seconds per click.

Protocol (as in the interactive-segmentation literature and the CVPR 2025 challenge): the
first click at the object's deepest point (or a box around it first), each next click at
the deepest point of the largest error (foreground where missed, background where wrong),
up to 20 interactions (``medseg.pipeline.click_simulation``). Every request is a REST call to
``POST /infer/interactive`` with all clicks so far, timed as the caller sees it (answer
decoded). NoC@t counts the clicks until Dice >= t; a case that never gets there counts 20.

Both methods run on every group: ``learned`` (the shipped class-agnostic interactive model)
and ``seeded`` (learning-free). Data:
* held-out structures: AAL regions 2, 26, 50, 74, 98 of Colin27 with its skull
  (``sample-data/colin27/ch2``, a real 1 mm T1). The learned model trained on the odd-numbered
  regions only, so no weights ever saw these;
* structures of the training kind (the learned model trained on them, on this same scan):
  AAL regions 1, 25, 49, 73, 97, the brain (``ch2bet``), and the 7 labels of the slicerio
  chest CT (128x128x34 at 3x3x10 mm);
* a synthetic clinical-size CT (512x512x60 at 0.6x0.6x5 mm, ``bench/clinical_ct.py``): 4 organs
  no model trained on, for the time per click at that size;
* automatic prediction plus clicks: a held-out synthetic head (pseudo-subject seed 1000), the
  shipped ``unet3d``'s segmentation stored as the prior (``prior_tag``), its white matter
  corrected by clicks.

    python bench/interactive.py [--max-clicks 20]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from chest_ct import LABELS as CHEST_LABELS  # noqa: E402
from clinical_ct import synthetic_ct  # noqa: E402
from common import start_run, update_readme_table  # noqa: E402
from monitor import ProcessTreeMonitor  # noqa: E402
from server import BenchServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
COLIN = REPO / "sample-data" / "colin27"
AAL_TRAINED = list(range(1, 117, 24))
AAL_HELD_OUT = list(range(2, 117, 24))
METHODS = ("learned", "seeded")
TARGET_NOC85_HELD_OUT = 5
THRESHOLDS = (0.80, 0.85, 0.90)
TARGET_S = {"colin27": 1.0, "clinical_ct": 1.5}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 1.0


def colin27_objects(studies: Path) -> tuple[dict, tuple]:
    """Colin27 with its skull copied into ``studies``; (its objects {name: mask}, spacing)."""
    from medseg.imageio import read_volume

    shutil.copyfile(COLIN / "ch2.nii.gz", studies / "colin27.nii.gz")
    colin = read_volume(str(studies / "colin27.nii.gz"))
    aal = np.rint(read_volume(str(COLIN / "aal.nii.gz")).array).astype(int)
    objects = {"brain": read_volume(str(COLIN / "ch2bet.nii.gz")).array > 0}
    objects.update({f"aal_{r}": aal == r for r in AAL_TRAINED + AAL_HELD_OUT})
    return objects, colin.spacing_mm


def chest_ct_objects(studies: Path) -> tuple[dict, tuple]:
    """The slicerio chest CT written into ``studies``; (its 7 labels {name: mask}, spacing)."""
    import nibabel as nib

    from medseg.imageio import read_volume
    from medseg.nrrd_files import read_segmentation_as_label

    data = resources.files("slicerio") / "data"
    ct = read_volume(str(data / "CTChest4.nrrd"))
    truth = read_segmentation_as_label(str(data / "Segmentation.seg.nrrd"), CHEST_LABELS, ct, "the segmentation").array
    nib.save(nib.Nifti1Image(ct.array.astype(np.int16), ct.affine), str(studies / "chest_ct.nii.gz"))
    return {name: truth == v for name, v in CHEST_LABELS.items()}, ct.spacing_mm


def prepare(studies: Path) -> dict:
    """Images in the studies folder; {image id: (affine-free truth objects {name: mask}, spacing)}."""
    import nibabel as nib

    from medseg.imageio import read_volume

    cases = {"colin27": colin27_objects(studies), "chest_ct": chest_ct_objects(studies)}
    from medseg.data.pseudo_subjects import SEED_HELDOUT, generate

    generate(studies.parent / "heads", 1, seed=SEED_HELDOUT, prefix="heldout_head", kind="head", workers=1)
    shutil.copyfile(studies.parent / "heads" / "images" / "heldout_head_000.nii.gz", studies / "head.nii.gz")
    head = read_volume(str(studies / "head.nii.gz"))
    head_label = np.rint(read_volume(str(studies.parent / "heads" / "labels" / "heldout_head_000.nii.gz")).array)
    cases["head"] = ({"white_matter": head_label == 2}, head.spacing_mm)

    spacing = (0.6, 0.6, 5.0)
    image, labels = synthetic_ct((512, 512, 60), spacing, 4, seed=1)
    nib.save(nib.Nifti1Image(image, np.diag([*spacing, 1.0])), str(studies / "clinical_ct.nii.gz"))
    cases["clinical_ct"] = ({f"organ_{v}": labels == v for v in range(1, 5) if (labels == v).any()}, spacing)
    return cases


def click_object(url: str, image_id: str, truth: np.ndarray, spacing, max_clicks: int, box_first: bool = False,
                 extra: dict | None = None, start: np.ndarray | None = None, task: str = "interactive",
                 foreground_key: str = "foreground") -> dict:
    """Dice and seconds after each interaction on one object, through ``POST /infer/<task>``.

    ``foreground_key``: the params key of the foreground clicks (a label name, DeepEdit style);
    the answer's value 1 is the object.
    """
    from medseg.pipeline.click_simulation import next_click

    params = {foreground_key: [], "background": [], **(extra or {})}
    keys = {"foreground": foreground_key, "background": "background"}
    if box_first:
        nz = np.argwhere(truth)
        params["box"] = [nz.min(0).tolist(), nz.max(0).tolist()]
    predicted, dices, seconds = start, [], []
    for n in range(max_clicks):
        if not (box_first and n == 0):
            click = next_click(truth, predicted, spacing)
            if click is None:  # perfect: it stays perfect
                dices += [1.0] * (max_clicks - n)
                break
            params[keys[click[0]]].append(click[1])
        predicted, took_s = timed_answer(url, task, image_id, params, timeout_s=120)
        seconds.append(took_s)
        dices.append(round(dice(predicted, truth), 4))
    return {"dice_per_click": dices, "seconds_per_click": [round(s, 3) for s in seconds]}


def timed_answer(url: str, task: str, image_id: str, params: dict, timeout_s: float = 600) -> tuple[np.ndarray, float]:
    """(the object of one guided-editing answer, seconds as the caller waited, answer decoded)."""
    sys.path.insert(0, str(REPO))
    from tests.e2e.helpers import parse_multipart_label

    t = time.perf_counter()
    r = requests.post(f"{url}/infer/{task}", params={"image": image_id}, data={"params": json.dumps(params)},
                      timeout=timeout_s)
    r.raise_for_status()
    label, _ = parse_multipart_label(r)
    return np.asarray(label.dataobj) == 1, time.perf_counter() - t


def summarize(runs: dict, max_clicks: int) -> dict:
    from medseg.pipeline.click_simulation import clicks_to_reach

    noc = {f"noc@{int(t * 100)}": round(float(np.mean([clicks_to_reach(r["dice_per_click"], t, max_clicks)
                                                          for r in runs.values()])), 2) for t in THRESHOLDS}
    curve = np.mean([r["dice_per_click"] for r in runs.values()], axis=0)
    seconds = [s for r in runs.values() for s in r["seconds_per_click"]]
    return {**noc, "mean_dice_per_click": [round(float(d), 4) for d in curve],
            "median_s_per_click": round(float(np.median(seconds)), 3), "objects": len(runs)}


def plot(groups: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, g in groups.items():
        curve = g["summary"]["mean_dice_per_click"]
        ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3, label=name,
                linestyle="-" if g.get("method") == "learned" else "--")
    ax.set_xlabel("interactions")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Guided editing, simulated clicks: learned (solid) and learning-free (dashed)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-clicks", type=int, default=20)
    ap.add_argument("--work", default=str(REPO / "work" / "bench-interactive"))
    args = ap.parse_args(argv)

    work = Path(args.work)
    info, studies = start_run(work)
    cases = prepare(studies)
    groups = {}
    with BenchServer(studies, {"models": "unet3d", "al_auto_scoring": "false"}, work / "server.log") as srv:
        with ProcessTreeMonitor(srv.proc.pid) as memory:
            plan = [("colin27 held-out AAL regions, clicks", "colin27", lambda n: _aal(n, AAL_HELD_OUT), False),
                    ("colin27 AAL regions of the training kind, clicks", "colin27", lambda n: _aal(n, AAL_TRAINED),
                     False),
                    ("colin27 brain, clicks", "colin27", lambda n: n == "brain", False),
                    ("chest CT labels, clicks", "chest_ct", lambda n: True, False),
                    ("chest CT labels, box then clicks", "chest_ct", lambda n: True, True),
                    ("clinical-size CT organs, clicks", "clinical_ct", lambda n: True, False)]
            for method in METHODS:
                for title, image_id, wanted, box_first in plan:
                    objects, spacing = cases[image_id]
                    runs = {name: click_object(srv.url, image_id, truth, spacing, args.max_clicks, box_first,
                                               extra={"method": method})
                            for name, truth in objects.items() if wanted(name)}
                    groups[f"{title} ({method})"] = {"image": image_id, "method": method, "runs": runs,
                                                     "summary": summarize(runs, args.max_clicks)}
                    print(title, method, json.dumps(groups[f"{title} ({method})"]["summary"]), flush=True)
                groups[f"held-out head white matter, unet3d then clicks ({method})"] = refine_automatic(
                    srv.url, cases, args.max_clicks, method)
        peak_rss_gb = round(memory.result()["peak_rss_mb"] / 1024, 2)
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    summary = lambda title, method: groups[f"{title} ({method})"]["summary"]  # noqa: E731
    targets = {f"median_s_per_click_{k} (learned)": {"target": t, "measured": summary(g, "learned")["median_s_per_click"],
                                                      "met": summary(g, "learned")["median_s_per_click"] <= t}
               for k, t, g in (("colin27", TARGET_S["colin27"], "colin27 held-out AAL regions, clicks"),
                               ("clinical_ct", TARGET_S["clinical_ct"], "clinical-size CT organs, clicks"))}
    held_out = {m: summary("colin27 held-out AAL regions, clicks", m)["noc@85"] for m in METHODS}
    targets["noc@85_held_out_aal (learned)"] = {"target": TARGET_NOC85_HELD_OUT, "measured": held_out["learned"],
                                                "met": held_out["learned"] <= TARGET_NOC85_HELD_OUT}
    targets["learned_beats_seeded_on_held_out_aal"] = {"learned": held_out["learned"], "seeded": held_out["seeded"],
                                                       "met": held_out["learned"] < held_out["seeded"]}
    result = {"machine": info, "methods": list(METHODS), "max_clicks": args.max_clicks,
              "data": __doc__.split("\n\n")[2].replace("\n", " "), "server_peak_rss_gb": peak_rss_gb,
              "targets": targets, "groups": groups}
    out = REPO / "bench" / "results" / f"interactive_{info['device']}.json"
    out.write_text(json.dumps(result, indent=1))
    plot(groups, out.with_suffix(".png"))
    print(f"wrote {out}")
    rows = [[title.rsplit(" (", 1)[0], g["method"], str(g["summary"]["objects"]), *(f"{g['summary'][f'noc@{int(t * 100)}']:.1f}" for t in THRESHOLDS),
             f"{g['summary']['mean_dice_per_click'][0]:.2f}", f"{g['summary']['mean_dice_per_click'][-1]:.2f}",
             f"{g['summary']['median_s_per_click']:.2f}"] for title, g in groups.items()]
    caption = (f"Guided editing through REST, learned and learning-free, generated by `bench/interactive.py` on {info['date']} "
               f"({info['cpu']}, {info['threads']} threads, load {info['load_average_before']}); server peak RSS "
               f"{peak_rss_gb} GB. NoC: clicks to reach the Dice (20 when never).")
    header = ["objects", "method", "n", "NoC@80", "NoC@85", "NoC@90", "Dice after 1", f"Dice after {args.max_clicks}",
              "median s per click"]
    for readme in (REPO / "bench" / "README.md", REPO / "docs" / "interactive.md"):
        update_readme_table(readme, f"interactive_{info['device']}", header, rows, caption)


def refine_automatic(url: str, cases: dict, max_clicks: int, method: str) -> dict:
    """White matter of a held-out synthetic head: the shipped unet3d's prediction stored as the prior, then clicks."""
    sys.path.insert(0, str(REPO))
    from tests.e2e.helpers import parse_multipart_label

    r = requests.post(f"{url}/infer/unet3d", params={"image": "head"},
                      data={"params": json.dumps({"save_label": True, "label_tag": "original"})}, timeout=600)
    r.raise_for_status()
    automatic = np.asarray(parse_multipart_label(r)[0].dataobj) == 2
    (objects, spacing) = cases["head"]
    truth = objects["white_matter"]
    runs = {"white_matter": click_object(url, "head", truth, spacing, max_clicks, start=automatic,
                                         extra={"label": "white_matter", "prior_tag": "original", "method": method})}
    runs["white_matter"]["dice_before_clicks"] = round(dice(automatic, truth), 4)
    return {"image": "head", "method": method, "runs": runs, "summary": summarize(runs, max_clicks)}


def _aal(name: str, regions: list[int]) -> bool:
    return name.startswith("aal_") and int(name[4:]) in regions


if __name__ == "__main__":
    main()
