"""Train the shipped interactive model (apps/medseg/model/interactive/) and write its model card.

Objects (every one a separate target; the model never sees a label name):
- Colin27 with its skull (a real 1 mm T1, ``sample-data/colin27``): the odd-numbered AAL
  regions, and the brain (``ch2bet``). The even-numbered regions are held out: no weight
  ever saw them, and the card and ``bench/interactive.py`` measure on them;
- the MNI 2009a template: grey and white matter;
- the slicerio chest CT (3x3x10 mm): its 7 labels;
- synthetic lesions (``medseg.data.lesions``) pasted into all three;
- real gliomas, where ``../shared/data/brats`` is present: the TRAIN_CASES of the fixed split in
  ``medseg.data.brats`` only (whole tumour on FLAIR and on T2, tumour core and enhancing tumour
  on T1ce). Its HELD_OUT_CASES are never read here; ``bench/interactive_brats.py`` reports on them.

    python scripts/train_interactive_model.py --minutes 35
    python scripts/train_interactive_model.py --minutes 35 --resume   # continue the shipped weights
    python scripts/train_interactive_model.py --check-only   # the card's quick check redone, no training
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

import medseg
from medseg.checkpoint import load_checkpoint, save_checkpoint
from medseg.durable import write_bytes_atomic
from medseg.data import brats
from medseg.data.lesions import paste_lesions
from medseg.data.template import TEMPLATE_LABELS, TEMPLATE_T1
from medseg.imageio import read_volume
from medseg.nrrd_files import read_segmentation_as_label
from medseg.pipeline.click_simulation import clicks_to_reach
from medseg.pipeline.interactive_model import InteractiveModel, network_config, network_from_checkpoint
from medseg.pipeline.interactive_training import ObjectImage, click_curve, train_interactive

REPO = Path(__file__).resolve().parents[1]
COLIN = REPO / "sample-data" / "colin27"
OUT = REPO / "apps" / "medseg" / "model" / "interactive"
CHEST_LABELS = {"ribs": 1, "cervical_vertebral_column": 2, "thoracic_vertebral_column": 3,
                "lumbar_vertebral_column": 4, "right_lung": 5, "left_lung": 6, "tissue": 7}
AAL_TRAIN = list(range(1, 117, 2))
AAL_HELD_OUT = list(range(2, 117, 2))
CARD_HELD_OUT = AAL_HELD_OUT[::6]  # 10 regions spread over the atlas, for the card's quick check
CARD_TRAINED = AAL_TRAIN[::12]
GLIOMA_SHARE = 0.3  # of all samples, when the BraTS training cases are present


def object_images(n_lesion_crops: int) -> list[ObjectImage]:
    colin = read_volume(str(COLIN / "ch2.nii.gz"))
    aal = np.rint(read_volume(str(COLIN / "aal.nii.gz")).array).astype(np.int16)
    brain = read_volume(str(COLIN / "ch2bet.nii.gz")).array > 0
    template = read_volume(str(TEMPLATE_T1))
    tissues = np.rint(read_volume(str(TEMPLATE_LABELS)).array).astype(np.uint8)
    data = resources.files("slicerio") / "data"
    ct = read_volume(str(data / "CTChest4.nrrd"))
    chest = read_segmentation_as_label(str(data / "Segmentation.seg.nrrd"), CHEST_LABELS, ct, "the segmentation").array
    gliomas = glioma_images(GLIOMA_SHARE) if brats.available() else []
    if not gliomas:
        print(f"no real gliomas: {brats.why_absent()}", flush=True)
    rest = 1.0 - (GLIOMA_SHARE if gliomas else 0.0)  # the shares below are of what the gliomas leave
    images = gliomas + [
        ObjectImage("colin27_aal_odd", colin.array.astype(np.float32), colin.spacing_mm, aal, AAL_TRAIN,
                    weight=0.35 * rest),
        ObjectImage("colin27_brain", colin.array.astype(np.float32), colin.spacing_mm, brain.astype(np.uint8),
                    weight=0.05 * rest),
        ObjectImage("mni_tissues", template.array.astype(np.float32), template.spacing_mm, tissues, weight=0.1 * rest),
        ObjectImage("chest_ct", ct.array.astype(np.float32), ct.spacing_mm, chest.astype(np.uint8),
                    weight=0.25 * rest),
    ]
    lesion_weight = 0.25 * rest / (3 * n_lesion_crops)  # a quarter of the rest, spread over the crops
    bodies = [(colin, colin.array > np.percentile(colin.array, 60)), (template, tissues > 0),
              (ct, ct.array > -500)]
    for n, (volume, body) in enumerate(bodies):
        for i, (crop, label) in enumerate(paste_lesions(volume.array, volume.spacing_mm, body, n_lesion_crops,
                                                        seed=10 + n)):
            images.append(ObjectImage(f"lesions_{n}_{i}", crop, volume.spacing_mm, label, weight=lesion_weight))
    return images


def glioma_images(share: float) -> list[ObjectImage]:
    """The training side of the BraTS split: per case, each object on the sequence it is read on,
    cropped to the brain; ``share`` of all samples, spread evenly."""
    import nibabel as nib

    reads = [("whole_tumour", "flair"), ("whole_tumour", "t2"), ("tumour_core", "t1ce"), ("enhancing_tumour", "t1ce")]
    images = []
    for case in brats.TRAIN_CASES:
        masks = {o.name: o for o in brats.objects((case,))}
        for name, sequence in reads:
            if name not in masks:
                continue
            image = np.asarray(nib.load(str(brats.BRATS_DIR / case / f"{case}_{sequence}.nii.gz")).dataobj, np.float32)
            brain = ndimage.find_objects((image != 0).astype(np.uint8))[0]
            images.append(ObjectImage(f"brats_{case}_{name}_{sequence}", np.ascontiguousarray(image[brain]),
                                      masks[name].spacing_mm, masks[name].mask[brain].astype(np.uint8)))
    for im in images:
        im.weight = share / len(images)
    return images


def quick_check(network, clicks: int = 10) -> dict:
    colin = read_volume(str(COLIN / "ch2.nii.gz"))
    aal = np.rint(read_volume(str(COLIN / "aal.nii.gz")).array).astype(int)
    model = InteractiveModel(network, torch.device("cpu"))
    out = {}
    for name, regions in (("held_out_aal", CARD_HELD_OUT), ("trained_aal", CARD_TRAINED)):
        curves = [click_curve(model, colin.array, colin.spacing_mm, aal == r, clicks) for r in regions]
        out[name] = {"regions": regions, "mean_dice_per_click": np.round(np.mean(curves, 0), 4).tolist(),
                     f"noc@85 (of {clicks})": round(float(np.mean([clicks_to_reach(c, 0.85, clicks) for c in curves])), 2)}
    return out


def training_record(trained: dict, learning_rate: float, earlier: dict | None) -> dict:
    """Iterations and seconds of all runs behind the weights (a resumed run adds to the earlier ones)."""
    runs = (earlier or {}).get("runs") or ([{k: earlier[k] for k in ("iterations", "seconds")}] if earlier else [])
    runs = runs + [{"iterations": trained["iterations"], "seconds": trained["seconds"], "learning_rate": learning_rate}]
    return {"iterations": sum(r["iterations"] for r in runs), "seconds": round(sum(r["seconds"] for r in runs), 1),
            "final_loss": trained["history"][-1]["loss"], "runs": runs}


def render_card(card: dict) -> str:
    check = card["quick_check"]
    lines = ["# Model card: `interactive` (generated by scripts/train_interactive_model.py; do not edit)", "",
             card["description"] + ".", "",
             "- **Objects trained on**: " + ", ".join(f"{k}: {v}" for k, v in card["data"]["objects"].items()) + ".",
             f"- **Held out**: {card['data']['held_out']}.",
             f"- **Inputs**: {card['inputs_tested']}.",
             f"- **Network**: patch {card['network']['patch_vox']} voxels, features {card['network']['features']}, "
             f"{card['network']['parameters']:,} parameters; guidance channels {', '.join(card['network']['guidance'])}; "
             f"clicks are balls of {card['network']['click_radius_mm']} mm.",
             f"- **Training**: {card['training']['iterations']} iterations, {card['training']['seconds']:.0f} s"
             f"{' in ' + str(len(card['training']['runs'])) + ' runs, each continuing the last' if len(card['training'].get('runs', [])) > 1 else ''}"
             f", final loss {card['training']['final_loss']} ({card['hardware']['cpu']}, "
             f"{card['hardware']['threads']} threads).",
             "- **Versions**: " + ", ".join(f"{k} {v}" for k, v in card["versions"].items()) + f". Trained {card['trained_at']}.",
             "", f"Quick check (the model called directly; simulated clicks on Colin27"
             f"{'; redone ' + card['quick_check_at'] + ' with the inference of that date' if card.get('quick_check_at') else ''}):", "",
             "| objects | regions | mean Dice after each click |", "|---|---|---|"]
    for name, result in check.items():
        lines.append(f"| {name} | {result['regions']} | {', '.join(f'{d:.2f}' for d in result['mean_dice_per_click'])} |")
    return "\n".join(lines) + "\n"


def recheck(out: Path) -> None:
    """The card's quick check redone on its own weights, so that it describes the inference that ships."""
    card = json.loads((out / "model_card.json").read_text())
    card["quick_check"] = quick_check(network_from_checkpoint(load_checkpoint(out / "model.pt")))
    card["quick_check_at"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(json.dumps(card["quick_check"], indent=1))
    write_bytes_atomic(out / "model_card.json", json.dumps(card, indent=1).encode())
    write_bytes_atomic(out / "MODEL_CARD.md", render_card(card).encode())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=35)
    ap.add_argument("--iterations", type=int, default=4000)
    ap.add_argument("--lesion-crops", type=int, default=8)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--resume", action="store_true", help="continue training the weights in --out")
    ap.add_argument("--learning-rate", type=float, default=None, help="default 1e-3, or 5e-4 with --resume")
    ap.add_argument("--check-only", action="store_true",
                    help="no training: rerun the quick check of the weights in --out with this version's inference "
                         "(after a change to it) and rewrite the card's figures")
    args = ap.parse_args(argv)
    if args.check_only:
        return recheck(Path(args.out))
    earlier = json.loads((Path(args.out) / "model_card.json").read_text())["training"] if args.resume else None
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    images = object_images(args.lesion_crops)
    print(f"{sum(len(im.objects) for im in images)} objects in {len(images)} images ({time.time() - t0:.0f} s)",
          flush=True)
    start = network_from_checkpoint(load_checkpoint(Path(args.out) / "model.pt")).train() if args.resume else None
    learning_rate = args.learning_rate or (5e-4 if args.resume else 1e-3)
    trained = train_interactive(images, args.iterations, network=start, learning_rate=learning_rate,
                                max_seconds=args.minutes * 60, progress=lambda e: print(json.dumps(e), flush=True))
    network = trained["network"]
    check = quick_check(network)
    print(json.dumps(check, indent=1))
    card = {
        "model": "interactive",
        "description": "Class-agnostic interactive 3D U-Net: image + foreground clicks, background clicks, box and "
                       "the previous object in; that one object out",
        "trained_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "data": {"objects": {im.name: len(im.objects) for im in images},
                 "held_out": f"AAL regions {AAL_HELD_OUT[0]}, {AAL_HELD_OUT[1]}, ... {AAL_HELD_OUT[-1]} (the even ones) "
                             "on Colin27, and the BraTS cases " + ", ".join(brats.HELD_OUT_CASES) +
                             ": never trained on"},
        "inputs_tested": "any 3D scan, CT or MR, any orientation and spacing: the model reads the patch's own intensities",
        "network": network_config() | {"parameters": int(sum(p.numel() for p in network.parameters()))},
        "training": training_record(trained, learning_rate, earlier),
        "hardware": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "versions": {"medseg": medseg.__version__, "torch": torch.__version__, "python": platform.python_version()},
        "quick_check": check,
    }
    state = {k: v.half() if v.is_floating_point() else v for k, v in network.state_dict().items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "model.pt", {"model": "interactive", "state_dict": state, "network": card["network"],
                                       "trained_on": card["data"], "held_out_aal": AAL_HELD_OUT, "version": 1})
    (out / "model_card.json").write_text(json.dumps(card, indent=1))
    (out / "MODEL_CARD.md").write_text(render_card(card))
    print(f"wrote {out / 'model.pt'} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
