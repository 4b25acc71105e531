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
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

import medseg
from medseg.checkpoint import ModelStore, save_checkpoint
from medseg.data.pseudo_subjects import generate
from medseg.data.template import TEMPLATE_LABELS, TEMPLATE_T1, TISSUE_LABELS
from medseg.imageio import read_volume
from medseg.models import MODELS
from medseg.pipeline.metrics import dice_per_label
from medseg.pipeline.brain_extraction import EXTRACTED_BRAIN, HEAD
from medseg.pipeline.plan import Plan
from medseg.pipeline.predictor import Predictor
from medseg.pipeline.training import pick_device
from medseg.tasks.train import CascadeTrainTask, MedSegTrainTask

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


class LabeledPairs:
    """The datastore interface the train task reads: the labeled pairs."""

    def __init__(self, pairs: list[dict]):
        self.pairs = pairs

    def datalist(self) -> list[dict]:
        return self.pairs


def train_with_task(spec, pairs: list[dict], work: Path, planning: dict, request: dict) -> tuple[dict, dict]:
    """Train from scratch with the server's own train task; its checkpoint and final progress."""
    runs = work / "runs"
    shutil.rmtree(runs / spec.name, ignore_errors=True)  # never fine-tune an earlier run
    store = ModelStore(spec.name, work / "no-shipped-weights", runs)
    task_cls = CascadeTrainTask if spec.cascade else MedSegTrainTask
    task = task_cls(spec, store, TISSUE_LABELS, work / "task", device="auto", modality="MR",
                    gpu_memory_gb=planning["gpu_memory_budget_gb"], planning=planning)
    task(request, LabeledPairs(pairs))
    return store.load(), task.stats()


def evaluate_colin27(predictor: Predictor) -> dict:
    """Brain-mask Dice and AAL grey-matter recall on the real Colin27 head, with and without skull."""
    from medseg.data.colin27 import COLIN27_BRAIN, COLIN27_HEAD, score_tissue_prediction

    out = {}
    for key, path in (("with_skull", COLIN27_HEAD), ("skull_stripped", COLIN27_BRAIN)):
        prediction = predictor(read_volume(path))
        out[key] = dict(score_tissue_prediction(prediction.labels), seconds=prediction.latencies_s["total"])
    return out


def parameters(spec, checkpoint: dict) -> int:
    stages = [(MODELS["cascade_lowres"], checkpoint["lowres"]), (spec, checkpoint)] if spec.cascade else [(spec, checkpoint)]
    return sum(p.numel() for s, c in stages for p in s.network(c).parameters())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="unet3d", choices=sorted(MODELS))
    ap.add_argument("--work", default=str(REPO / "work" / "shipped-training"))
    ap.add_argument("--n-train", type=int, default=12)
    ap.add_argument("--n-test", type=int, default=3)
    ap.add_argument("--n-head", type=int, default=0,
                    help="also train on this many head subjects (skull, neck, noise everywhere, any orientation)")
    ap.add_argument("--iterations", type=int, default=600, help="per stage for the cascade")
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
    generate(test_dir, args.n_test, seed=TEST_SEED, prefix="heldout")
    names = [r["name"] + ".nii.gz" for r in generate(train_dir, args.n_train, seed=TRAIN_SEED)]
    if args.n_head:
        names += [r["name"] + ".nii.gz" for r in generate(train_dir, args.n_head, seed=TRAIN_SEED, prefix="head",
                                                           kind="head")]
        generate(test_dir, args.n_test, seed=TEST_SEED, prefix="heldout_head", kind="head")
    pairs = [{"image": str(train_dir / "images" / n), "label": str(train_dir / "labels" / n)} for n in names]
    test_pairs = [{"image": str(test_dir / "images" / f"heldout_{i:03d}.nii.gz"),
                   "label": str(test_dir / "labels" / f"heldout_{i:03d}.nii.gz")} for i in range(args.n_test)]
    head_test_pairs = [{"image": str(test_dir / "images" / f"heldout_head_{i:03d}.nii.gz"),
                        "label": str(test_dir / "labels" / f"heldout_head_{i:03d}.nii.gz")}
                       for i in range(args.n_test)] if args.n_head else []

    planning = {"gpu_memory_budget_gb": args.memory_budget_gb, "base_features": args.base_features,
                "max_features": args.max_features, "max_stages": args.max_stages}
    request = {"max_iterations": args.iterations, "batch_size": args.batch_size, "log_every": 20}
    if args.learning_rate is not None:
        request["learning_rate"] = args.learning_rate
    trained, stats = train_with_task(spec, pairs, work, planning, request)
    plan = Plan.from_dict(trained["plan"])
    config = trained["train_config"]
    device = pick_device()
    predictor = spec.predictor(trained, device)
    heldout = evaluate(predictor, test_pairs)
    template = evaluate(predictor, [{"image": str(TEMPLATE_T1), "label": str(TEMPLATE_LABELS)}])
    heads = evaluate(predictor, head_test_pairs) if head_test_pairs else None
    colin27 = evaluate_colin27(predictor)
    n_brain = len(trained["train_images"]) + len(trained["val_images"]) - args.n_head

    card = {
        "model": spec.name,
        "description": spec.description,
        "version": 1,
        "trained_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "data": {
            "train": (f"{len(trained['train_images'])} pseudo-subjects of the MNI ICBM152 2009a template (seed {TRAIN_SEED}): "
                      f"{n_brain} brain-extracted and {args.n_head} heads (synthetic skull, neck and face; noise "
                      f"everywhere; any orientation), with training and validation drawn from both"),
            "validation": f"{len(trained['val_images'])} pseudo-subjects (same seed, held out from training)",
            "test": (f"{len(test_pairs)} held-out pseudo-subjects (seed {TEST_SEED})"
                     + (f", {len(head_test_pairs)} held-out heads (seed {TEST_SEED})" if head_test_pairs else "")
                     + ", the original 1 mm template, and Colin27 (a real T1 head, with and without its skull)"),
        },
        "labels": TISSUE_LABELS,
        "inputs_tested": ("T1-weighted MR of the head as a scanner delivers it (skull, neck and face; noise over the "
                          "whole field of view; RAS, LPS, sagittal or coronal storage; 1-1.8 mm, or 1 mm in-plane with "
                          "3-5 mm slices), and brain-extracted T1") if args.n_head else
                         "brain-extracted T1-weighted MR (zero or noisy background), 1-1.8 mm",
        "target_spacing_mm": plan.target_spacing_mm,
        "patch_size_vox": plan.patch_size_vox,
        "parameters": parameters(spec, trained),
        "training": {"iterations": stats.get("iteration"), "batch_size": config["batch_size"],
                     "optimizer": config["optimizer"], "learning_rate": config["learning_rate"],
                     "seconds": stats.get("seconds"), "final_loss": stats.get("loss")},
        "hardware": {"device": str(device), "cpu": cpu_name(),
                     "threads": torch.get_num_threads(),
                     "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "versions": {"medseg": medseg.__version__, "torch": torch.__version__, "python": sys.version.split()[0]},
        "val_dice_per_label": trained["val_dice_per_label"],
        "heldout_dice_per_label": heldout["mean_dice_per_label"],
        "template_dice_per_label": template["mean_dice_per_label"],
        "heldout_head_dice_per_label": heads["mean_dice_per_label"] if heads else None,
        "colin27": colin27,
        "evaluation": {"heldout": heldout["cases"], "template": template["cases"],
                       **({"heldout_head": heads["cases"]} if heads else {})},
    }
    if spec.cascade:
        low = Plan.from_dict(trained["lowres"]["plan"])
        card["stages"] = {"lowres": {"target_spacing_mm": low.target_spacing_mm, "patch_size_vox": low.patch_size_vox,
                                     "val_dice_per_label": trained["lowres"]["val_dice_per_label"]}}
        card["training"]["iterations_per_stage"] = args.iterations
    out = Path(args.out) if args.out else REPO / "apps" / "medseg" / "model" / spec.name
    write_shipped(out, spec.name, trained, card)
    if spec.cascade:
        # The first stage is also the standalone cascade_lowres model: same weights, its own card.
        write_lowres_from_cascade(trained, card, out.parent / "cascade_lowres", test_pairs, device)
    print(json.dumps({k: card[k] for k in ("heldout_dice_per_label", "template_dice_per_label", "training")}, indent=1))


def shipped_checkpoint(name: str, trained: dict, card: dict) -> dict:
    def half(state):
        return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}

    keep = ("plan", "train_config", "val_dice_per_label", "postprocessing", "planning", "n_train_cases")
    checkpoint = {k: trained[k] for k in keep if k in trained}
    checkpoint.update(model=name, state_dict=half(trained["state_dict"]), version=1, trained_on=card["data"],
                      trained_at=card["trained_at"], source="shipped",
                      # Weights that never saw a head get the brain-extraction stage (pipeline/brain_extraction.py).
                      expects=HEAD if "head" in card["data"]["train"] else EXTRACTED_BRAIN)
    if "lowres" in trained:
        checkpoint["lowres"] = dict(trained["lowres"], state_dict=half(trained["lowres"]["state_dict"]))
    return checkpoint


def write_shipped(out: Path, name: str, trained: dict, card: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "model.pt", shipped_checkpoint(name, trained, card))
    Plan.from_dict(trained["plan"]).save(out / "plan.json")
    (out / "model_card.json").write_text(json.dumps(card, indent=1))
    (out / "MODEL_CARD.md").write_text(render_card(card))


def write_lowres_from_cascade(cascade: dict, cascade_card: dict, out: Path, test_pairs: list[dict], device) -> None:
    spec = MODELS["cascade_lowres"]
    stage = dict(cascade["lowres"], planning=cascade.get("planning"), train_config=cascade["train_config"],
                 n_train_cases=cascade.get("n_train_cases"), train_images=cascade["train_images"],
                 val_images=cascade["val_images"])
    predictor = spec.predictor(stage, device)
    plan = Plan.from_dict(stage["plan"])
    card = dict(cascade_card, model=spec.name, description=spec.description + " (trained as the cascade's first stage)",
                target_spacing_mm=plan.target_spacing_mm, patch_size_vox=plan.patch_size_vox,
                parameters=sum(p.numel() for p in spec.network(stage).parameters()),
                val_dice_per_label=stage["val_dice_per_label"],
                training=dict(cascade_card["training"], **stage.get("training", {})))
    card["training"].pop("iterations_per_stage", None)
    card.pop("stages", None)
    heldout = evaluate(predictor, test_pairs)
    template = evaluate(predictor, [{"image": str(TEMPLATE_T1), "label": str(TEMPLATE_LABELS)}])
    card.update(heldout_dice_per_label=heldout["mean_dice_per_label"],
                template_dice_per_label=template["mean_dice_per_label"],
                colin27=evaluate_colin27(predictor),
                evaluation={"heldout": heldout["cases"], "template": template["cases"]})
    card.pop("heldout_head_dice_per_label", None)
    write_shipped(out, spec.name, stage, card)


def render_card(card: dict) -> str:
    def dice(d):
        return ", ".join(f"{k} {v:.3f}" for k, v in d.items())

    t = card["training"]
    heads = (f"| held-out heads: skull, neck, noise everywhere, any orientation (original grid) | "
             f"{dice(card['heldout_head_dice_per_label'])} |\n") if card.get("heldout_head_dice_per_label") else ""
    colin = "".join(
        f"| Colin27, a real T1 {what} | brain-mask Dice {c['brain_mask_dice']:.3f}, grey-matter recall in AAL "
        f"regions {c['grey_matter_recall_in_aal']:.3f} |\n"
        for what, c in (("with skull", card.get("colin27", {}).get("with_skull")),
                        ("skull-stripped", card.get("colin27", {}).get("skull_stripped"))) if c)
    stages = ""
    if card.get("stages"):
        low = card["stages"]["lowres"]
        stages = (f"- **Cascade**: first stage at {low['target_spacing_mm']} mm, patch {low['patch_size_vox']} "
                  f"(validation Dice alone: {dice(low['val_dice_per_label'])}); each stage trained for "
                  f"{t['iterations_per_stage']} iterations; the second stage on perturbed ground truth.\n")
    return f"""# Model card: `{card['model']}` (generated by scripts/train_shipped_model.py; do not edit)

{card['description']}.

- **Data**: train: {card['data']['train']}; validation: {card['data']['validation']}; test: {card['data']['test']}.
- **Labels**: {', '.join(f'{k} = {v}' for k, v in card['labels'].items())} (0 = background).
- **Inputs it was tested on**: {card.get('inputs_tested', 'brain-extracted T1-weighted MR')}.
- **Resolution**: target spacing {card['target_spacing_mm']} mm, patch {card['patch_size_vox']} voxels.
- **Network**: {card['parameters']:,} parameters.
{stages}- **Training budget**: {t['iterations']} iterations, batch {t['batch_size']}, {t.get('optimizer', 'sgd')} with learning rate {t['learning_rate']}, {t['seconds']} s, final loss {t['final_loss']}.
- **Hardware**: {card['hardware']['device']} ({card['hardware']['cpu']}, {card['hardware']['threads']} threads; GPU: {card['hardware']['gpu']}).
- **Versions**: {', '.join(f'{k} {v}' for k, v in card['versions'].items())}. Trained {card['trained_at']}.

| evaluation | Dice per label |
|---|---|
| validation (plan resolution) | {dice(card['val_dice_per_label'])} |
| held-out pseudo-subjects (original grid) | {dice(card['heldout_dice_per_label'])} |
| original 1 mm template | {dice(card['template_dice_per_label'])} |
{heads}{colin}"""


if __name__ == "__main__":
    main()
