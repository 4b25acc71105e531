"""Benchmark: what test-time augmentation, postprocessing and ensembling buy, for shipped weights.

For each held-out pseudo-subject (the model card's test seed) and the original 1 mm
template, run the server's Predictor with and without mirror TTA and with and
without largest-component postprocessing, and the ensemble (mean softmax) of the two
shipped models with the best recorded validation Dice; record Dice per label and time.
Writes bench/results/pipeline_options_<model>.json and regenerates the table between
the markers in bench/README.md.

    python bench/pipeline_options.py --model unet3d [--n-heldout 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from common import machine_info, update_readme_table  # noqa: E402

from medseg.checkpoint import load_checkpoint, plan_of  # noqa: E402
from medseg.data.pseudo_subjects import SEED_HELDOUT, generate  # noqa: E402
from medseg.data.template import TEMPLATE_LABELS, TEMPLATE_T1, TISSUE_LABELS  # noqa: E402
from medseg.imageio import read_volume  # noqa: E402
from medseg.models import MODELS  # noqa: E402
from medseg.pipeline.metrics import dice_per_label  # noqa: E402
from medseg.pipeline.postprocess import class_argmax, keep_largest_component  # noqa: E402
from medseg.pipeline.predictor import Predictor  # noqa: E402
from medseg.pipeline.training import pick_device  # noqa: E402


def shipped_predictor(name: str, device) -> tuple[Predictor, dict]:
    """The shipped weights of a model, without postprocessing (applied per variant below)."""
    ckpt = load_checkpoint(REPO / "apps" / "medseg" / "model" / name / "model.pt")
    network = MODELS[name].build(plan_of(ckpt))
    network.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    return Predictor(network, plan_of(ckpt), device), ckpt


def two_best_shipped() -> list[str]:
    """The two shipped models with the best recorded validation Dice (mean over labels)."""
    scores = {}
    for name in MODELS:
        path = REPO / "apps" / "medseg" / "model" / name / "model.pt"
        if path.exists():
            dice = load_checkpoint(path).get("val_dice_per_label") or {}
            scores[name] = float(np.mean(list(dice.values()))) if dice else 0.0
    return sorted(scores, key=lambda n: -scores[n])[:2]


def run(model: str, n_heldout: int, work: Path) -> dict:
    device = pick_device()
    predictor, ckpt = shipped_predictor(model, device)
    generate(work / "heldout", n_heldout, seed=SEED_HELDOUT, prefix="heldout")
    cases = [(p.name, p, work / "heldout" / "labels" / p.name)
             for p in sorted((work / "heldout" / "images").glob("*.nii.gz"))[:n_heldout]]
    cases.append(("template_1mm", TEMPLATE_T1, TEMPLATE_LABELS))
    ensemble_names = two_best_shipped()
    ensemble = [shipped_predictor(n, device)[0] for n in ensemble_names] if len(ensemble_names) == 2 else []

    rows = []
    for name, image_path, label_path in cases:
        image = read_volume(image_path)
        truth = np.rint(read_volume(label_path).array).astype(np.uint8)
        for tta in (False, True):
            pred = predictor(image, tta=tta)
            lcc_start = time.perf_counter()
            lcc = pred.labels
            for value in TISSUE_LABELS.values():
                lcc = keep_largest_component(lcc, value)
            lcc_s = time.perf_counter() - lcc_start
            for post, labels, extra in (("none", pred.labels, 0.0), ("largest_component", lcc, lcc_s)):
                rows.append({
                    "case": name, "tta": tta, "postprocessing": post,
                    "dice": dice_per_label(labels, truth, TISSUE_LABELS),
                    "seconds": round(pred.latencies_s["total"] + extra, 2),
                })
                print(json.dumps(rows[-1]), flush=True)
        if ensemble:
            preds = [p(image, probabilities=True) for p in ensemble]
            labels = class_argmax(sum(p.probabilities for p in preds) / len(preds), axis=-1)
            rows.append({
                "case": name, "tta": False, "postprocessing": "none", "ensemble": ensemble_names,
                "dice": dice_per_label(labels, truth, TISSUE_LABELS),
                "seconds": round(sum(p.latencies_s["total"] for p in preds), 2),
            })
            print(json.dumps(rows[-1]), flush=True)
    return {"model": model, "weights_version": ckpt.get("version"), "rows": rows, "ensemble": ensemble_names,
            "chosen_postprocessing": (ckpt.get("postprocessing") or {}).get("largest_component_labels", [])}


def summarize(result: dict) -> list[dict]:
    out = []
    variants = [(result["model"], tta, post) for tta in (False, True) for post in ("none", "largest_component")]
    if result.get("ensemble"):
        variants.append(("ensemble " + " + ".join(result["ensemble"]), False, "none"))
    for label, tta, post in variants:
        is_ensemble = label.startswith("ensemble")
        for subset, pick in (("held-out", lambda r: r["case"] != "template_1mm"),
                             ("template", lambda r: r["case"] == "template_1mm")):
            rows = [r for r in result["rows"] if r["tta"] == tta and r["postprocessing"] == post and pick(r)
                    and ("ensemble" in r) == is_ensemble]
            if not rows:
                continue
            out.append({
                "model": label, "subset": subset, "tta": tta, "postprocessing": post,
                **{f"dice_{k}": round(float(np.mean([r["dice"][k] for r in rows])), 4) for k in TISSUE_LABELS},
                "median_seconds": round(float(np.median([r["seconds"] for r in rows])), 2),
            })
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="unet3d", choices=sorted(MODELS))
    ap.add_argument("--n-heldout", type=int, default=3)
    ap.add_argument("--work", default=str(REPO / "work" / "bench"))
    args = ap.parse_args(argv)
    result = run(args.model, args.n_heldout, Path(args.work))
    result["summary"] = summarize(result)
    result["machine"] = machine_info()
    out = REPO / "bench" / "results" / f"pipeline_options_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    header = ["model", "subset", "TTA", "postprocessing"] + [f"Dice {k}" for k in TISSUE_LABELS] + ["median s"]
    table = [[s["model"], s["subset"], "yes" if s["tta"] else "no", s["postprocessing"]]
             + [f"{s[f'dice_{k}']:.3f}" for k in TISSUE_LABELS] + [f"{s['median_seconds']:.1f}"]
             for s in result["summary"]]
    m = result["machine"]
    caption = (f"`{args.model}` shipped weights v{result['weights_version']}, {m['date']}, {m['device']} "
               f"({m['cpu']}, {m['threads']} threads), torch {m['torch']}; generated by bench/pipeline_options.py")
    update_readme_table(REPO / "bench" / "README.md", f"pipeline_options_{args.model}", header, table, caption)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
