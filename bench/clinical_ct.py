"""Clinical-size CT through the real server: request time (pre / infer / post) and peak memory.

Two synthetic CT series of the sizes real thoracic CT comes in, each with 20 labels
(and the thick one also with 120, so labels above 255 would not be needed but the
class count is large):

* ``thin``: 512x512x300 at 0.7x0.7x1.0 mm;
* ``thick``: 512x512x60 at 0.6x0.6x5.0 mm.

The body is an elliptic cylinder of soft tissue (40 HU) in air (-1000 HU) with two
lungs (-850 HU) and the labels as ellipsoids of their own HU inside it, with noise.
The images are made here, so no real anatomy is claimed: this measures time and
memory only. Each case runs as a user would: ``monailabel start_server`` with
``--conf modality CT --conf shipped_weights false`` and the labels, a two-iteration
training run through REST (which makes the plan this machine gets, and publishes the
weights), then infer requests. Memory is the peak resident set of the whole server
process tree (``monitor.ProcessTreeMonitor``), sampled every 0.25 s.

    python bench/clinical_ct.py            # writes bench/results/clinical_ct_<device>.json

A before/after on one machine serves an earlier commit's ``lib/`` for the same case:

    git worktree add /tmp/before <commit>
    python bench/clinical_ct.py --cases thick:120 --lib /tmp/before/lib --table clinical_ct_cpu_before \
        --out bench/results/clinical_ct_cpu_before.json --note "Commit <commit>, before <change>."
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, update_readme_table  # noqa: E402
from monitor import ProcessTreeMonitor  # noqa: E402
from server import BenchServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CASES = {
    "thin": {"shape": (512, 512, 300), "spacing_mm": (0.7, 0.7, 1.0)},
    "thick": {"shape": (512, 512, 60), "spacing_mm": (0.6, 0.6, 5.0)},
}
TARGETS_S = {"thin": 180.0, "thick": 60.0}
PEAK_RSS_TARGET_GB = 6.0


def synthetic_ct(shape, spacing_mm, n_labels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int16 HU image, uint8/uint16 labels) of a body with lungs and ``n_labels`` ellipsoid organs."""
    rng = np.random.default_rng(seed)
    # Millimetres from the volume's centre along each axis, broadcastable to the volume.
    x, y, z = (np.arange(n, dtype=np.float32) * s - n * s / 2 for n, s in zip(shape, spacing_mm))
    x, y, z = x[:, None, None], y[None, :, None], z[None, None, :]
    image = np.full(shape, -1000, dtype=np.int16)
    image[np.broadcast_to((x / 160) ** 2 + (y / 110) ** 2 <= 1.0, shape)] = 40
    for side in (-1, 1):
        image[np.broadcast_to(((x - side * 75) / 55) ** 2 + ((y + 5) / 70) ** 2 <= 1.0, shape)] = -850
    labels = np.zeros(shape, dtype=np.uint8 if n_labels <= 255 else np.uint16)
    half_z = shape[2] * spacing_mm[2] / 2
    for value in range(1, n_labels + 1):
        centre = (rng.uniform(-100, 100), rng.uniform(-60, 60), rng.uniform(-0.6, 0.6) * half_z)
        radii = (rng.uniform(8, 25), rng.uniform(8, 25), rng.uniform(8, 40))
        box = tuple(slice(int(np.searchsorted(ax.ravel(), c - r)), int(np.searchsorted(ax.ravel(), c + r)) + 1)
                    for ax, c, r in zip((x, y, z), centre, radii))
        inside = (((x[box[0]] - centre[0]) / radii[0]) ** 2 + ((y[:, box[1]] - centre[1]) / radii[1]) ** 2
                  + ((z[:, :, box[2]] - centre[2]) / radii[2]) ** 2) <= 1.0
        labels[box][inside] = value
        image[box][inside] = int(rng.uniform(-100, 300))
    image = (image + rng.normal(0, 15, shape).astype(np.float32)).clip(-1024, 3071).astype(np.int16)
    return image, labels


def write_case(folder: Path, name: str, case: dict, n_labels: int) -> None:
    import nibabel as nib

    image, labels = synthetic_ct(case["shape"], case["spacing_mm"], n_labels)
    affine = np.diag([*case["spacing_mm"], 1.0])
    (folder / "labels" / "final").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, affine), str(folder / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(labels, affine), str(folder / "labels" / "final" / f"{name}.nii.gz"))


def run_case(work: Path, name: str, n_labels: int, requests_n: int) -> dict:
    studies = work / f"{name}_{n_labels}" / "studies"
    shutil.rmtree(studies.parent, ignore_errors=True)
    studies.mkdir(parents=True)
    t0 = time.perf_counter()
    write_case(studies, name, CASES[name], n_labels)
    made_s = time.perf_counter() - t0
    labels = ",".join(f"l{i}={i}" for i in range(1, n_labels + 1))
    conf = {"models": "unet3d", "labels": labels, "modality": "CT", "shipped_weights": "false",
            "al_auto_scoring": "false"}
    out = {"case": name, "n_labels": n_labels, **CASES[name], "generate_s": round(made_s, 1)}
    with BenchServer(studies, conf, studies.parent / "server.log") as srv:
        with ProcessTreeMonitor(srv.proc.pid) as train_mem:
            t = time.perf_counter()
            r = requests.post(f"{srv.url}/train/unet3d", json={"max_iterations": 2, "batch_size": 1, "augment": False,
                                                             "publish": "always", "val_every": 0,
                                                             "model_selection": False}, timeout=60)
            r.raise_for_status()
            status = srv.wait_for("train", 3600)
            out["train_request_s"] = round(time.perf_counter() - t, 1)
        stats = requests.get(f"{srv.url}/info/", timeout=30).json()["train_stats"]["unet3d"]
        out.update(train_status=status.get("status"), plan=stats.get("plan"),
                   train_peak_rss_gb=round(train_mem.result()["peak_rss_mb"] / 1024, 2))
        runs = []
        for _ in range(requests_n):
            with ProcessTreeMonitor(srv.proc.pid) as mem:
                t = time.perf_counter()
                r = requests.post(f"{srv.url}/infer/unet3d", params={"image": name}, timeout=3600)
                request_s = time.perf_counter() - t
            r.raise_for_status()
            server_side = _params(r)["latencies"]
            runs.append({"request_s": round(request_s, 1), **{k: server_side.get(k) for k in ("pre", "infer", "post")},
                         "read_write_s": round(request_s - server_side.get("total", 0.0), 1),
                         "peak_rss_gb": round(mem.result()["peak_rss_mb"] / 1024, 2)})
        out["infer"] = runs
    best = min(runs, key=lambda x: x["request_s"])
    out["verdict"] = {"request_s": best["request_s"], "target_s": TARGETS_S[name],
                      "within_time": best["request_s"] <= TARGETS_S[name],
                      "peak_rss_gb": max(r_["peak_rss_gb"] for r_ in runs),
                      "within_memory": max(r_["peak_rss_gb"] for r_ in runs) <= PEAK_RSS_TARGET_GB}
    return out


def _params(response: requests.Response) -> dict:
    """The JSON part of MONAI Label's multipart infer answer."""
    sys.path.insert(0, str(REPO))
    from tests.e2e.helpers import parse_multipart_label

    return parse_multipart_label(response)[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(REPO / "work" / "bench-clinical-ct"))
    ap.add_argument("--cases", default="thick:20,thin:20,thick:120", help="name:labels, comma separated")
    ap.add_argument("--requests", type=int, default=2, help="infer requests per case (the best is the verdict)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--table", default=None,
                    help="bench/README.md block to write (default clinical_ct_<device>; another for a comparison run)")
    ap.add_argument("--note", default="", help="a sentence appended to the table's caption")
    ap.add_argument("--lib", default=None,
                    help="serve another checkout's lib/ (e.g. a git worktree of an earlier commit), for a before/after")
    args = ap.parse_args(argv)
    info = machine_info()
    if args.lib:  # the server process imports medseg from there, ahead of this checkout's editable install
        lib = Path(args.lib).resolve()
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(lib), os.environ.get("PYTHONPATH")) if p)
        info["medseg_lib"] = {"path": str(lib), "commit": subprocess.run(
            ["git", "-C", str(lib), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}
    info["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    results = []
    for item in args.cases.split(","):
        name, n = item.split(":")
        results.append(run_case(Path(args.work), name, int(n), args.requests))
        print(json.dumps(results[-1]), flush=True)
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out or REPO / "bench" / "results" / f"clinical_ct_{info['device']}.json")
    out.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    print(f"wrote {out}")
    write_table(info, results, args.table, args.note)


def write_table(info: dict, results: list[dict], table: str | None = None, note: str = "") -> None:
    """bench/README.md's table from one run's results (``python -c`` can rewrite it from a results file)."""
    rows = []
    for r in results:
        best = min(r["infer"], key=lambda x: x["request_s"])
        plan = r.get("plan") or {}
        rows.append([f"{r['case']}: {'x'.join(map(str, r['shape']))} at {'x'.join(map(str, r['spacing_mm']))} mm",
                     str(r["n_labels"]), f"{plan.get('target_spacing_mm')}, patch {plan.get('patch_size_vox')} "
                     f"({plan.get('planned_for')})",
                     f"{best['request_s']} (target {TARGETS_S[r['case']]:.0f})",
                     f"{best['pre']} / {best['infer']} / {best['post']} / {best['read_write_s']}",
                     f"{r['verdict']['peak_rss_gb']}", f"{r['train_peak_rss_gb']}"])
    update_readme_table(
        REPO / "bench" / "README.md", table or f"clinical_ct_{info['device']}",
        ["synthetic CT", "labels", "plan spacing mm, patch (sized for)", "infer request s",
         "pre / infer / post / read+write s", "infer peak RSS GB", "training peak RSS GB"], rows,
        f"Generated by `bench/clinical_ct.py` on {info['date']} ({info['cpu']}, {info['cores']} cores, torch "
        f"{info['torch']}; load before {info['load_average_before']}, after {info['load_average_after']}). "
        f"Peak RSS of the whole server process tree; target {PEAK_RSS_TARGET_GB} GB." + (f" {note}" if note else ""))


if __name__ == "__main__":
    main()
