"""Guided editing on real gliomas: the held-out BraTS cases, clicked the standard way, through a real server.

Data: the 5 held-out cases of the fixed split in ``medseg.data.brats`` (BraTS 2018; Menze et al.
2015, Bakas et al. 2017 and 2018), never trained on. Objects: whole tumour on FLAIR, tumour core
and enhancing tumour on T1ce, each a row of its own.

Protocols (the CVPR 2025 interactive challenge's and RITM's):
- clicks only: the first click at the object's deepest point, each next one at the deepest point
  of the largest error (foreground where missed, background where false), 10 clicks;
- box then clicks: the object's 3D bounding box, then 5 clicks the same way;
- 2D box then clicks: a box drawn on one axial slice (the one where the object is largest, its
  extent there), as a clinician draws it, then 5 clicks.

Reported per row and method: Dice after each interaction, NoC@80/85/90 (the interactions to reach
it; the maximum when never), the area under the Dice curve (mean Dice over the interactions, as
the challenge scores it), how many interactions lowered Dice by more than 0.05 and how many
changed nothing while the error was larger than the click's own ball, median and maximum seconds
per interaction (the caller's time, answer decoded), and the server's peak memory.

    python bench/interactive_brats.py [--clicks 10] [--box-clicks 5] [--lib /tmp/before/lib --tag before]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import start_run, update_readme_table  # noqa: E402
from interactive import timed_answer  # noqa: E402
from monitor import ProcessTreeMonitor  # noqa: E402
from server import BenchServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = ("seeded", "learned")
THRESHOLDS = (0.80, 0.85, 0.90)
LOWERED = 0.05  # a click that lowers Dice by more than this broke earlier work (the target)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def box_of(truth: np.ndarray, kind: str | None) -> list | None:
    """The object's 3D bounding box, or its box on the axial slice where it is largest (kind "2d")."""
    if kind is None:
        return None
    if kind == "2d":
        k = int(np.argmax(truth.sum(axis=(0, 1))))
        nz = np.argwhere(truth[:, :, k])
        return [[*nz.min(0).tolist(), k], [*nz.max(0).tolist(), k]]
    nz = np.argwhere(truth)
    return [nz.min(0).tolist(), nz.max(0).tolist()]


def run_object(url: str, image_id: str, truth: np.ndarray, spacing, clicks: int, box: str | None,
               method: str) -> dict:
    """One object: Dice, seconds, and whether each interaction changed the answer."""
    from medseg.pipeline.click_simulation import next_click

    params = {"foreground": [], "background": [], "method": method}
    box_first = box is not None
    if box_first:
        params["box"] = box_of(truth, box)
    predicted, dices, seconds, unchanged = None, [], [], 0
    for n in range(clicks + (1 if box_first else 0)):
        if not (box_first and n == 0):
            click = next_click(truth, predicted, spacing)
            if click is None:
                dices.append(1.0)
                continue
            params[click[0]].append(click[1])
        answer, took_s = timed_answer(url, "interactive", image_id, params)
        seconds.append(took_s)
        if predicted is not None and np.array_equal(answer, predicted) and dice(answer, truth) < 1.0:
            unchanged += 1
        predicted = answer
        dices.append(round(dice(predicted, truth), 4))
    drops = [b - a for a, b in zip(dices, dices[1:])]
    return {"dice_per_interaction": dices, "seconds_per_interaction": [round(s, 3) for s in seconds],
            "lowered": int(sum(d < -LOWERED for d in drops)), "unchanged": unchanged}


def summarize(runs: dict) -> dict:
    from medseg.pipeline.click_simulation import clicks_to_reach

    n = len(next(iter(runs.values()))["dice_per_interaction"])
    curves = np.array([r["dice_per_interaction"] for r in runs.values()])
    seconds = [s for r in runs.values() for s in r["seconds_per_interaction"]]
    return {**{f"noc@{int(t * 100)}": round(float(np.mean([clicks_to_reach(list(c), t, n) for c in curves])), 2)
               for t in THRESHOLDS},
            "mean_dice_per_interaction": [round(float(d), 4) for d in curves.mean(0)],
            "area_under_dice_curve": round(float(curves.mean()), 4),
            "lowered_by_more_than_0.05": int(sum(r["lowered"] for r in runs.values())),
            "unchanged": int(sum(r["unchanged"] for r in runs.values())),
            "median_s": round(float(np.median(seconds)), 3), "max_s": round(float(np.max(seconds)), 3),
            "objects": len(runs)}


def plot(groups: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    styles = {None: "-", "3d": "-", "2d": ":"}
    for name, g in groups.items():
        ax = axes[0 if g["box"] is None else 1]
        curve = g["summary"]["mean_dice_per_interaction"]
        ax.plot(range(1, len(curve) + 1), curve, marker="o" if g["method"] == "learned" else "x", ms=3,
                label=f"{g['object']}, {g['box'] or 'no'} box ({g['method']})", linestyle=styles[g["box"]])
    for ax, title in zip(axes, ("clicks only", "a 3D box (solid) or a 2D box (dotted), then clicks")):
        ax.set_title(f"BraTS held-out gliomas: {title}")
        ax.set_xlabel("interactions")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean Dice")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> None:
    from medseg.data import brats

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--box-clicks", type=int, default=5)
    ap.add_argument("--cases", type=int, default=len(brats.HELD_OUT_CASES), help="the first N held-out cases")
    ap.add_argument("--lib", default=None, help="serve another checkout's lib/ (a before/after on one machine)")
    ap.add_argument("--tag", default="", help="suffix of the results file and table, e.g. before")
    ap.add_argument("--protocols", default="clicks,box,box2d",
                    help="which of clicks, box, box2d (a version without 2D boxes refuses them)")
    ap.add_argument("--work", default=str(REPO / "work" / "bench-interactive-brats"))
    args = ap.parse_args(argv)
    if not brats.available():
        sys.exit(brats.why_absent())

    info, studies = start_run(Path(args.work))
    if args.lib:
        lib = Path(args.lib).resolve()
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(lib), os.environ.get("PYTHONPATH")) if p)
        info["medseg_lib"] = {"path": str(lib), "commit": subprocess.run(
            ["git", "-C", str(lib), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}
    objects = brats.objects(brats.HELD_OUT_CASES[:args.cases])
    for obj in objects:
        target = studies / obj.image_path.name
        if not target.exists():
            os.symlink(obj.image_path, target)
    groups = {}
    with BenchServer(studies, {"models": "unet3d", "al_auto_scoring": "false"}, Path(args.work) / "server.log") as srv:
        with ProcessTreeMonitor(srv.proc.pid) as memory:
            protocols = {"clicks": (None, args.clicks, "clicks"), "box": ("3d", args.box_clicks, "box then clicks"),
                         "box2d": ("2d", args.box_clicks, "2D box then clicks")}
            for box, clicks, protocol in (protocols[p] for p in args.protocols.split(",")):
                for method in METHODS:
                    for name in brats.OBJECTS:
                        runs = {obj.case: run_object(srv.url, obj.image_path.name.replace(".nii.gz", ""), obj.mask,
                                                     obj.spacing_mm, clicks, box, method)
                                for obj in objects if obj.name == name}
                        title = f"{name}, {protocol} ({method})"
                        groups[title] = {"object": name, "method": method, "box": box, "runs": runs,
                                         "summary": summarize(runs)}
                        print(title, json.dumps(groups[title]["summary"]), flush=True)
        peak_rss_gb = round(memory.result()["peak_rss_mb"] / 1024, 2)
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    key = f"interactive_brats_{info['device']}" + (f"_{args.tag}" if args.tag else "")
    result = {"machine": info, "data": __doc__.split("\n\n")[1].replace("\n", " "),
              "split": {"train": list(brats.TRAIN_CASES), "held_out": list(brats.HELD_OUT_CASES[:args.cases])},
              "clicks": args.clicks, "box_clicks": args.box_clicks, "server_peak_rss_gb": peak_rss_gb,
              "groups": groups}
    out = REPO / "bench" / "results" / f"{key}.json"
    out.write_text(json.dumps(result, indent=1))
    plot(groups, out.with_suffix(".png"))
    print(f"wrote {out}")
    rows = []
    for title, g in groups.items():
        s, curve = g["summary"], g["summary"]["mean_dice_per_interaction"]
        picks = [0, min(4, len(curve) - 1), len(curve) - 1] if g["box"] is None else [0, 1, len(curve) - 1]
        rows.append([title.rsplit(" (", 1)[0], g["method"], str(s["objects"]),
                     *(f"{curve[i]:.2f}" for i in picks),
                     *(f"{s[f'noc@{int(t * 100)}']:.1f}" for t in THRESHOLDS), f"{s['area_under_dice_curve']:.2f}",
                     str(s["lowered_by_more_than_0.05"]), str(s["unchanged"]), f"{s['median_s']:.2f}",
                     f"{s['max_s']:.2f}"])
    lib = f"; served lib/ of {info['medseg_lib']['commit']}" if args.lib else ""
    caption = (f"Guided editing on the 5 held-out BraTS gliomas, generated by `bench/interactive_brats.py` on "
               f"{info['date']} ({info['cpu']}, {info['threads']} threads, load {info['load_average_before']}"
               f"{lib}); server peak RSS {peak_rss_gb} GB. Dice columns: after interaction 1, 5 (clicks) or 2 "
               "(box + 1 click), and the last. NoC: interactions to reach the Dice (the maximum when never). "
               "AUC: mean Dice over the interactions.")
    header = ["object, protocol", "method", "n", "Dice 1st", "Dice 5th / 2nd", "Dice last", "NoC@80", "NoC@85",
              "NoC@90", "AUC", "lowered > 0.05", "unchanged", "median s", "max s"]
    for readme in (REPO / "bench" / "README.md", REPO / "docs" / "interactive.md"):
        update_readme_table(readme, key, header, rows, caption)


if __name__ == "__main__":
    main()
