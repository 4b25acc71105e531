"""Benchmark: simulated annotators, comparing next-sample strategies (random, epistemic, tta).

Each run is one strategy with one seed, through a real MedSeg server started without the
shipped weights (conf shipped_weights false), so the model learns only from the labels the
simulated annotator submits:

1. the pool of pseudo-subjects is the studies folder, unlabeled; the seed picks the same
   `--initial` images for every strategy, their ground truth is submitted as `final`
   labels and the model is trained from scratch;
2. every round: for `epistemic` and `tta` the scoring method of that name runs for the
   current weights (POST /scoring/<method>, as the server does by itself after training);
   POST /activelearning/<strategy> answers the next image; its ground truth is submitted
   as the "corrected" label (PUT /datastore/label, tag final); the model is fine-tuned
   from its current weights for a fixed number of iterations (POST /train/<model>);
3. after every training, Dice per label is measured on held-out pseudo-subjects (a seed
   that is not in the pool) through POST /infer with the image's path.

Same pool, held-out set, initial labels, iterations and training seeds for every strategy.
Every training publishes (`"publish": "always"`): the curve measures what the labels do,
not the publish gate. One labeled image is always held for validation, as the app does.
To keep the loop affordable on a CPU, images and labels are resampled to an isotropic
`--spacing` (2.5 mm by default, label by nearest neighbour) before the run: everything
(scoring, inference, training) works on the same coarser data for every strategy.

Writes bench/results/active_learning.json, bench/results/active_learning.png and the table
between the markers in bench/README.md.

    python bench/active_learning.py                     # CPU-sized defaults
    python bench/active_learning.py --seeds 0,1,2 --rounds 8 --iterations 200 --spacing 1.5   # GPU
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from common import machine_info, resample_isotropic_arrays, update_readme_table  # noqa: E402
from metrics import dice_per_label  # noqa: E402
from server import BenchServer  # noqa: E402

RESULTS = REPO / "bench" / "results"
WORK = REPO / "bench" / "work" / "active_learning"
SEED_POOL = 4000  # pseudo-subjects of the pool; SEED_HELDOUT (the model cards' test seed) is the held-out set
CLIENT = "simulated-annotator"


# ---------------------------------------------------------------- data


def resample_isotropic(image_path: Path, label_path: Path, spacing_mm: float, out_dir: Path) -> tuple[Path, Path]:
    """Image (linear) and label (nearest) on an isotropic grid covering the same field of view."""
    import nibabel as nib

    out_dir.mkdir(parents=True, exist_ok=True)
    out_image, out_label = out_dir / "images" / image_path.name, out_dir / "labels" / label_path.name
    if out_image.exists() and out_label.exists():
        return out_image, out_label
    img, lab = nib.load(str(image_path)), nib.load(str(label_path))
    image, label, affine = resample_isotropic_arrays(img.dataobj, lab.dataobj, img.affine, spacing_mm)
    for path, array, dtype in ((out_image, image, np.float32), (out_label, label, np.uint8)):
        path.parent.mkdir(parents=True, exist_ok=True)
        out = nib.Nifti1Image(array.astype(dtype), affine)
        out.set_qform(affine, code=1)
        out.set_sform(affine, code=1)
        tmp = path.with_name(f".{path.name}")
        nib.save(out, str(tmp))
        tmp.rename(path)
    return out_image, out_label


def prepare_data(n_pool: int, n_heldout: int, spacing_mm: float) -> dict[str, dict[str, tuple[Path, Path]]]:
    from medseg.data.pseudo_subjects import SEED_HELDOUT, generate

    sets = {}
    for name, n, seed in (("pool", n_pool, SEED_POOL), ("heldout", n_heldout, SEED_HELDOUT)):
        raw = WORK / "data" / f"{name}_{seed}"
        records = generate(raw, n, seed=seed, prefix=name)
        out = WORK / "data" / f"{name}_{seed}_{spacing_mm:g}mm"
        sets[name] = {r["name"]: resample_isotropic(raw / "images" / f"{r['name']}.nii.gz",
                                                    raw / "labels" / f"{r['name']}.nii.gz", spacing_mm, out)
                      for r in records}
    return sets


# ---------------------------------------------------------------- one run


def heldout_dice(srv: BenchServer, model: str, heldout: dict, labels: dict[str, int]) -> dict[str, float]:
    import gzip
    import io

    import nibabel as nib

    scores = []
    for image, label in heldout.values():
        r = requests.post(f"{srv.url}/infer/{model}", params={"image": str(image), "output": "image"}, timeout=1800)
        r.raise_for_status()
        data = gzip.decompress(r.content) if r.content[:2] == b"\x1f\x8b" else r.content
        fh = nib.FileHolder(fileobj=io.BytesIO(data))
        pred = np.asarray(nib.Nifti1Image.from_file_map({"header": fh, "image": fh}).dataobj)
        scores.append(dice_per_label(pred, np.asarray(nib.load(str(label)).dataobj), labels))
    return {name: float(np.mean([s[name] for s in scores])) for name in labels}


def submit_truth(srv: BenchServer, image_id: str, label_path: Path) -> None:
    with open(label_path, "rb") as f:
        r = requests.put(f"{srv.url}/datastore/label", params={"image": image_id, "tag": "final"},
                         files={"label": (f"{image_id}.nii.gz", f)},
                         data={"params": json.dumps({"client_id": CLIENT})}, timeout=300)
    r.raise_for_status()


def train(srv: BenchServer, model: str, iterations: int, seed: int) -> dict:
    options = {"max_iterations": iterations, "seed": seed, "publish": "always", "model_selection": False,
               "val_every": 0}
    t0 = time.time()
    r = requests.post(f"{srv.url}/train/{model}", json=options, timeout=60)
    r.raise_for_status()
    status = srv.wait_for("train")
    if status.get("status") != "DONE":
        raise RuntimeError(f"training failed: {json.dumps(status)[-2000:]}")
    return {"train_s": time.time() - t0}


def next_sample(srv: BenchServer, strategy: str) -> tuple[str, dict]:
    """The strategy's answer; for uncertainty strategies the scores for the current weights first."""
    timing = {}
    if strategy in ("epistemic", "tta"):
        t0 = time.time()
        requests.post(f"{srv.url}/scoring/{strategy}", json={}, timeout=60).raise_for_status()
        status = srv.wait_for("scoring")
        if status.get("status") != "DONE":
            raise RuntimeError(f"scoring failed: {json.dumps(status)[-2000:]}")
        timing["scoring_s"] = time.time() - t0
    t0 = time.time()
    r = requests.post(f"{srv.url}/activelearning/{strategy}", json={"client_id": CLIENT}, timeout=60)
    r.raise_for_status()
    timing["next_sample_ms"] = 1000 * (time.time() - t0)
    answer = r.json()
    if not answer.get("id"):
        raise RuntimeError(f"/activelearning/{strategy} answered no image: {answer}")
    return answer["id"], {**timing, "score": (answer.get(strategy) or {}).get("score")}


def run_one(strategy: str, seed: int, data: dict, args, labels: dict[str, int]) -> list[dict]:
    run_dir = WORK / "runs" / f"{strategy}_seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    studies = run_dir / "studies"
    studies.mkdir(parents=True)
    for name, (image, _) in data["pool"].items():
        shutil.copyfile(image, studies / f"{name}.nii.gz")
    rng = np.random.default_rng(seed)
    initial = [str(x) for x in rng.choice(sorted(data["pool"]), size=args.initial, replace=False)]
    # Held-out images stay outside the datastore (never trained on, never served), so infer reads them by path.
    conf = {"models": args.model, "shipped_weights": "false", "al_auto_scoring": "false",
            "al_model": args.model, "al_passes": str(args.passes), "gpu_memory_gb": str(args.gpu_memory_gb),
            "infer_server_paths": "true"}
    curve = []
    with BenchServer(studies, conf, run_dir / "server.log") as srv:
        for name in initial:
            submit_truth(srv, name, data["pool"][name][1])
        labeled = list(initial)
        for rnd in range(args.rounds + 1):
            step = {"round": rnd, "n_labels": len(labeled)}
            if rnd > 0:
                image_id, timing = next_sample(srv, strategy)
                if image_id in labeled:
                    raise RuntimeError(f"{strategy} returned {image_id}, which already has a final label")
                submit_truth(srv, image_id, data["pool"][image_id][1])
                labeled.append(image_id)
                step.update(n_labels=len(labeled), chosen=image_id, **timing)
            step.update(train(srv, args.model, args.iterations, seed))
            step["heldout_dice"] = heldout_dice(srv, args.model, data["heldout"], labels)
            step["heldout_dice_mean"] = float(np.mean(list(step["heldout_dice"].values())))
            print(f"{strategy} seed {seed} round {rnd}: {len(labeled)} labels, "
                  f"held-out Dice {step['heldout_dice_mean']:.3f} {step.get('chosen', '')}", flush=True)
            curve.append(step)
    return curve


# ---------------------------------------------------------------- report


def summarize(runs: dict, strategies: list[str]) -> dict:
    """Per strategy and number of labels: mean, min and max over seeds of the mean held-out Dice."""
    out = {}
    for strategy in strategies:
        by_n: dict[int, list[float]] = {}
        for key, curve in runs.items():
            if key.split("_seed")[0] != strategy:
                continue
            for step in curve:
                by_n.setdefault(step["n_labels"], []).append(step["heldout_dice_mean"])
        out[strategy] = {str(n): {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)),
                                  "n_seeds": len(v)} for n, v in sorted(by_n.items())}
    return out


def plot(summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for strategy, points in summary.items():
        n = [int(k) for k in points]
        mean = [points[k]["mean"] for k in points]
        ax.plot(n, mean, marker="o", label=strategy)
        ax.fill_between(n, [points[k]["min"] for k in points], [points[k]["max"] for k in points], alpha=0.15)
    ax.set_xticks(sorted({int(k) for points in summary.values() for k in points}))
    ax.set_xlabel("labeled images (final labels)")
    ax.set_ylabel("held-out Dice, mean over labels")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def write_table(summary: dict, meta: dict) -> None:
    counts = sorted({int(n) for points in summary.values() for n in points})
    rows = [[f"`{s}`", str(max((p["n_seeds"] for p in summary[s].values()), default=0))]
            + [f"{summary[s][str(n)]['mean']:.3f}" if str(n) in summary[s] else "" for n in counts]
            for s in summary]
    a = meta["args"]
    caption = (f"{meta['machine']['date']}, {meta['machine']['cpu']} ({meta['machine']['device']}), "
               f"model `{a['model']}` from scratch, {a['iterations']} iterations per round, pool {a['pool']}, "
               f"{a['heldout']} held-out, {a['spacing']} mm, seeds {a['seeds']}"
               + (" (a strategy with fewer seeds run: the run was interrupted)" if len({r[1] for r in rows}) > 1 else "")
               + "; held-out Dice (mean over labels and seeds) by number of labeled images; "
               "generated by bench/active_learning.py")
    update_readme_table(REPO / "bench" / "README.md", "active_learning",
                        ["strategy", "seeds run"] + [f"{n} labels" for n in counts],
                        rows, caption)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategies", default="random,epistemic,tta")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--rounds", type=int, default=4, help="labels acquired after the initial ones")
    p.add_argument("--initial", type=int, default=2)
    p.add_argument("--pool", type=int, default=10)
    p.add_argument("--heldout", type=int, default=3)
    p.add_argument("--iterations", type=int, default=40, help="training iterations per round (fixed budget)")
    p.add_argument("--spacing", type=float, default=2.5, help="isotropic spacing the data is resampled to (mm)")
    p.add_argument("--model", default="unet3d")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--gpu-memory-gb", type=float, default=0.3, help="planning budget (sizes patch and batch)")
    p.add_argument("--resume", action="store_true", help="keep runs already in the results file with the same settings")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: plot and tabulate the runs already in the results file (an interrupted run)")
    args = p.parse_args(argv)
    strategies = args.strategies.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]

    from medseg.data.template import TISSUE_LABELS

    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / "active_learning.json"
    settings = {k: v for k, v in vars(args).items() if k not in ("resume", "report_only", "strategies", "seeds")}
    previous = json.loads(out_json.read_text()) if args.resume and out_json.exists() else {}
    if args.report_only:
        previous = json.loads(out_json.read_text())
        args.resume = True
    runs = previous.get("runs", {}) if previous.get("settings") == settings else {}
    meta = {k: previous[k] for k in ("machine", "args", "settings", "wall_s") if k in previous}
    if not args.report_only:
        data = prepare_data(args.pool, args.heldout, args.spacing)
        t0 = time.time()
        for seed in seeds:
            for strategy in strategies:
                key = f"{strategy}_seed{seed}"
                if key in runs:
                    continue
                runs[key] = run_one(strategy, seed, data, args, TISSUE_LABELS)
                meta = {"machine": machine_info(), "args": {**vars(args), "seeds": seeds}, "settings": settings,
                        "wall_s": time.time() - t0}
                summary = summarize(runs, strategies)
                out_json.write_text(json.dumps({**meta, "summary": summary, "runs": runs}, indent=1))
    summary = summarize(runs, strategies)
    seeds_run = sorted({int(k.split("_seed")[1]) for k in runs})
    plot(summary, RESULTS / "active_learning.png",
         f"{args.model} from scratch, {args.iterations} it/round, {args.spacing:g} mm, seeds {seeds_run}")
    write_table(summary, meta)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
