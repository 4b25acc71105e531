"""Benchmark: every model of the zoo, side by side.

For each model: parameters, forward FLOPs for one patch of its plan (batch 1; both
stages for the cascade), peak memory, end-to-end infer time on the 1 mm sample
volume (the MNI template: read, preprocess, sliding window, inverse, write, as the
infer task does it), and, for shipped weights, Dice per label on the held-out
pseudo-subjects (the model cards' test seed). Runs on the CPU, and on the GPU too
when there is one. Each model runs in its own process, so peak memory is its own:
on the CPU the peak resident set size of that process (Python and PyTorch included),
on the GPU the peak memory PyTorch allocated.

Writes bench/results/models_<device>.json and the table between the markers in
bench/README.md and docs/benchmarks.md.

    python bench/models.py [--models unet3d,unet2d] [--devices cpu,cuda] [--n-heldout 3]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from common import machine_info, update_readme_table  # noqa: E402

SHIPPED_DIR = REPO / "apps" / "medseg" / "model"


def forward_flops(network, channels: int, patch: list[int]) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, channels, *patch)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network.eval()(x)
    return int(counter.get_total_flops())


def measure_one(name: str, device_name: str, n_heldout: int, repeats: int) -> dict:
    """Everything for one model, in this process (called in a fresh subprocess)."""
    import torch

    from medseg.checkpoint import ModelStore, load_checkpoint
    from medseg.data.pseudo_subjects import SEED_HELDOUT, generate
    from medseg.data.template import TEMPLATE_T1, TISSUE_LABELS
    from medseg.imageio import read_volume
    from medseg.models import MODELS
    from medseg.pipeline.plan import Plan
    from medseg.pipeline.metrics import dice_per_label
    from medseg.tasks.infer import MedSegInferTask

    spec = MODELS[name]
    device = torch.device(device_name)
    ckpt = load_checkpoint(SHIPPED_DIR / name / "model.pt")
    stages = [ckpt["lowres"], ckpt] if spec.cascade else [ckpt]
    params, flops = 0, 0
    for stage_ckpt, stage_spec in zip(stages, [MODELS["cascade_lowres"], spec] if spec.cascade else [spec]):
        plan = Plan.from_dict(stage_ckpt["plan"])
        network = stage_spec.network(stage_ckpt)
        params += sum(p.numel() for p in network.parameters())
        flops += forward_flops(network, 1 + plan.previous_stage_channels, plan.patch_size_vox)

    store = ModelStore(name, SHIPPED_DIR, Path(tempfile.mkdtemp()) / "none")
    task = MedSegInferTask(spec, store, TISSUE_LABELS, device_name, tta=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(repeats + 1):  # the first call loads the weights and warms up
        t0 = time.perf_counter()
        out_path, _meta = task({"image": str(TEMPLATE_T1)})
        seconds.append(time.perf_counter() - t0)
        os.unlink(out_path)

    heldout_dir = REPO / "work" / "bench" / "heldout"
    generate(heldout_dir, n_heldout, seed=SEED_HELDOUT, prefix="heldout")
    predictor, _ = task.predictor()
    scores = []
    for image_path in sorted((heldout_dir / "images").glob("*.nii.gz"))[:n_heldout]:
        truth = np.rint(read_volume(heldout_dir / "labels" / image_path.name).array).astype(np.uint8)
        with torch.inference_mode():
            scores.append(dice_per_label(predictor(read_volume(image_path)).labels, truth, TISSUE_LABELS))

    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {
        "model": name,
        "device": device_name,
        "parameters": params,
        "forward_gflops_per_patch": round(flops / 1e9, 2),
        "patch_size_vox": Plan.from_dict(ckpt["plan"]).patch_size_vox,
        "peak_memory_mb": round(peak_mb),
        "peak_memory_kind": "cuda max allocated" if device.type == "cuda" else "process peak RSS",
        "infer_seconds_1mm": round(float(np.median(seconds[1:])), 2),
        "infer_seconds_first_call": round(seconds[0], 2),
        "heldout_dice_per_label": {k: round(float(np.mean([s[k] for s in scores])), 4) for k in TISSUE_LABELS},
        "n_heldout": len(scores),
        "weights_version": ckpt.get("version"),
    }


def shipped_models() -> list[str]:
    from medseg.models import MODELS

    return [name for name in MODELS if (SHIPPED_DIR / name / "model.pt").exists()]


def run_in_subprocess(name: str, device: str, n_heldout: int, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--devices", device, "--n-heldout", str(n_heldout),
           "--repeats", str(repeats)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_tables(result: dict) -> None:
    from medseg.data.template import TISSUE_LABELS

    header = (["model", "device", "parameters", "GFLOPs / patch", "patch", "peak memory MB", "infer s (1 mm)"]
              + [f"held-out Dice {k}" for k in TISSUE_LABELS])
    rows = [[f"`{r['model']}`", r["device"], f"{r['parameters']:,}", f"{r['forward_gflops_per_patch']:.1f}",
             "x".join(map(str, r["patch_size_vox"])), str(r["peak_memory_mb"]), f"{r['infer_seconds_1mm']:.1f}"]
            + [f"{r['heldout_dice_per_label'][k]:.3f}" for k in TISSUE_LABELS] for r in result["rows"]]
    m = result["machine"]
    caption = (f"Shipped weights, {m['date']}, {m['cpu']} ({m['threads']} threads)"
               + (f", GPU {m['gpu']}" if m.get("gpu") else "")
               + f", torch {m['torch']}; peak memory is the process's peak RSS on the CPU and PyTorch's peak "
               f"allocation on the GPU; generated by bench/models.py")
    for readme in (REPO / "bench" / "README.md", REPO / "docs" / "benchmarks.md"):
        update_readme_table(readme, "models", header, rows, caption)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="", help="comma list; default: every model with shipped weights")
    ap.add_argument("--devices", default="", help="comma list; default: cpu, and cuda when present")
    ap.add_argument("--n-heldout", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="timed infer calls after the warm-up call")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(args.one, args.devices, args.n_heldout, args.repeats)))
        return

    import torch

    names = [n for n in args.models.split(",") if n] or shipped_models()
    devices = [d for d in args.devices.split(",") if d] or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for device in devices:
        for name in names:
            rows.append(run_in_subprocess(name, device, args.n_heldout, args.repeats))
            print(json.dumps(rows[-1]), flush=True)
    result = {"machine": machine_info(), "rows": rows}
    out = REPO / "bench" / "results" / f"models_{'_'.join(devices)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    write_tables(result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
