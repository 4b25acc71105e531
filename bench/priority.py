"""Interactive requests while background work runs: infer, next sample and submit, alone and busy.

A real server over pseudo-subjects (two labelled) serves the shipped ``unet3d``. Each
interactive request a clinician makes in 3D Slicer is timed alone, then again while a
training run and an MC-dropout uncertainty scoring run (MONAI Label's task processes)
are both busy. The ratio busy / alone is the slowdown the clinician feels; the target
is at most 1.3. Both are measured in the same run, minutes apart, and the load average
is recorded, since these machines are shared.

    python bench/priority.py      # writes bench/results/priority_<device>.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, update_readme_table  # noqa: E402
from server import BenchServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET_SLOWDOWN = 1.3


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interactive_requests(url: str, labels_dir: Path, image_ids: list[str]) -> dict:
    """Seconds per request kind, median of ``len(image_ids)`` requests each. Each submit is the
    image's own label (``labels_dir``): pseudo-subjects differ in size, and the server refuses a
    label on another grid."""
    def infer(image_id):
        r = requests.post(f"{url}/infer/unet3d", params={"image": image_id}, timeout=600)
        r.raise_for_status()

    def next_sample():
        r = requests.post(f"{url}/activelearning/random", json={}, timeout=120)
        r.raise_for_status()

    def submit(image_id):
        label_path = labels_dir / f"{image_id}.nii.gz"
        with open(label_path, "rb") as f:
            r = requests.put(f"{url}/datastore/label", params={"image": image_id, "tag": "bench_draft"},
                             files={"label": (label_path.name, f)}, data={"params": "{}"}, timeout=120)
        r.raise_for_status()

    out = {"infer_s": [timed(lambda i=i: infer(i)) for i in image_ids],
           "next_sample_s": [timed(next_sample) for _ in image_ids],
           "submit_s": [timed(lambda i=i: submit(i)) for i in image_ids]}
    return {k: {"median": round(statistics.median(v), 3), "all": [round(x, 3) for x in v]} for k, v in out.items()}


def background_running(url: str) -> bool:
    tasks = requests.get(f"{url}/train/", timeout=30).json()
    scoring = requests.get(f"{url}/scoring/", timeout=30).json()
    return (isinstance(tasks, dict) and tasks.get("status") == "RUNNING"
            and isinstance(scoring, dict) and scoring.get("status") == "RUNNING")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(REPO / "work" / "bench-priority"))
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from medseg.data.pseudo_subjects import generate

    info = machine_info()
    info["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    work = Path(args.work)
    shutil.rmtree(work / "studies", ignore_errors=True)
    studies = work / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    records = generate(work / "subjects", 2 + args.requests, seed=4000, prefix="case")
    for r in records:
        shutil.copyfile(work / "subjects" / "images" / f"{r['name']}.nii.gz", studies / f"{r['name']}.nii.gz")
    for r in records[:2]:
        shutil.copyfile(work / "subjects" / "labels" / f"{r['name']}.nii.gz",
                        studies / "labels" / "final" / f"{r['name']}.nii.gz")
    unlabeled = [r["name"] for r in records[2:]]
    labels_dir = work / "subjects" / "labels"
    conf = {"models": "unet3d", "al_auto_scoring": "false"}
    result = {"machine": info}
    with BenchServer(studies, conf, work / "server.log") as srv:
        interactive_requests(srv.url, labels_dir, unlabeled[:1])  # warm-up: weights loaded, caches filled
        result["alone"] = interactive_requests(srv.url, labels_dir, unlabeled)
        requests.post(f"{srv.url}/train/unet3d", json={"max_iterations": 2000, "publish": "if_not_worse",
                                                      "model_selection": False}, timeout=60).raise_for_status()
        requests.post(f"{srv.url}/scoring/epistemic", json={}, timeout=60).raise_for_status()
        deadline = time.time() + 600
        while not background_running(srv.url) and time.time() < deadline:
            time.sleep(2)
        time.sleep(30)  # past the task processes' start-up, into their steady work
        result["busy_with"] = "training (2000 iterations) and epistemic (MC-dropout) scoring, both running"
        result["busy"] = interactive_requests(srv.url, labels_dir, unlabeled)
        result["background_still_running"] = background_running(srv.url)
        requests.delete(f"{srv.url}/train/", timeout=60)
        requests.delete(f"{srv.url}/scoring/", timeout=60)
    result["slowdown"] = {k: round(result["busy"][k]["median"] / result["alone"][k]["median"], 3)
                          for k in result["alone"]}
    result["target_slowdown"] = TARGET_SLOWDOWN
    result["met"] = {k: v <= TARGET_SLOWDOWN for k, v in result["slowdown"].items()}
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out or REPO / "bench" / "results" / f"priority_{info['device']}.json")
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("alone", "busy", "slowdown", "met")}, indent=1))
    print(f"wrote {out}")
    names = {"infer_s": "infer", "next_sample_s": "next sample", "submit_s": "submit"}
    rows = [[names[k], f"{result['alone'][k]['median']:.2f}", f"{result['busy'][k]['median']:.2f}",
             f"{result['slowdown'][k]:.2f}", "yes" if result["met"][k] else "no"] for k in names]
    update_readme_table(
        REPO / "bench" / "README.md", f"priority_{info['device']}",
        ["request", "alone s (median)", "with training + scoring s", "slowdown", f"<= {TARGET_SLOWDOWN}"], rows,
        f"Generated by `bench/priority.py` on {info['date']} ({info['cpu']}, {info['cores']} cores; load before "
        f"{info['load_average_before']}, after {info['load_average_after']}); background: {result['busy_with']}.")


if __name__ == "__main__":
    main()
