"""Train the weights shipped in apps/medseg/model/<name>/ and write their model card.

Data: pseudo-subjects of the bundled MNI template (medseg.data.pseudo_subjects) with
fixed seeds: a training set, and held-out test subjects made with another seed.
The model card reports Dice per label on the held-out subjects and on the original
1 mm template, measured through the same Predictor the server uses.

    python scripts/train_shipped_model.py --model unet3d --iterations 600
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import medseg
from medseg.checkpoint import save_checkpoint
from medseg.data.pseudo_subjects import generate
from medseg.data.template import TEMPLATE_LABELS, TEMPLATE_T1, TISSUE_LABELS
from medseg.imageio import read_volume
from medseg.models import MODELS
from medseg.pipeline.fingerprint import fingerprint_files
from medseg.pipeline.plan import make_plan
from medseg.pipeline.predictor import Predictor
from medseg.pipeline.training import TrainConfig, dice_per_label, load_preprocessed, pick_device, split_train_val, train_network

REPO = Path(__file__).resolve().parents[1]
from medseg.data.pseudo_subjects import SEED_HELDOUT as TEST_SEED, SEED_TRAIN as TRAIN_SEED


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def evaluate(predictor: Predictor, pairs: list[dict]) -> dict:
    per_case = {}
    for d in pairs:
        image = read_volume(d["image"])
        truth = read_volume(d["label"], dtype=np.float32).array.astype(np.uint8)
        pred = predictor(image)
        per_case[os.path.basename(d["image"])] = {
            "dice": dice_per_label(pred.labels, truth, TISSUE_LABELS),
            "seconds": pred.latencies_s["total"],
        }
    mean = {k: float(np.mean([c["dice"][k] for c in per_case.values()])) for k in TISSUE_LABELS}
    return {"mean_dice_per_label": mean, "cases": per_case}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="unet3d", choices=sorted(MODELS))
    ap.add_argument("--work", default=str(REPO / "work" / "shipped-training"))
    ap.add_argument("--n-train", type=int, default=12)
    ap.add_argument("--n-test", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--learning-rate", type=float, default=None, help="default: the model's training default")
    ap.add_argument("--base-features", type=int, default=8)
    ap.add_argument("--max-features", type=int, default=64)
    ap.add_argument("--max-stages", type=int, default=5)
    ap.add_argument("--memory-budget-gb", type=float, default=0.25,
                    help="planning budget; small so that the shipped net runs fast on a CPU")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--out", default=None, help="default: apps/medseg/model/<model>")
    args = ap.parse_args(argv)

    spec = MODELS[args.model]
    work = Path(args.work)
    train_dir, test_dir = work / "train", work / "test"
    generate(train_dir, args.n_train, seed=TRAIN_SEED)
    generate(test_dir, args.n_test, seed=TEST_SEED, prefix="heldout")
    names = sorted(p.name for p in (train_dir / "images").glob("*.nii.gz"))[: args.n_train]
    pairs = [{"image": str(train_dir / "images" / n), "label": str(train_dir / "labels" / n)} for n in names]
    test_pairs = [{"image": str(p), "label": str(test_dir / "labels" / p.name)}
                  for p in sorted((test_dir / "images").glob("*.nii.gz"))[: args.n_test]]

    planning = {"gpu_memory_budget_gb": args.memory_budget_gb, "base_features": args.base_features,
                "max_features": args.max_features, "max_stages": args.max_stages, **spec.planning}
    plan = make_plan(fingerprint_files(pairs), TISSUE_LABELS, modality="MR", spatial_dims=spec.spatial_dims,
                     **planning)
    print("plan:", plan.to_json(), flush=True)
    overrides = dict(spec.training)
    if args.learning_rate is not None:
        overrides["learning_rate"] = args.learning_rate
    config = TrainConfig(max_iterations=args.iterations, batch_size=args.batch_size, log_every=20, **overrides)
    train_idx, val_idx = split_train_val(names, config.val_fraction, config.val_max_cases, config.seed)
    cases = [load_preprocessed(d["image"], d["label"], plan, work / "cache") for d in pairs]
    network = spec.build(plan)
    result = train_network(network, plan, [cases[i] for i in train_idx], [cases[i] for i in val_idx], config,
                           progress=lambda e: print(json.dumps(e), flush=True), dice_only=spec.dice_only)
    network.load_state_dict(result.state_dict)
    device = pick_device()
    lcc = result.postprocessing["largest_component_labels"]
    predictor = Predictor(network, plan, device, lcc)
    heldout = evaluate(predictor, test_pairs)
    template = evaluate(predictor, [{"image": str(TEMPLATE_T1), "label": str(TEMPLATE_LABELS)}])
    n_params = sum(p.numel() for p in network.parameters())

    card = {
        "model": spec.name,
        "description": spec.description,
        "version": 1,
        "trained_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "data": {
            "train": f"{len(train_idx)} pseudo-subjects of the MNI ICBM152 2009a template (seed {TRAIN_SEED})",
            "validation": f"{len(val_idx)} pseudo-subjects (same seed, held out from training)",
            "test": f"{len(test_pairs)} held-out pseudo-subjects (seed {TEST_SEED}) and the original 1 mm template",
        },
        "labels": TISSUE_LABELS,
        "target_spacing_mm": plan.target_spacing_mm,
        "patch_size_vox": plan.patch_size_vox,
        "parameters": n_params,
        "training": {"iterations": result.iterations, "batch_size": config.batch_size,
                     "optimizer": config.optimizer, "learning_rate": config.learning_rate, "seconds": round(result.seconds, 1),
                     "final_loss": round(result.final_loss, 4)},
        "hardware": {"device": str(device), "cpu": cpu_name(),
                     "threads": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "versions": {"medseg": medseg.__version__, "torch": torch.__version__, "python": sys.version.split()[0]},
        "val_dice_per_label": result.val_dice_per_label,
        "heldout_dice_per_label": heldout["mean_dice_per_label"],
        "template_dice_per_label": template["mean_dice_per_label"],
        "evaluation": {"heldout": heldout["cases"], "template": template["cases"]},
    }
    out = Path(args.out) if args.out else REPO / "apps" / "medseg" / "model" / spec.name
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "model": spec.name,
        "state_dict": {k: v.half() if v.is_floating_point() else v for k, v in result.state_dict.items()},
        "plan": json.loads(plan.to_json()),
        "train_config": config.__dict__,
        "val_dice_per_label": result.val_dice_per_label,
        "postprocessing": result.postprocessing,
        "planning": planning,
        "version": 1,
        "trained_on": card["data"],
        "n_train_cases": len(train_idx),
        "trained_at": card["trained_at"],
        "source": "shipped",
    }
    save_checkpoint(out / "model.pt", checkpoint)
    plan.save(out / "plan.json")
    (out / "model_card.json").write_text(json.dumps(card, indent=1))
    (out / "MODEL_CARD.md").write_text(render_card(card))
    print(json.dumps({k: card[k] for k in ("heldout_dice_per_label", "template_dice_per_label", "training")}, indent=1))


def render_card(card: dict) -> str:
    def dice(d):
        return ", ".join(f"{k} {v:.3f}" for k, v in d.items())

    t = card["training"]
    return f"""# Model card: `{card['model']}` (generated by scripts/train_shipped_model.py; do not edit)

{card['description']}.

- **Data**: train: {card['data']['train']}; validation: {card['data']['validation']}; test: {card['data']['test']}.
- **Labels**: {', '.join(f'{k} = {v}' for k, v in card['labels'].items())} (0 = background).
- **Resolution**: target spacing {card['target_spacing_mm']} mm, patch {card['patch_size_vox']} voxels.
- **Network**: {card['parameters']:,} parameters.
- **Training budget**: {t['iterations']} iterations, batch {t['batch_size']}, {t.get('optimizer', 'sgd')} with learning rate {t['learning_rate']}, {t['seconds']} s, final loss {t['final_loss']}.
- **Hardware**: {card['hardware']['device']} ({card['hardware']['cpu']}, {card['hardware']['threads']} threads; GPU: {card['hardware']['gpu']}).
- **Versions**: {', '.join(f'{k} {v}' for k, v in card['versions'].items())}. Trained {card['trained_at']}.

| evaluation | Dice per label |
|---|---|
| validation (plan resolution) | {dice(card['val_dice_per_label'])} |
| held-out pseudo-subjects (original grid) | {dice(card['heldout_dice_per_label'])} |
| original 1 mm template | {dice(card['template_dice_per_label'])} |
"""


if __name__ == "__main__":
    main()
