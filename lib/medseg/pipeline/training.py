"""The training loop shared by every model: patches, augmentation, Dice+CE, SGD.

Recipe defaults follow nnU-Net (Isensee et al. 2021, supplementary note 4):
SGD with Nesterov momentum 0.99, initial learning rate 0.01 with poly decay
(exponent 0.9), weight decay 3e-5, a third of every batch centred on foreground,
Dice + cross-entropy with deep supervision. Every value is configurable per request.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from medseg.errors import MedSegInputError
from medseg.imageio import read_volume
from medseg.pipeline.augment import augment_sample, intensity_quantiles
from medseg.pipeline.inference import predict_probabilities
from medseg.pipeline.loss import DeepSupervisionLoss, DiceCELoss, inverse_sqrt_frequency_weights
from medseg.pipeline.metrics import mean_dice_per_label
from medseg.pipeline.plan import Plan
from medseg.pipeline.postprocess import apply_postprocessing, class_argmax, decide_largest_component
from medseg.pipeline.preprocess import PREPROCESSING_VERSION, PreprocessedCase, preprocess
from medseg.pipeline.sides import assign_sides, decide_sides, right_of_grid_centre
from medseg.request_options import choice, flag, number

logger = logging.getLogger(__name__)


OPTIMIZERS = ("sgd", "adamw")
CLASS_WEIGHTINGS = ("none", "inverse_sqrt_frequency")
# The range each numeric training option may take (inclusive).
OPTION_BOUNDS = {
    "max_iterations": (1, 100_000),
    "max_epochs": (0, 10_000),
    "batch_size": (0, 256),  # 0: the plan's
    "learning_rate": (1e-7, 1.0),
    "momentum": (0.0, 0.999),
    "weight_decay": (0.0, 1.0),
    "poly_exponent": (0.1, 10.0),
    "foreground_fraction": (0.0, 1.0),
    "val_fraction": (0.0, 0.5),
    "val_max_cases": (1, 1000),
    "seed": (0, 2**31 - 1),
    "log_every": (1, 100_000),
    "val_every": (-1, 100_000),
    "world_size": (0, 64),
}


FIRST_ITERATIONS_REPORTED = 3


# nnU-Net's SGD recipe (0.01, momentum 0.99) is tuned for ~10^5 iterations. From random
# weights on a CPU budget of a few hundred it learns only the largest label: on the slicerio
# chest CT the lungs stay at Dice 0 where AdamW already finds them (bench/optimizer_from_scratch.py).
# Fine-tuning keeps SGD, the recipe the shipped weights were trained with.
FROM_SCRATCH_TRAINING = {"optimizer": "adamw", "learning_rate": 3e-3}


@dataclass
class TrainConfig:
    max_iterations: int = 250
    batch_size: int = 0  # 0: the plan's batch size
    optimizer: str = "sgd"  # "sgd" (nnU-Net) or "adamw" (the usual choice for transformers)
    learning_rate: float = 0.01
    momentum: float = 0.99
    weight_decay: float = 3e-5
    poly_exponent: float = 0.9
    foreground_fraction: float = 0.33
    use_ce: bool = True
    # Cross-entropy weights per class: "none" (nnU-Net) or "inverse_sqrt_frequency" (small labels
    # pull harder; see loss.inverse_sqrt_frequency_weights). Not the default: on the chest CT from
    # scratch within a CPU budget, one run with it learnt the spine and another did not, so no
    # gain is established (docs/own-data.md).
    class_weighting: str = "none"
    augment: bool = True
    val_fraction: float = 0.2
    val_max_cases: int = 4
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    val_every: int = -1  # validate every N iterations while training (0: only at the end; -1: 5 times a run)
    # Data-parallel training (MONAI Label's option name): one process per GPU, or
    # world_size CPU processes with the gloo backend; 0 = every visible GPU.
    multi_gpu: bool = False
    world_size: int = 0

    max_epochs: int = 0  # MONAI Label's option: passes over the training cases; 0 = use max_iterations

    @classmethod
    def from_request(cls, request: dict, defaults: "TrainConfig | None" = None) -> "TrainConfig":
        """Typed, bounded values from a REST request; other keys are the caller's to check.

        Every option has a range (``OPTION_BOUNDS``), so a request that could never finish
        (10^12 iterations) or never start (batch size 0 with no plan to fall back on) is
        refused with a 422 before a training process starts.
        """
        base = asdict(defaults or cls())
        for f in fields(cls):
            raw = request.get(f.name)
            if raw is None:
                continue
            if f.type in ("bool", bool):
                base[f.name] = flag(f.name, raw)
            elif f.name == "optimizer":
                base[f.name] = choice(f.name, raw, OPTIMIZERS)
            elif f.name == "class_weighting":
                base[f.name] = choice(f.name, raw, CLASS_WEIGHTINGS)
            elif f.name == "device":
                base[f.name] = str(raw)
            else:
                kind = int if f.type in ("int", int) else float
                base[f.name] = number(f.name, raw, kind, *OPTION_BOUNDS[f.name])
        # max_epochs 0 means "use max_iterations" (MONAI Label's Slicer module sends both, as /info lists them).
        if base["max_epochs"] and request.get("max_epochs") is not None and request.get("max_iterations") is not None:
            raise MedSegInputError("give max_iterations or max_epochs, not both")
        return cls(**base)

    def iterations_for(self, n_train_cases: int, plan_batch_size: int) -> int:
        """max_iterations, or the iterations that make max_epochs passes over the training cases."""
        if not self.max_epochs:
            return self.max_iterations
        per_iteration = max(1, self.batch_size or plan_batch_size)
        needed = math.ceil(self.max_epochs * max(1, n_train_cases) / per_iteration)
        return int(min(max(1, needed), OPTION_BOUNDS["max_iterations"][1]))

    def processes(self) -> int:
        """How many data-parallel processes to start (1: train in this process)."""
        if not self.multi_gpu:
            return 1
        if self.world_size:
            return self.world_size
        return max(1, torch.cuda.device_count())


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and dist.is_initialized():
        # One GPU per process: torchrun sets LOCAL_RANK, our own launcher uses the rank.
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        device = torch.device("cuda", local % torch.cuda.device_count())
    return device


# ---------------------------------------------------------------- data


def _cache_key(image_path: str, label_path: str, plan: Plan) -> str:
    h = hashlib.sha1()
    for p in (image_path, label_path):
        st = os.stat(p)
        h.update(f"{os.path.realpath(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(f"preprocessing {PREPROCESSING_VERSION}".encode())
    h.update(plan.to_json().encode())
    return h.hexdigest()[:20]


FOREGROUND_SAMPLES_PER_CLASS = 10000


def foreground_voxels(label: np.ndarray, rng=None) -> np.ndarray:
    """Up to FOREGROUND_SAMPLES_PER_CLASS coordinates of each foreground class.

    Sampled per class, not over all foreground: a small structure (a vertebra next to
    the body's soft tissue) keeps as many candidate centres as a large one.
    """
    label = np.asarray(label)
    rng = rng or np.random.default_rng(0)
    parts = []
    for value in np.unique(label[label > 0]):
        coords = np.argwhere(label == value).astype(np.int32)
        if len(coords) > FOREGROUND_SAMPLES_PER_CLASS:
            coords = coords[np.sort(rng.choice(len(coords), FOREGROUND_SAMPLES_PER_CLASS, replace=False))]
        parts.append(coords)
    return np.concatenate(parts) if parts else np.zeros((0, 3), np.int32)


def load_preprocessed(image_path: str, label_path: str, plan: Plan, cache_dir: Path | None) -> PreprocessedCase:
    """Preprocess one labeled case once and keep it on disk as .npy files.

    Cached arrays are opened memory-mapped, so a training run holds in RAM only the
    patches it reads, not the whole dataset (100 CT volumes do not need 100 GB).
    """
    case_dir = None
    if cache_dir is not None:
        case_dir = Path(cache_dir) / _cache_key(image_path, label_path, plan)
        if (case_dir / "meta.json").exists():
            meta = json.loads((case_dir / "meta.json").read_text())
            return PreprocessedCase(
                image=np.load(case_dir / "image.npy", mmap_mode="r"),
                label=np.load(case_dir / "label.npy", mmap_mode="r"),
                original_shape=tuple(meta["original_shape"]),
                bbox=tuple(tuple(b) for b in meta["bbox"]),
                cropped_shape=tuple(meta["cropped_shape"]),
                foreground_vox=np.load(case_dir / "foreground.npy"),
                ornt=np.asarray(meta["ornt"]) if meta.get("ornt") is not None else None,
            )
    image = read_volume(image_path)
    label = read_volume(label_path, dtype=np.float32)
    if label.shape != image.shape:
        raise MedSegInputError(f"label {os.path.basename(label_path)} does not match its image's size")
    case = preprocess(image.array, image.spacing_mm, plan, np.rint(label.array).astype(np.uint8), affine=image.affine)
    case.foreground_vox = foreground_voxels(case.label)
    if case_dir is not None:
        tmp = case_dir.with_name(case_dir.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "image.npy", case.image)
        np.save(tmp / "label.npy", case.label)
        np.save(tmp / "foreground.npy", case.foreground_vox)
        (tmp / "meta.json").write_text(json.dumps({
            "original_shape": list(case.original_shape), "bbox": [list(b) for b in case.bbox],
            "cropped_shape": list(case.cropped_shape), "image": os.path.realpath(image_path),
            "ornt": case.ornt.tolist() if case.ornt is not None else None,
        }))
        try:
            os.replace(tmp, case_dir)  # atomic publish of the whole case folder
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another process cached it first
    return case


def split_train_val(names: list[str], val_fraction: float, max_val: int, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic split by a hash of the names, so that it is stable as cases are added."""
    n = len(names)
    if n < 2:
        return list(range(n)), list(range(n))  # one case: validate on what we train on
    n_val = min(max_val, max(1, int(round(n * val_fraction))))
    order = sorted(range(n), key=lambda i: hashlib.sha1(f"{seed}:{names[i]}".encode()).hexdigest())
    val = sorted(order[:n_val])
    return [i for i in range(n) if i not in val], val


def persistent_split(names: list[str], path: Path, val_fraction: float, max_val: int, seed: int):
    """Train/validation split kept in a JSON file of the datastore: once an image is
    assigned, it stays on its side, so validation scores of successive models compare."""
    path = Path(path)
    assigned = json.loads(path.read_text()) if path.exists() else {}
    if len(names) < 2:
        return split_train_val(names, val_fraction, max_val, seed)
    target_val = min(max_val, max(1, int(round(len(names) * val_fraction))))
    n_val = sum(1 for n in names if assigned.get(n) == "val")
    new = sorted((n for n in names if n not in assigned), key=lambda n: hashlib.sha1(f"{seed}:{n}".encode()).hexdigest())
    for n in new:
        side = "val" if n_val < target_val else "train"
        n_val += side == "val"
        assigned[n] = side
    if not any(assigned.get(n) == "train" for n in names):
        # Everything we have is validation: move the newest back so there is something to learn from.
        assigned[new[-1] if new else names[-1]] = "train"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(assigned, indent=1, sort_keys=True))
    os.replace(tmp, path)
    val = [i for i, n in enumerate(names) if assigned[n] == "val"]
    return [i for i in range(len(names)) if i not in val], val


class PatchSampler:
    """Random patches; a fraction of each batch is centred on foreground.

    A foreground patch first picks one of the classes present in the case, uniformly, and
    then a voxel of that class, as nnU-Net's loader does (its ``class_locations``). Picking
    a voxel of all foreground instead centres nearly every patch on the largest label, and
    a few hundred CPU iterations never see the small ones.
    """

    def __init__(self, cases: list[PreprocessedCase], patch: list[int], foreground_fraction: float, seed: int):
        self.cases = cases
        self.patch = list(patch)
        self.fg_fraction = foreground_fraction
        self.rng = np.random.default_rng(seed)
        self.fg_by_class = [self._by_class(c) for c in cases]

    @staticmethod
    def _by_class(case: PreprocessedCase) -> list[np.ndarray]:
        coords = case.foreground_vox if case.foreground_vox is not None else foreground_voxels(case.label)
        if not len(coords):
            return []
        classes = np.asarray(case.label[tuple(coords.T)])
        return [coords[classes == value] for value in np.unique(classes)]

    def foreground_center(self, i: int):
        by_class = self.fg_by_class[i]
        if not by_class:
            return None
        coords = by_class[int(self.rng.integers(len(by_class)))]
        return coords[int(self.rng.integers(len(coords)))]

    def _crop(self, case: PreprocessedCase, center=None):
        shape = case.image.shape[1:]
        starts = []
        for axis, (n, p) in enumerate(zip(shape, self.patch)):
            if center is None:
                lo, hi = min(0, n - p), max(0, n - p)
                starts.append(int(self.rng.integers(lo, hi + 1)))
            else:
                starts.append(int(center[axis]) - p // 2)
        img = np.zeros((case.image.shape[0], *self.patch), dtype=np.float32)
        lab = np.zeros(self.patch, dtype=np.int64)
        src, dst = [], []
        for s, n, p in zip(starts, shape, self.patch):
            a, b = max(s, 0), min(s + p, n)
            src.append(slice(a, b))
            dst.append(slice(a - s, b - s))
        img[(slice(None), *dst)] = case.image[(slice(None), *src)]
        lab[tuple(dst)] = case.label[tuple(src)]
        return img, lab

    def batch(self, batch_size: int):
        n_fg = int(math.ceil(batch_size * self.fg_fraction))
        images, labels = [], []
        for b in range(batch_size):
            i = int(self.rng.integers(len(self.cases)))
            center = self.foreground_center(i) if b < n_fg else None
            img, lab = self._crop(self.cases[i], center)
            images.append(img)
            labels.append(lab)
        return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels))


def validate(network, cases: list[PreprocessedCase], plan: Plan, device) -> tuple[dict[str, float], list[np.ndarray]]:
    """Mean Dice per label over validation cases at the plan's resolution, and the predictions."""
    preds = []
    for case in cases:
        probs = predict_probabilities(network, torch.from_numpy(np.array(case.image)), plan.patch_size_vox,
                                      device=device, mirror_axes=plan.mirror_axes)
        preds.append(class_argmax(probs))
    return mean_dice_per_label(preds, [c.label for c in cases], plan.labels), preds


# ---------------------------------------------------------------- loop


@dataclass
class TrainResult:
    state_dict: dict
    val_dice_per_label: dict[str, float]  # with the chosen postprocessing
    postprocessing: dict
    iterations: int
    seconds: float
    final_loss: float
    history: list[dict] = field(default_factory=list)


def augment_batch(images, labels, gen, references, slice_axis: int | None, mirror_axes=None):
    """Augment each sample; 2D plans augment the in-plane slice (the slice axis has size 1).
    ``mirror_axes`` (the plan's, 3D axes) are the only ones flipped."""
    if slice_axis is not None and mirror_axes is not None:
        inplane = [a for a in range(3) if a != slice_axis]
        mirror_axes = [i for i, a in enumerate(inplane) if a in mirror_axes]
    out_images, out_labels = [], []
    for img, lab in zip(images, labels):
        if slice_axis is not None:
            img, lab = img.squeeze(1 + slice_axis), lab.squeeze(slice_axis)
        img, lab = augment_sample(img, lab, gen, references, mirror_axes=mirror_axes)
        if slice_axis is not None:
            img, lab = img.unsqueeze(1 + slice_axis), lab.unsqueeze(slice_axis)
        out_images.append(img)
        out_labels.append(lab)
    return torch.stack(out_images), torch.stack(out_labels)


def class_weights(cases: list[PreprocessedCase], plan: Plan, weighting: str) -> torch.Tensor | None:
    """The cross-entropy class weights ``weighting`` asks for, from the training labels' voxel counts."""
    if weighting == "none":
        return None
    n_classes = plan.n_classes
    counts = sum(np.bincount(np.asarray(c.label).ravel(), minlength=n_classes)[:n_classes] for c in cases)
    return inverse_sqrt_frequency_weights(counts)


def poly_lr(initial: float, iteration: int, max_iterations: int, exponent: float) -> float:
    return initial * (1 - iteration / max_iterations) ** exponent


def train_network(
    network: torch.nn.Module,
    plan: Plan,
    train_cases: list[PreprocessedCase],
    val_cases: list[PreprocessedCase],
    config: TrainConfig,
    progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    dice_only: bool = False,
    previous_stage: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``network`` in place and validate it.

    ``previous_stage`` (cascade second stage) maps each batch's label patches to the
    extra input channels, which are concatenated to the augmented image patches.
    Inside an initialised process group (medseg.pipeline.distributed, or torchrun)
    this is one rank of data-parallel training: the global batch is split across the
    ranks (as nnU-Net does), each samples its own patches, gradients are averaged by
    DistributedDataParallel, and only rank 0 reports progress and validates.
    """
    device = pick_device(config.device)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    torch.manual_seed(config.seed)  # same initial weights on every rank (DDP also broadcasts them)
    network.to(device).train()
    model = network
    if world > 1:
        # Some parameters get no gradient (the deep-supervision head nnU-Net gives weight 0),
        # so DDP must look for unused ones instead of waiting for them.
        model = DistributedDataParallel(network, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=True)
        progress = progress if rank == 0 else None
    loss_fn = DeepSupervisionLoss(DiceCELoss(use_ce=config.use_ce and not dice_only,
                                             class_weights=class_weights(train_cases, plan, config.class_weighting)))
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            network.parameters(), lr=config.learning_rate, momentum=config.momentum,
            nesterov=True, weight_decay=config.weight_decay,
        )
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    sampler = PatchSampler(train_cases, plan.patch_size_vox, config.foreground_fraction, config.seed + rank)
    gen = torch.Generator().manual_seed(config.seed + rank)
    references = [intensity_quantiles(np.array(c.image)) for c in train_cases] if config.augment else []
    batch_size = max(1, (config.batch_size or plan.batch_size) // world)
    val_every = config.val_every
    if val_every < 0:
        val_every = config.max_iterations // 5 if config.max_iterations >= 100 else 0
    start = time.time()
    history = []
    loss_value = float("nan")
    it = 0
    for it in range(config.max_iterations):
        if should_stop and should_stop():
            logger.info("training stopped at iteration %d", it)
            break
        lr = poly_lr(config.learning_rate, it, config.max_iterations, config.poly_exponent)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, labels = sampler.batch(batch_size)
        if config.augment:
            images, labels = augment_batch(images, labels, gen, references, plan.slice_axis, plan.mirror_axes)
        if previous_stage is not None:
            images = torch.cat([images, previous_stage(labels)], dim=1)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, enabled=use_amp):
            outputs = model(images)
        loss = loss_fn([o.float() for o in outputs] if isinstance(outputs, list) else outputs.float(), labels)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        scaler.step(optimizer)
        scaler.update()
        loss_value = float(loss.detach())
        validate_now = bool(val_every) and (it + 1) % val_every == 0 and it + 1 < config.max_iterations
        # The first iterations are always reported: the status shows a run is moving within seconds.
        first = it < FIRST_ITERATIONS_REPORTED
        if first or (it + 1) % config.log_every == 0 or it + 1 == config.max_iterations or validate_now:
            entry = {"iteration": it + 1, "max_iterations": config.max_iterations, "loss": round(loss_value, 4),
                     "lr": round(lr, 6), "seconds": round(time.time() - start, 1),
                     # Epochs in nnU-Net's sense are arbitrary with random patches; this is
                     # how many times, on average, each training case was sampled.
                     "epoch": round((it + 1) * batch_size * world / max(1, len(train_cases)), 2)}
            if rank == 0 and validate_now:
                entry["val_dice_per_label"] = {k: round(v, 4) for k, v in
                                               validate(network, val_cases, plan, device)[0].items()}
                network.train()
            history.append(entry)
            if rank == 0:
                logger.info("train %s", json.dumps(entry))
            if progress:
                progress(entry)
    network.eval()
    if rank != 0:  # the weights are the same on every rank; rank 0 validates them
        return TrainResult({k: v.detach().cpu() for k, v in network.state_dict().items()}, {}, {}, it + 1,
                           time.time() - start, loss_value, history)
    raw_dice, preds = validate(network, val_cases, plan, device)
    truths = [c.label for c in val_cases]
    # Inference applies the steps in this order: sides first, then the largest piece of each side.
    side_pairs, side_evidence = decide_sides(preds, truths, plan.labels)
    preds = [assign_sides(p, side_pairs, right_of_grid_centre(p.shape)) for p in preds]
    chosen, evidence = decide_largest_component(preds, truths, plan.labels)
    val = mean_dice_per_label([apply_postprocessing(p, chosen) for p in preds], truths, plan.labels)
    logger.info("validation dice per label: %s (without postprocessing %s)", val, raw_dice)
    return TrainResult(
        state_dict={k: v.detach().cpu() for k, v in network.state_dict().items()},
        val_dice_per_label=val,
        postprocessing={"largest_component_labels": chosen, "side_pairs": side_pairs, "val_dice_without": raw_dice,
                        "evidence": evidence, "side_evidence": side_evidence},
        iterations=it + 1,
        seconds=time.time() - start,
        final_loss=loss_value,
        history=history,
    )
