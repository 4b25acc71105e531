"""Training the interactive model on simulated interactions: every label of every image is an object.

A sample is one object in one patch and a state of its edit, drawn as a clinician would
produce it (``medseg.pipeline.click_simulation`` places clicks the same way):
- a new object from clicks: the first at the deepest point of the object's visible part,
  sometimes a second or a background click;
- a new object from a box around it (as the CVPR 2025 challenge starts), sometimes with a click;
- a correction: the previous object is the truth perturbed (grown, shrunk, its boundary
  wobbled, a piece cut off or one added, or a coarse version), and 1-9 clicks go at the
  deepest points of its largest errors, so 1-10 interactions in all;
- a correction after a box: the same, with the box still given. The server sends the box with
  every click that follows it, and a network that never saw a box beside a previous object and
  clicks learned to ignore those clicks (issue #32: on held-out gliomas five clicks after a box
  ended below the box alone).
Everything is computed in the patch, at the patch's resolution, so that a whole-brain object
costs no more than a small one. The network learns to answer the true object in the patch.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from medseg.pipeline.augment import intensity_transform
from medseg.pipeline.interactive_model import (
    PATCH_VOX,
    InteractiveModel,
    PatchGrid,
    balls,
    box_channel,
    inside_image,
    build_network,
    normalized,
    sample,
    sample_box,
)
from medseg.pipeline.click_simulation import next_click
from medseg.pipeline.loss import DeepSupervisionLoss, DiceCELoss
from medseg.pipeline.metrics import dice

logger = logging.getLogger(__name__)

MODES = {"clicks": 0.25, "box": 0.15, "correction": 0.4, "box_correction": 0.2}
MAX_CORRECTIONS = 9
# How a previous object is wrong, and how often (``perturbed``).
PERTURBATIONS = {"grow_shrink": 0.25, "wobble": 0.3, "cut": 0.15, "add": 0.1, "coarse": 0.15, "empty": 0.05}


@dataclass
class ObjectImage:
    """One image and its objects: label values of ``labels``; ``objects`` None: all of them."""

    name: str
    image: np.ndarray
    spacing_mm: tuple
    labels: np.ndarray
    objects: list[int] | None = None
    weight: float = 1.0  # how often the sampler picks this image, against the others
    boxes: dict = field(default_factory=dict)  # value -> bbox slices
    interior: dict = field(default_factory=dict)  # value -> (n, 3) sample of its voxels

    def __post_init__(self):
        values = self.objects or [int(v) for v in np.unique(self.labels) if v > 0]
        found = ndimage.find_objects(self.labels.astype(np.int32))
        rng = np.random.default_rng(0)
        for v in values:
            if v - 1 >= len(found) or found[v - 1] is None:
                continue
            box = found[v - 1]
            idx = np.argwhere(self.labels[box] == v) + [s.start for s in box]
            self.boxes[v] = box
            self.interior[v] = idx[rng.choice(len(idx), min(len(idx), 2000), replace=False)]
        self.objects = sorted(self.boxes)


def _deepest(mask: np.ndarray, spacing_mm) -> np.ndarray | None:
    if not mask.any():
        return None
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing_mm)[1:-1, 1:-1, 1:-1]
    return np.array(np.unravel_index(int(np.argmax(depth)), mask.shape))


def _largest_errors(truth: np.ndarray, previous: np.ndarray, n: int) -> list[tuple[str, np.ndarray]]:
    """The ``n`` largest error components: ("foreground" where missed | "background" where wrong, mask)."""
    errors = []
    for kind, mask in (("foreground", truth & ~previous), ("background", previous & ~truth)):
        components, count = ndimage.label(mask)
        if count:
            sizes = np.bincount(components.ravel())[1:]
            errors += [(int(sizes[i]), kind, components == i + 1) for i in np.argsort(sizes)[::-1][:n]]
    errors.sort(key=lambda e: -e[0])
    return [(kind, mask) for _, kind, mask in errors[:n]]


def perturbed(truth: np.ndarray, spacing_mm, rng) -> np.ndarray:
    """A plausible wrong answer for the object: what an automatic model or an earlier edit left."""
    kind = rng.choice(list(PERTURBATIONS), p=list(PERTURBATIONS.values()))
    if kind == "empty" or not truth.any():
        return np.zeros_like(truth)
    signed_mm = (ndimage.distance_transform_edt(~truth, sampling=spacing_mm)
                 - ndimage.distance_transform_edt(truth, sampling=spacing_mm))
    if kind == "grow_shrink":
        return signed_mm < rng.uniform(-4, 4)
    if kind == "wobble":
        noise = ndimage.gaussian_filter(rng.normal(0, 1, truth.shape), sigma=rng.uniform(2, 6))
        return signed_mm < noise / max(noise.std(), 1e-6) * rng.uniform(1, 4)
    if kind == "coarse":
        factor = int(rng.integers(2, 5))
        small = truth[::factor, ::factor, ::factor].astype(np.float32)
        coarse = np.repeat(np.repeat(np.repeat(small, factor, 0), factor, 1), factor, 2)
        return ndimage.uniform_filter(coarse[:truth.shape[0], :truth.shape[1], :truth.shape[2]], factor) >= 0.5
    centre = np.argwhere(truth if kind == "cut" else ~truth & (signed_mm < 15))
    if not len(centre):
        return truth.copy()
    centre = centre[rng.integers(len(centre))]
    grid = np.indices(truth.shape).transpose(1, 2, 3, 0)
    ball = (((grid - centre) * np.asarray(spacing_mm)) ** 2).sum(-1) <= rng.uniform(4, 15) ** 2
    return truth & ~ball if kind == "cut" else truth | (ball & (signed_mm < 10))


class InteractionSampler:
    """Network inputs and targets for simulated interactions on a set of object images."""

    def __init__(self, images: list[ObjectImage], seed: int = 0):
        self.images = [im for im in images if im.objects]
        weights = np.array([im.weight for im in self.images], float)
        self.weights = weights / weights.sum()
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def _grid(self, im: ObjectImage, value: int, mode: str) -> PatchGrid:
        box = im.boxes[value]
        extent = np.array([s.stop - s.start for s in box], float)
        if mode == "box" or self.rng.random() < 0.35:  # the whole object, as after a zoom-out or a box
            centre = np.array([(s.start + s.stop - 1) / 2 for s in box])
            return PatchGrid.around(centre + self.rng.uniform(-0.1, 0.1, 3) * extent,
                                    extent * self.rng.uniform(1.2, 1.8), im.spacing_mm)
        point = im.interior[value][self.rng.integers(len(im.interior[value]))]  # a local view at full resolution
        return PatchGrid.around(point + self.rng.uniform(-12, 12, 3), np.ones(3), im.spacing_mm)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        im = self.images[int(self.rng.choice(len(self.images), p=self.weights))]
        value = im.objects[int(self.rng.integers(len(im.objects)))]
        mode = self.rng.choice(list(MODES), p=list(MODES.values()))
        grid = self._grid(im, value, mode)
        spacing = grid.spacing_mm(im.spacing_mm)
        box = grid.image_box(im.labels.shape, pad_vox=1)
        truth = sample_box(im.labels[box] == value, box, grid, 1) >= 0.5
        inside = inside_image(im.image.shape, grid)
        foreground, background, box, previous = self._guidance(truth, spacing, mode, grid, im, value)
        image = normalized(sample(im.image, grid, 1), inside)
        image = intensity_transform(torch.from_numpy(image[None]), self.gen)[0].numpy()
        channels = np.stack([image, balls(foreground, spacing), balls(background, spacing), box,
                             previous.astype(np.float32)])
        return self._flip(channels, truth)

    def _guidance(self, truth, spacing, mode, grid, im, value):
        none = np.zeros((0, 3))
        previous = np.zeros(truth.shape, bool)
        if not truth.any():  # the patch missed the object: nothing to click on, answer nothing
            return none, none, np.zeros(PATCH_VOX, np.float32), previous
        first = _deepest(truth, spacing)[None]
        box = np.zeros(PATCH_VOX, np.float32)
        if mode in ("box", "box_correction"):
            low = np.array([s.start for s in im.boxes[value]]) + self.rng.integers(-2, 3, 3)
            high = np.array([s.stop - 1 for s in im.boxes[value]]) + self.rng.integers(-2, 3, 3)
            box = box_channel((low, high), grid)
        if mode == "box":
            clicks = first if self.rng.random() < 0.3 else none
            return clicks, none, box, previous
        foreground, background = [first], []
        if mode == "clicks":
            if self.rng.random() < 0.3:
                inner = np.argwhere(truth)
                foreground.append(inner[self.rng.integers(len(inner))][None])
            if self.rng.random() < 0.2:
                outer = np.argwhere(ndimage.binary_dilation(truth, iterations=3) & ~truth)
                if len(outer):
                    background.append(outer[self.rng.integers(len(outer))][None])
        else:
            previous = perturbed(truth, spacing, self.rng)
            for kind, error in _largest_errors(truth, previous, int(self.rng.integers(1, MAX_CORRECTIONS + 1))):
                (foreground if kind == "foreground" else background).append(_deepest(error, spacing)[None])
            if mode == "box_correction" or self.rng.random() < 0.5:
                foreground = foreground[1:]  # the first click is long gone, the prior came from a model or a box
        stack = lambda pts: np.concatenate(pts) if pts else none  # noqa: E731
        return stack(foreground), stack(background), box, previous

    def _flip(self, channels: np.ndarray, truth: np.ndarray):
        """The model runs in the image's own voxel order, which may be any: flips and axis orders."""
        for axis in range(3):
            if self.rng.random() < 0.5:
                channels, truth = np.flip(channels, axis + 1), np.flip(truth, axis)
        order = self.rng.permutation(3)
        return (np.ascontiguousarray(channels.transpose(0, *(order + 1))),
                np.ascontiguousarray(truth.transpose(*order)).astype(np.int64))

    def batch(self, size: int):
        pairs = [self.sample() for _ in range(size)]
        return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))


def click_curve(model: InteractiveModel, image: np.ndarray, spacing, truth: np.ndarray, clicks: int) -> list[float]:
    """Dice after each simulated click (the benchmark's protocol), each click's answer the next one's previous."""
    foreground, background, predicted, dices = [], [], None, []
    for _ in range(clicks):
        click = next_click(truth, predicted, spacing)
        if click is None:
            dices += [1.0] * (clicks - len(dices))
            break
        (foreground if click[0] == "foreground" else background).append(click[1])
        result = model.segment(image, spacing, np.array(foreground).reshape(-1, 3), np.array(background).reshape(-1, 3),
                               previous=predicted, focus_vox=np.array([click[1]]))
        predicted = result.mask
        dices.append(round(float(dice(predicted, truth)), 4))
    return dices


def train_interactive(images: list[ObjectImage], iterations: int, network: torch.nn.Module | None = None,
                      batch_size: int = 2, learning_rate: float = 1e-3, seed: int = 0, progress=None,
                      should_stop=None, max_seconds: float | None = None) -> dict:
    """Train (or fine-tune ``network``) on simulated interactions; AdamW with a cosine decay.

    Stops after ``iterations`` or ``max_seconds``, whichever comes first."""
    torch.manual_seed(seed)
    network = network or build_network()
    network.train()
    sampler = InteractionSampler(images, seed)
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-4)
    loss_fn = DeepSupervisionLoss(DiceCELoss())
    start, history, it = time.time(), [], 0
    for it in range(iterations):
        if (should_stop and should_stop()) or (max_seconds and time.time() - start > max_seconds):
            break
        # With a time budget the decay follows the clock, so a run cut by it still ends cooled down.
        done = max(it / iterations, (time.time() - start) / max_seconds if max_seconds else 0.0)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
        images_t, targets = sampler.batch(batch_size)
        loss = loss_fn(network(images_t), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12.0)
        optimizer.step()
        if it < 3 or (it + 1) % 25 == 0:
            entry = {"iteration": it + 1, "max_iterations": iterations, "loss": round(float(loss.detach()), 4),
                     "seconds": round(time.time() - start, 1)}
            history.append(entry)
            logger.info("interactive train %s", json.dumps(entry))
            if progress:
                progress(entry)
    network.eval()
    return {"network": network, "iterations": it + 1, "seconds": round(time.time() - start, 1), "history": history,
            "objects": sum(len(im.objects) for im in images)}
