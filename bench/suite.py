"""Benchmark suite: our models against nnU-Net v2 and MONAI Label's sample app, same data, same machine.

One command trains every model of the app and both peers on the same pseudo-subjects with
the same budget (iterations, patch, batch, training/validation split), scores them with the
same code (bench/metrics.py: Dice and HD95 per label) on held-out pseudo-subjects and on the
original 1 mm template, measures end-to-end inference on the 1 mm template through each
one's real interface (REST for the two MONAI Label apps, a warm nnU-Net predictor and the
``nnUNetv2_predict`` command for nnU-Net), training speed and peak memory, and the achieved
FLOP/s of each network's forward pass against a ceiling: the data-sheet peak on a GPU, the
best measured kernel rate on a CPU.

* ours: a real MedSeg server (bench/server.py) with ``shipped_weights false`` (from
  scratch) and ``al_auto_scoring false``; labels are submitted through REST and every
  model is trained with ``POST /train/<model>`` (``publish always``, no model selection,
  ``seed`` 0, validation only at the end); its plan comes from the data and conf
  ``gpu_memory_gb`` (the memory budget sizes patch and batch);
* nnU-Net v2 (bench/peers/nnunet.py): its own commands in its own virtual environment,
  its plan edited to our unet3d's (same network), our split, our iteration budget;
* MONAI Label's radiology sample app, model ``segmentation`` (SegResNet), from the
  monailabel wheel (bench/peers/monailabel_segmentation.py): its stock recipe with our
  patch (rounded up to SegResNet's multiple of 8) and spacing, our split, batch and budget.

Writes bench/results/suite_<mode>.json, bench/results/suite_<mode>.png and the table
between the ``suite`` markers in bench/README.md and docs/benchmarks.md.

    python bench/suite.py --quick                 # CPU, minutes: unet3d and both peers, coarse data
    python bench/suite.py                         # full: every model, native resolution (for a GPU machine)
    python bench/suite.py --quick --models unet3d,unet2d --peers nnunet --iterations 20
"""
from __future__ import annotations

import argparse
import gzip
import io
import json
import math
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "bench" / "peers"))

from common import machine_info  # noqa: E402
from metrics import json_number, mean_scores, score  # noqa: E402
from monitor import ProcessTreeMonitor  # noqa: E402
from roofline import forward_speed, our_networks, segresnet_network  # noqa: E402
from server import BenchServer  # noqa: E402
from suite_report import NNUNET, SEGRESNET, add_ratios, plot, targets, versions, write_table  # noqa: E402

RESULTS = REPO / "bench" / "results"
WORK = REPO / "bench" / "work" / "suite"

# Budgets of the two modes. Quick fits a 2-core CPU in minutes: one model, 3 mm data (the
# 1 mm template is still what the speed is measured on: the servers resample it), a patch
# sized by a 0.25 GB planning budget (48^3 at 3 mm: a 3-stage 32-64-128 U-Net), and enough
# iterations (120) that the Dice comparison is not training noise (at 20, repeated runs of the
# same code moved the held-out Dice difference to nnU-Net by more than 0.01) while the whole
# suite stays under 15 minutes on an idle 2-core CPU (MONAI Label's stock trainer, which
# validates after every epoch, takes the longest). Full is
# for a GPU machine: every model, the pseudo-subjects at their own 1.2-1.8 mm spacing,
# nnU-Net's 8 GB planning budget.
MODES = {
    "quick": {"models": "unet3d", "iterations": 120, "spacing_mm": 3.0, "n_train": 6, "n_heldout": 4,
              "gpu_memory_gb": 0.25, "repeats": 3, "tta_repeats": 2},
    "full": {"models": "all", "iterations": 1000, "spacing_mm": None, "n_train": 20, "n_heldout": 5,
             "gpu_memory_gb": 8.0, "repeats": 5, "tta_repeats": 5},
}

# SegResNet halves the resolution at each of its 3 downsamplings (blocks_down 1-2-2-4):
# inputs must be multiples of 8.
SEGRESNET_DIVISOR = 8


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- data


def prepare_data(mode: dict) -> dict:
    """Train and held-out pseudo-subjects (fixed seeds), resampled when the mode says, and the template."""
    from active_learning import resample_isotropic  # the same resampling as the active-learning benchmark
    from medseg.data.pseudo_subjects import SEED_HELDOUT, SEED_TRAIN, generate
    from medseg.data.template import TEMPLATE_LABELS, TEMPLATE_T1

    sets = {}
    for name, n, seed in (("train", mode["n_train"], SEED_TRAIN), ("heldout", mode["n_heldout"], SEED_HELDOUT)):
        raw = WORK / "data" / f"{name}_{seed}"
        records = generate(raw, n, seed=seed, prefix=name)
        pairs = {}
        for r in records:
            image, label = raw / "images" / f"{r['name']}.nii.gz", raw / "labels" / f"{r['name']}.nii.gz"
            if mode["spacing_mm"]:
                image, label = resample_isotropic(image, label, mode["spacing_mm"],
                                                  WORK / "data" / f"{name}_{seed}_{mode['spacing_mm']:g}mm")
            pairs[r["name"]] = (image, label)
        sets[name] = pairs
    sets["template"] = {"template": (TEMPLATE_T1, TEMPLATE_LABELS)}
    return sets


def fixed_split(names: list[str]) -> dict[str, list[str]]:
    """The train/validation split our server makes for these images (medseg's persistent_split,
    default fraction, cap and seed), computed up front so that the peers get it even when no
    model of ours runs; the server's own split.json is checked against it after training."""
    import tempfile

    from medseg.pipeline.training import TrainConfig, persistent_split

    cfg = TrainConfig()
    files = [f"{n}.nii.gz" for n in names]
    with tempfile.TemporaryDirectory() as tmp:
        train_idx, val_idx = persistent_split(files, Path(tmp) / "split.json", cfg.val_fraction, cfg.val_max_cases,
                                              cfg.seed)
    return {"train": [names[i] for i in train_idx], "val": [names[i] for i in val_idx]}


def read_label(path: Path) -> tuple[np.ndarray, tuple]:
    import nibabel as nib

    img = nib.load(str(path))
    return np.rint(np.asarray(img.dataobj)).astype(np.uint8), tuple(float(z) for z in img.header.get_zooms()[:3])


def label_from_bytes(data: bytes) -> np.ndarray:
    import nibabel as nib

    data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    fh = nib.FileHolder(fileobj=io.BytesIO(data))
    return np.rint(np.asarray(nib.Nifti1Image.from_file_map({"header": fh, "image": fh}).dataobj)).astype(np.uint8)


def score_sets(predict, sets: dict, labels: dict[str, int]) -> dict:
    """Dice and HD95 per label: mean over the held-out subjects, and on the 1 mm template."""
    out = {}
    for subset in ("heldout", "template"):
        cases = {}
        for name, (image, label) in sets[subset].items():
            truth, spacing = read_label(label)
            cases[name] = score(predict(name, image), truth, labels, spacing)
        out[subset] = {**mean_scores(list(cases.values()), labels), "cases": cases}
    return out


# ---------------------------------------------------------------- REST


def rest_infer(url: str, model: str, image: Path, params: dict | None = None) -> tuple[np.ndarray, dict, float]:
    """(label, the server's JSON, client wall seconds) of one POST /infer (MONAI Label's multipart answer)."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    t0 = time.perf_counter()
    r = requests.post(f"{url}/infer/{model}", params={"image": str(image)},
                      data={"params": json.dumps(params or {})}, timeout=3600)
    wall = time.perf_counter() - t0
    if not r.ok:
        raise RuntimeError(f"infer {model} on {image.name}: HTTP {r.status_code} {r.text[:500]}")
    meta, label = {}, None
    for part in MultipartDecoder(r.content, r.headers["content-type"]).parts:
        disposition = part.headers.get(b"Content-Disposition", b"").decode()
        if 'name="params"' in disposition:
            meta = json.loads(part.content)
        elif 'name="image"' in disposition:
            label = label_from_bytes(part.content)
    if label is None:
        raise RuntimeError(f"infer {model}: no label in the answer")
    return label, meta, wall


def wait_idle(srv: BenchServer, timeout_s: float = 1800) -> None:
    """Wait until no background task (training, scoring) runs, so timings measure one request alone."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        busy = False
        for kind in ("train", "scoring"):
            r = requests.get(f"{srv.url}/{kind}/", timeout=30)
            if r.ok and isinstance(r.json(), dict) and r.json().get("status") == "RUNNING":
                busy = True
        if not busy:
            return
        time.sleep(2)
    raise TimeoutError("background tasks still running")


def timed_infer(srv: BenchServer, model: str, image: Path, repeats: int, params: dict, gpu: bool,
                warmup: bool) -> dict:
    """Median client and server latencies over ``repeats`` requests (after one warm-up request)."""
    with ProcessTreeMonitor(srv.proc.pid, gpu=gpu) as mon:
        runs = []
        for i in range(repeats + (1 if warmup else 0)):
            _, meta, wall = rest_infer(srv.url, model, image, params)
            runs.append({"client_s": round(wall, 3), "server": meta.get("latencies", {})})
    timed = runs[1:] if warmup else runs
    server_keys = [k for k, v in timed[0]["server"].items() if isinstance(v, (int, float))]
    return {
        "repeats": len(timed),
        "client_s_median": round(float(np.median([r["client_s"] for r in timed])), 3),
        "server_s_median": {k: round(float(np.median([r["server"][k] for r in timed])), 3) for k in server_keys},
        "runs": runs,
        "warmup_dropped": warmup,
        **mon.result(),
    }


# ---------------------------------------------------------------- ours


def progress_rate(log_path: Path, offset: int) -> dict:
    """Training iterations per second from the train task's progress lines in the server log.

    The rate is taken between the first and the last logged iteration, so it leaves out
    start-up (planning, preprocessing, the first batch) and the final validation.
    """
    points = []
    with open(log_path, errors="replace") as f:
        f.seek(offset)  # this training's lines only: one server trains every model in turn
        text = f.read()
    for line in text.splitlines():
        i = line.find('{"progress": ')
        if i < 0:
            continue
        try:
            entry = json.loads(line[i:])["progress"]
        except ValueError:
            continue
        if "iteration" in entry and "seconds" in entry:
            points.append((entry.get("stage"), entry["iteration"], entry["seconds"]))
    rates = {}
    for stage in dict.fromkeys(p[0] for p in points):
        pts = [p for p in points if p[0] == stage]
        (_, i0, s0), (_, i1, s1) = pts[0], pts[-1]
        rates[stage or "main"] = round((i1 - i0) / (s1 - s0), 3) if s1 > s0 and i1 > i0 else None
    return rates


def wait_training(srv: BenchServer, model: str, progress_path: Path,
                  timeout_s: float = 6 * 3600) -> tuple[dict, tuple | None]:
    """Wait for the training task; also the wall-clock window of its training loop.

    The train task rewrites its progress file every ``log_every`` iterations; the loop runs
    from the first progress entry to the one at the last iteration (planning and caching
    come before, the final validation and publishing after), which is where GPU busy is
    measured.
    """
    deadline = time.time() + timeout_s
    first = last = None
    seen = None
    while time.time() < deadline:
        try:
            progress = json.loads(progress_path.read_text())
        except (OSError, ValueError):
            progress = {}
        it = progress.get("iteration")
        if it is not None and progress.get("status") == "RUNNING" and it != seen:
            seen = it
            now = time.time()
            first = first or now
            if it == progress.get("max_iterations"):
                last = now
        status = requests.get(f"{srv.url}/train/", timeout=30).json()
        # The task list's last entry is this model's run (the previous model's is DONE too).
        if status.get("status") in ("DONE", "ERROR") and (status.get("request") or {}).get("model") == model:
            return status, (first, last) if first and last and last > first else None
        time.sleep(0.5)
    raise TimeoutError(f"training did not finish within {timeout_s} s")


def run_ours(models: list[str], sets: dict, split: dict, mode: dict, labels: dict, device: str) -> dict:
    from medseg.checkpoint import load_checkpoint
    from medseg.pipeline.plan import Plan

    run_dir = WORK / "ours"
    shutil.rmtree(run_dir, ignore_errors=True)
    studies = run_dir / "studies"
    studies.mkdir(parents=True)
    for name, (image, _) in sets["train"].items():
        shutil.copyfile(image, studies / f"{name}.nii.gz")
    gpu = device.startswith("cuda")
    # Held-out images stay outside the datastore (never trained on), so infer reads them by path.
    conf = {"models": ",".join(models), "shipped_weights": "false", "al_auto_scoring": "false",
            "gpu_memory_gb": str(mode["gpu_memory_gb"]), "device": device, "infer_server_paths": "true"}
    log_path = run_dir / "server.log"
    rows = {}
    with BenchServer(studies, conf, log_path) as srv:
        for name, (_, label) in sets["train"].items():
            with open(label, "rb") as f:
                requests.put(f"{srv.url}/datastore/label", params={"image": name, "tag": "final"},
                             files={"label": (f"{name}.nii.gz", f)}, timeout=300).raise_for_status()
        for model in models:
            row = {"model": model, "kind": "ours"}
            rows[model] = row
            try:
                log(f"ours: train {model} ({mode['iterations']} iterations)")
                request = {"max_iterations": mode["iterations"], "publish": "always", "model_selection": False,
                           "seed": 0, "val_every": 0, "log_every": max(1, mode["iterations"] // 20)}
                t0 = time.perf_counter()
                log_offset = log_path.stat().st_size
                requests.post(f"{srv.url}/train/{model}", json=request, timeout=120).raise_for_status()
                with ProcessTreeMonitor(srv.proc.pid, gpu=gpu) as mon:
                    status, window = wait_training(srv, model, studies / ".medseg" / model / "train_progress.json")
                if status.get("status") != "DONE":
                    raise RuntimeError(f"training failed: {json.dumps(status)[-1500:]}")
                row["train"] = {"wall_s": round(time.perf_counter() - t0, 1), "iterations": mode["iterations"],
                                "iterations_per_s": progress_rate(log_path, log_offset), **mon.result()}
                if gpu and window:
                    row["train"].update(mon.busy_between(*window))
                ckpt = load_checkpoint(studies / ".medseg" / "models" / model / "model.pt")
                plan = Plan.from_dict(ckpt["plan"])
                row["plan"] = {"target_spacing_mm": plan.target_spacing_mm, "patch_size_vox": plan.patch_size_vox,
                               "batch_size": ckpt["train_config"].get("batch_size") or plan.batch_size,
                               "features": plan.features, "strides": plan.strides, "n_stages": len(plan.features)}
                if "lowres" in ckpt:
                    low = Plan.from_dict(ckpt["lowres"]["plan"])
                    row["plan"]["lowres"] = {"target_spacing_mm": low.target_spacing_mm,
                                             "patch_size_vox": low.patch_size_vox, "features": low.features}
                row["plan_full"] = ckpt["plan"]
                # Largest-component postprocessing chosen on validation: part of the server's "post" time.
                row["postprocessing"] = (ckpt.get("postprocessing") or {}).get("largest_component_labels", [])
                networks, shapes = our_networks(model, ckpt)
                row["parameters"] = sum(p.numel() for n in networks for p in n.parameters())
                row["train_images"], row["val_images"] = ckpt.get("train_images"), ckpt.get("val_images")
                wait_idle(srv)
                log(f"ours: {model} on the held-out subjects and the template")
                row["scores"] = score_sets(lambda case, image: rest_infer(srv.url, model, image)[0], sets, labels)
                template = sets["template"]["template"][0]
                log(f"ours: {model} REST infer timing on the 1 mm template")
                row["infer"] = timed_infer(srv, model, template, mode["repeats"], {}, gpu, warmup=True)
                row["infer_tta"] = timed_infer(srv, model, template, mode["tta_repeats"], {"tta": True}, gpu,
                                               warmup=False)
                row["forward"] = forward_speed(networks, shapes, "cuda" if gpu else "cpu")
            except Exception as e:  # one model failing must not hide the others' numbers
                traceback.print_exc()
                row["error"] = f"{type(e).__name__}: {e}"
        split_path = studies / ".medseg" / "split.json"
        server_split = json.loads(split_path.read_text()) if split_path.exists() else None
        expected = {f"{n}.nii.gz": side for side in ("train", "val") for n in split[side]}
        for row in rows.values():
            # The peers were given `split`; say so if the server split otherwise (it should not).
            row["split_matches_peers"] = server_split == expected if server_split is not None else None
    return rows


# ---------------------------------------------------------------- peers


def reference_plan(ours: dict) -> tuple[dict | None, str | None]:
    """The plan the peers are matched to: our unet3d's (same network as nnU-Net's PlainConvUNet)."""
    row = ours.get("unet3d")
    if row and "plan_full" in row:
        return row["plan_full"], "unet3d"
    return None, None


def run_nnunet(sets: dict, split: dict, mode: dict, labels: dict, device: str, ours: dict) -> dict:
    import nnunet

    plan, source = reference_plan(ours)
    train_pairs = {n: sets["train"][n] for n in split["train"] + split["val"]}
    res = nnunet.run(WORK / "nnunet", train_pairs, split, {n: p[0] for n, p in sets["heldout"].items()},
                     sets["template"]["template"][0], labels, mode["iterations"], plan, device, mode["repeats"],
                     mode["tta_repeats"], log)
    predictions = res.pop("predictions")
    row = {"model": NNUNET, "kind": "peer", **res}
    row["plan"] = res["plan_used"]
    row["scores"] = score_sets(lambda case, image: read_label(Path(predictions[case]))[0], sets, labels)
    row["train"] = {"wall_s": res["steps"]["train"]["wall_s"], "iterations": mode["iterations"],
                    "iterations_per_s": {"main": res["train_iterations_per_s"]},
                    **{k: v for k, v in res["steps"]["train"].items() if k != "wall_s"}}
    row["infer"] = nnunet_timing(res["predict"], "plain")
    row["infer_tta"] = nnunet_timing(res["predict"], "tta")
    if plan is not None:
        row["forward"] = {"same_network_as": source}
    return row


def nnunet_timing(report: dict, key: str) -> dict:
    """Median phases of the warm predictor's timed runs (memory: the whole predictor process)."""
    timed = report[key]
    phases = ("pre", "infer", "post", "total")
    return {"repeats": len(timed), "client_s_median": round(float(np.median([t["total"] for t in timed])), 3),
            "server_s_median": {k: round(float(np.median([t[k] for t in timed])), 3) for k in phases},
            "runs": timed, "warm_process": True,
            **{k: report[k] for k in ("peak_rss_mb", "peak_gpu_mb", "peak_gpu_allocated_mb", "gpu_util_mean_pct")
               if report.get(k) is not None}}


def run_segresnet(sets: dict, split: dict, mode: dict, labels: dict, device: str, ours: dict, nn_row: dict) -> dict:
    import monailabel_segmentation as sample

    plan, source = reference_plan(ours)
    if plan is None and nn_row and "plan_used" in nn_row:
        plan, source = nn_row["plan_used"], NNUNET
    if plan is None:
        raise RuntimeError("the MONAI Label peer needs a reference plan (train unet3d or run nnU-Net)")
    roi = [int(math.ceil(p / SEGRESNET_DIVISOR) * SEGRESNET_DIVISOR) for p in plan["patch_size_vox"]]
    spacing = [float(s) for s in plan["target_spacing_mm"]]
    batch = int(plan.get("batch_size") or 2)
    run_dir = WORK / "monailabel_segmentation"
    shutil.rmtree(run_dir, ignore_errors=True)
    studies = run_dir / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    datalists = {}
    for side in ("train", "val"):
        datalists[side] = []
        for name in split[side]:
            image, label = sets["train"][name]
            shutil.copyfile(image, studies / f"{name}.nii.gz")
            shutil.copyfile(label, studies / "labels" / "final" / f"{name}.nii.gz")
            datalists[side].append({"image": str(studies / f"{name}.nii.gz"),
                                    "label": str(studies / "labels" / "final" / f"{name}.nii.gz")})
    gpu = device.startswith("cuda")
    app_dir = sample.prepare_app(run_dir / "app")
    request, budget = sample.train_request(datalists["train"], datalists["val"], run_dir, mode["iterations"], batch,
                                           "cuda" if gpu else "cpu")
    row = {"model": SEGRESNET, "kind": "peer", "source": str(sample.SAMPLE_APP),
           "plan": {"target_spacing_mm": spacing, "patch_size_vox": roi, "batch_size": batch, "matched_to": source},
           "budget": budget}
    log_path = run_dir / "server.log"
    with sample.SampleAppServer(app_dir, studies, sample.conf_for(roi, spacing), log_path) as srv:
        log(f"MONAI Label segmentation: train {budget['epochs']} epochs x {budget['iterations_per_epoch']} iterations")
        t0 = time.perf_counter()
        sample.start_training(srv, request)
        with ProcessTreeMonitor(srv.proc.pid, gpu=gpu) as mon:
            status = srv.wait_for("train", timeout_s=6 * 3600)
        if status.get("status") != "DONE":
            raise RuntimeError(f"training failed: {json.dumps(status)[-1500:]}")
        train_s = sample.train_seconds(log_path)
        row["train"] = {"wall_s": round(time.perf_counter() - t0, 1), "iterations": budget["iterations"],
                        "iterations_per_s": {"main": train_s["iterations_per_s"]}, "log_timing": train_s,
                        **mon.result()}
        if gpu and train_s["window"]:
            row["train"].update(mon.busy_between(*train_s["window"]))
        log("MONAI Label segmentation: held-out subjects and template")
        row["scores"] = score_sets(lambda case, image: rest_infer(srv.url, sample.MODEL, image)[0], sets, labels)
        log("MONAI Label segmentation: REST infer timing on the 1 mm template")
        row["infer"] = timed_infer(srv, sample.MODEL, sets["template"]["template"][0], mode["repeats"], {}, gpu,
                                   warmup=True)
    net = segresnet_network(len(labels) + 1)
    row["parameters"] = sum(p.numel() for p in net.parameters())
    row["forward"] = forward_speed([net], [(1, *roi)], "cuda" if gpu else "cpu")
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU-sized run (see MODES)")
    ap.add_argument("--models", default=None, help="comma list of our models, 'all', or 'none'; default by mode")
    ap.add_argument("--peers", default="nnunet,monailabel", help="comma list of nnunet, monailabel (or none)")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--spacing", type=float, default=None, help="resample the training data to this isotropic mm "
                    "(0: their own spacing)")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-heldout", type=int, default=None)
    ap.add_argument("--gpu-memory-gb", type=float, default=None, help="our planning budget (sizes patch and batch)")
    ap.add_argument("--repeats", type=int, default=None, help="timed infer requests without TTA")
    ap.add_argument("--tta-repeats", type=int, default=None, help="timed infer requests with TTA")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--nnunet-venv", default=None, help="an existing environment with nnunetv2 (default: "
                    "bench/work/nnunet-venv, made on first use from the package registry)")
    ap.add_argument("--no-readme", action="store_true", help="do not regenerate the tables in bench/README.md and docs/benchmarks.md")
    args = ap.parse_args(argv)

    import torch

    from medseg.data.pseudo_subjects import SEED_HELDOUT, SEED_TRAIN
    from medseg.data.template import TISSUE_LABELS
    from medseg.models import MODELS

    mode_name = "quick" if args.quick else "full"
    mode = dict(MODES[mode_name])
    for key, value in (("models", args.models), ("iterations", args.iterations), ("n_train", args.n_train),
                       ("n_heldout", args.n_heldout), ("gpu_memory_gb", args.gpu_memory_gb),
                       ("repeats", args.repeats), ("tta_repeats", args.tta_repeats)):
        if value is not None:
            mode[key] = value
    if args.spacing is not None:
        mode["spacing_mm"] = args.spacing or None
    models = (list(MODELS) if mode["models"] == "all" else [] if mode["models"] == "none"
              else [m for m in mode["models"].split(",") if m])
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown models {unknown}; available: {', '.join(MODELS)}")
    peers = [p for p in args.peers.split(",") if p and p != "none"]
    if args.nnunet_venv:
        import nnunet

        nnunet.VENV = Path(args.nnunet_venv).resolve()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    labels = dict(TISSUE_LABELS)

    t_start = time.time()
    load_start = os.getloadavg()  # other processes on the machine slow every number down: say so
    if load_start[0] > 0.5 * (os.cpu_count() or 1):
        log(f"warning: 1-minute load average {load_start[0]:.2f} on {os.cpu_count()} cores before the suite starts; "
            "other processes will inflate every time measured (the results record the load)")
    log(f"suite {mode_name}: models {models}, peers {peers}, {device}, {json.dumps(mode)}")
    sets = prepare_data(mode)
    split = fixed_split(sorted(sets["train"]))
    log(f"data ready ({time.time() - t_start:.0f} s): split {split}")
    rows, step_s = [], {}

    t0 = time.time()
    ours = run_ours(models, sets, split, mode, labels, device) if models else {}
    step_s["ours"] = round(time.time() - t0, 1)
    rows += list(ours.values())
    nn_row = None
    if "nnunet" in peers:
        t0 = time.time()
        try:
            nn_row = run_nnunet(sets, split, mode, labels, device, ours)
        except Exception as e:
            traceback.print_exc()
            nn_row = {"model": NNUNET, "kind": "peer", "error": f"{type(e).__name__}: {e}"}
        rows.append(nn_row)
        step_s["nnunet"] = round(time.time() - t0, 1)
    if "monailabel" in peers:
        t0 = time.time()
        try:
            rows.append(run_segresnet(sets, split, mode, labels, device, ours, nn_row))
        except Exception as e:
            traceback.print_exc()
            rows.append({"model": SEGRESNET, "kind": "peer", "error": f"{type(e).__name__}: {e}"})
        step_s["monailabel"] = round(time.time() - t0, 1)

    add_ratios(rows)
    for r in rows:  # JSON has no inf: a missed label's HD95 becomes null
        for subset in (r.get("scores") or {}).values():
            for case in [subset, *subset.get("cases", {}).values()]:
                case["hd95_mm"] = {k: json_number(v) for k, v in case["hd95_mm"].items()}
        r.pop("plan_full", None)
    machine = {**machine_info(), **versions(), "platform": platform.platform(), "device_used": device,
               "load_average_1min_start": round(load_start[0], 2), "load_average_1min_end": round(os.getloadavg()[0], 2)}
    result = {
        "machine": machine,
        "settings": {"mode": mode_name, **mode, "models": models, "peers": peers, "seed_train": SEED_TRAIN,
                     "seed_heldout": SEED_HELDOUT, "training_seed": 0},
        "split": split,
        "data": {k: sorted(v) for k, v in sets.items()},
        "rows": rows,
        "targets": targets(rows, device.startswith("cuda")),
        "step_s": step_s,
        "wall_s": round(time.time() - t_start, 1),
        # Making nnU-Net's environment happens once per machine, not per run.
        "nnunet_setup_s": (nn_row or {}).get("environment", {}).get("setup_s"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"suite_{mode_name}.json"
    out.write_text(json.dumps(result, indent=1, default=str))
    ok_rows = [r for r in rows if "error" not in r]
    if ok_rows:
        plot(result, RESULTS / f"suite_{mode_name}.png", labels)
    if not args.no_readme:
        write_table(result, mode_name, labels)
    log(f"wrote {out} ({result['wall_s'] / 60:.1f} min)")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
