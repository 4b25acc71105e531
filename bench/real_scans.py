"""Shipped brain models on raw scans: a real head with its skull, and noise everywhere.

Test data, none of it seen in training:
* Colin27 (sample-data/colin27): a real T1 of one person, with skull, neck and face
  (``ch2``) and skull-stripped (``ch2bet``); scored by brain-mask Dice against ch2bet
  and grey-matter recall inside the AAL cortical and deep grey regions
  (``medseg.data.colin27``);
* held-out pseudo-subjects (seed 1000) of both kinds: ``brain`` (extracted, zero
  background) and its noisy twin (the same subject with Rician noise over the whole field
  of view, 3% of the tissue peak), and ``head`` (synthetic skull, neck and face, noise
  everywhere, thick slices and other orientations), scored by Dice per tissue.

Every prediction goes through the server's own ``Predictor`` (preprocessing included),
the same call an infer request makes. The shipped models that trained on extracted brains
only are run on Colin27 too, with the brain-extraction stage (``pipeline/brain_extraction.py``:
the shipped unet3d finds the brain first) and without it. ``--checkpoint name=path`` adds weights to
compare (for example the brain-only weights of an earlier commit).

    python bench/real_scans.py --checkpoint brain_only=work/unet3d_brain_only.pt
    python bench/real_scans.py --tta --stage-models ""   # the shipped weights with mirror TTA
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info, update_readme_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"colin27_brain_mask_dice": 0.95, "colin27_grey_matter_recall": 0.75, "noisy_heldout_dice": 0.85}


def noisy_twin(image: np.ndarray, fraction: float = 0.03, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sigma = fraction * float(np.percentile(image[image > 0], 99))
    return np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2)


def evaluate(predictor, work: Path, n: int, tta: bool = False) -> dict:
    from medseg.data.colin27 import COLIN27_BRAIN, COLIN27_HEAD, score_tissue_prediction
    from medseg.data.pseudo_subjects import SEED_HELDOUT, generate
    from medseg.data.template import TISSUE_LABELS
    from medseg.imageio import read_volume
    from medseg.volume import Volume
    from medseg.pipeline.metrics import dice_per_label

    out = {"colin27": {}}
    for key, path in (("with_skull", COLIN27_HEAD), ("skull_stripped", COLIN27_BRAIN)):
        p = predictor(read_volume(path), tta=tta)
        out["colin27"][key] = dict(score_tissue_prediction(p.labels), seconds=p.latencies_s["total"])
    sets = {"brain": generate(work / "brain", n, seed=SEED_HELDOUT, prefix="heldout"),
            "head": generate(work / "head", n, seed=SEED_HELDOUT, prefix="heldout_head", kind="head")}
    for kind, records in sets.items():
        for r in records:
            image = read_volume(work / kind / "images" / f"{r['name']}.nii.gz")
            truth = read_volume(work / kind / "labels" / f"{r['name']}.nii.gz").array.astype(np.uint8)
            variants = {kind: image}
            if kind == "brain":
                variants["brain_noisy"] = Volume(noisy_twin(image.array).astype(np.float32), image.affine,
                                                 image.header)
            for variant, volume in variants.items():
                p = predictor(volume, tta=tta)
                out.setdefault(variant, {})[r["name"]] = dice_per_label(p.labels, truth, TISSUE_LABELS)
    for variant in ("brain", "brain_noisy", "head"):
        cases = out[variant]
        out[f"{variant}_mean"] = {k: round(float(np.mean([c[k] for c in cases.values()])), 4) for k in TISSUE_LABELS}
    out["noisy_minus_clean"] = {k: round(out["brain_noisy_mean"][k] - out["brain_mean"][k], 4) for k in TISSUE_LABELS}
    c = out["colin27"]["with_skull"]
    out["targets"] = {
        "colin27_brain_mask_dice": {"value": c["brain_mask_dice"], "target": TARGETS["colin27_brain_mask_dice"]},
        "colin27_grey_matter_recall": {"value": c["grey_matter_recall_in_aal"],
                                       "target": TARGETS["colin27_grey_matter_recall"]},
        "noisy_heldout_dice": {"value": min(out["brain_noisy_mean"].values()),
                               "target": TARGETS["noisy_heldout_dice"]},
    }
    for t in out["targets"].values():
        t["met"] = t["value"] >= t["target"]
    return out


def evaluate_extraction_stage(names: list[str]) -> dict:
    """Colin27 with its skull through each brain-only model, with the brain-extraction stage and without."""
    from medseg.checkpoint import load_checkpoint
    from medseg.data.colin27 import COLIN27_BRAIN, COLIN27_HEAD, score_tissue_prediction
    from medseg.imageio import read_volume
    from medseg.models import MODELS

    head, brain = read_volume(COLIN27_HEAD), read_volume(COLIN27_BRAIN)
    out = {}
    for name in names:
        predictor = MODELS[name].predictor(load_checkpoint(REPO / "apps" / "medseg" / "model" / name / "model.pt"),
                                           torch.device("cpu"))
        if predictor.brain_extractor is None:
            continue
        staged = predictor(head)
        row = {"with_stage": dict(score_tissue_prediction(staged.labels), seconds=staged.latencies_s["total"],
                                  extraction_seconds=staged.latencies_s["brain_extraction"])}
        row["skull_stripped_with_stage"] = score_tissue_prediction(predictor(brain).labels)
        predictor.brain_extractor = None
        row["without_stage"] = score_tissue_prediction(predictor(head).labels)
        out[name] = row
        print(json.dumps({name: row}), flush=True)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="unet3d")
    ap.add_argument("--checkpoint", action="append", default=[], help="name=path of other weights to compare")
    ap.add_argument("--n", type=int, default=3, help="held-out subjects per kind")
    ap.add_argument("--work", default=str(REPO / "work" / "bench-real-scans"))
    ap.add_argument("--out", default=None)
    ap.add_argument("--stage-models", default="unet2d,resenc_unet,vnet,swin_unet,nnformer,cascade",
                    help="brain-only models to run with and without the brain-extraction stage ('' for none)")
    ap.add_argument("--tta", action="store_true",
                    help="predict with mirror TTA (the infer option tta: true); results and table get a _tta suffix")
    args = ap.parse_args(argv)
    suffix = "_tta" if args.tta else ""

    from medseg.checkpoint import load_checkpoint
    from medseg.models import MODELS

    info = machine_info()
    info["load_average_before"] = [round(x, 2) for x in os.getloadavg()]
    spec = MODELS[args.model]
    weights = {"shipped": REPO / "apps" / "medseg" / "model" / args.model / "model.pt"}
    weights.update(dict(item.split("=", 1) for item in args.checkpoint))
    results = {}
    for name, path in weights.items():
        checkpoint = load_checkpoint(path)
        predictor = spec.predictor(checkpoint, torch.device("cpu"))
        results[name] = {"weights": str(path), "trained_on": checkpoint.get("trained_on"),
                         **evaluate(predictor, Path(args.work), args.n, args.tta)}
        print(json.dumps({name: {k: results[name][k] for k in ("colin27", "noisy_minus_clean", "targets")}}), flush=True)
    stage = evaluate_extraction_stage([n for n in args.stage_models.split(",") if n])
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out or REPO / "bench" / "results" / f"real_scans_{args.model}{suffix}.json")
    out.write_text(json.dumps({"machine": info, "data": __doc__.split("\n\n")[1], "tta": args.tta, "results": results,
                               "extraction_stage": stage}, indent=1))
    print(f"wrote {out}")
    rows = []
    for name, r in results.items():
        c, s = r["colin27"]["with_skull"], r["colin27"]["skull_stripped"]
        rows.append([name, f"{c['brain_mask_dice']:.3f} / {c['grey_matter_recall_in_aal']:.3f}",
                     f"{s['brain_mask_dice']:.3f} / {s['grey_matter_recall_in_aal']:.3f}",
                     *(" / ".join(f"{r[v][k]:.3f}" for k in ("grey_matter", "white_matter"))
                       for v in ("brain_mean", "brain_noisy_mean", "head_mean"))])
    update_readme_table(
        REPO / "bench" / "README.md", f"real_scans_{args.model}{suffix}",
        ["weights", "Colin27 with skull: brain-mask Dice / GM recall", "Colin27 skull-stripped",
         "held-out brains GM / WM Dice", "same, noise everywhere", "held-out heads"], rows,
        f"`{args.model}`{' with mirror TTA (`tta: true`)' if args.tta else ''}, generated by "
        f"`bench/real_scans.py{' --tta' if args.tta else ''}` on {info['date']} ({info['cpu']}, {info['threads']} "
        f"threads, torch {info['torch']}; load {info['load_average_before']}). Targets: Colin27 with skull "
        f"brain-mask Dice >= {TARGETS['colin27_brain_mask_dice']}, GM recall >= {TARGETS['colin27_grey_matter_recall']}; "
        f"noisy held-out Dice >= {TARGETS['noisy_heldout_dice']}. Seconds for Colin27 with skull: "
        + ", ".join(f"{name} {r['colin27']['with_skull']['seconds']:.1f}" for name, r in results.items()) + ".")
    if stage:
        update_readme_table(
            REPO / "bench" / "README.md", "real_scans_extraction_stage",
            ["model", "Colin27 with skull, with the stage: brain-mask Dice / GM recall", "without the stage",
             "Colin27 skull-stripped, with the stage", "s per image (of which extraction)"],
            [[f"`{name}`", f"{r['with_stage']['brain_mask_dice']:.3f} / {r['with_stage']['grey_matter_recall_in_aal']:.3f}",
              f"{r['without_stage']['brain_mask_dice']:.3f} / {r['without_stage']['grey_matter_recall_in_aal']:.3f}",
              f"{r['skull_stripped_with_stage']['brain_mask_dice']:.3f} / "
              f"{r['skull_stripped_with_stage']['grey_matter_recall_in_aal']:.3f}",
              f"{r['with_stage']['seconds']:.1f} ({r['with_stage']['extraction_seconds']:.1f})"]
             for name, r in stage.items()],
            f"The shipped models that trained on extracted brains only, on Colin27 (a real head none of them "
            f"trained on), generated by `bench/real_scans.py` on {info['date']} ({info['cpu']}, {info['threads']} "
            f"threads; load {info['load_average_before']}). With the stage, the shipped `unet3d` finds the brain "
            f"first and the rest of the head is set to zero.")


if __name__ == "__main__":
    main()
