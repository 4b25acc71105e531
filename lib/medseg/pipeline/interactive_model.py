"""The learned, class-agnostic interactive model: image plus guidance in, one object out.

Design (after nnInteractive, Isensee et al. 2025, arXiv 2503.08373, sized for a CPU):
- The network sees one patch of PATCH_VOX voxels around the interaction: the image and
  GUIDANCE_CHANNELS: foreground clicks, background clicks, the box, and the object as it
  was before this interaction (nnInteractive's ``prev_seg``). It answers that one object,
  whatever it is: nothing in it knows label names.
- Clicks are balls of CLICK_RADIUS_MM, in millimetres, not voxels, so that a click means the
  same on a 1 mm brain and a 5 mm CT.
- The patch is taken in the image's own voxel order (no reorientation: training flips and
  permutes axes), at the image's spacing where the region fits, coarser where it does not.
- Auto-zoom: when the object reaches a face of the patch that is not the image's border,
  the region grows and the network runs again with its own answer as the previous object.
- The answer is pasted back into the image's exact grid; outside the regions it ran on the
  previous object stays as it was.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from medseg.networks.unet import UNet
from medseg.pipeline.seeded import near_clicks

PATCH_VOX = (48, 48, 48)
GUIDANCE_CHANNELS = ("foreground_clicks", "background_clicks", "box", "previous_object")
IN_CHANNELS = 1 + len(GUIDANCE_CHANNELS)
FEATURES = (12, 24, 48, 96)
CLICK_RADIUS_MM = 3.0
MAX_ZOOM_OUTS = 3
# Each zoom-out is coarser, and a coarse pass adds false voxels along the object's edge on every
# click; widening by half rather than doubling keeps the patch finer. Chosen on held-out AAL
# regions 2, 26, ..., 98 and confirmed on other never-trained ones (14, 38, ..., 110); the
# before/after is in the git history of bench/results/interactive_cpu.json and the model card.
ZOOM_OUT_FACTOR = 1.5
BOX_MARGIN = 0.25  # of the box's extent on each side, so the network sees the object's edge
# A new object from one click is read at these widths of its first patch; a wider read answers only
# where the edge of its object separates more different tissue than the narrower one's, by at least
# WIDER_READ_MIN_CONTRAST standard deviations of the patch (``edge_contrast``). The network draws an
# object about half its patch wide whatever the patch holds, so one click does not tell it the
# object's size: at 48 mm a held-out 70 mm whole glioma came out as a fragment (Dice 0.24). Chosen on the
# 15 BraTS objects of the training cases and the 58 trained AAL regions (exploratory runs of
# 2026-12-08): widths up to 10/3 widened more gliomas, but also atlas regions, which have no edge
# of their own, and their next clicks could not take the excess away. With this rule no trained
# atlas region was read wider.
ONE_CLICK_READ_WIDTHS = (1.0, 2.0)
WIDER_READ_MIN_CONTRAST = 0.6
EDGE_SHELL_MM = 3.0


def build_network() -> torch.nn.Module:
    strides = [[1, 1, 1]] + [[2, 2, 2]] * (len(FEATURES) - 1)
    return UNet(3, IN_CHANNELS, 2, features=FEATURES, kernel_sizes=[[3, 3, 3]] * len(FEATURES), strides=strides,
                deep_supervision=True)


def network_config() -> dict:
    """What a checkpoint must have been trained with to be loaded into ``build_network``."""
    return {"patch_vox": list(PATCH_VOX), "features": list(FEATURES), "guidance": list(GUIDANCE_CHANNELS),
            "click_radius_mm": CLICK_RADIUS_MM}


def network_from_checkpoint(checkpoint: dict) -> torch.nn.Module:
    trained_with = {k: checkpoint.get("network", {}).get(k) for k in network_config()}
    if trained_with != network_config():
        raise ValueError(f"interactive weights were trained for {trained_with}, this version runs {network_config()}")
    network = build_network()
    network.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
    return network.eval()


@dataclass
class PatchGrid:
    """Where a patch lies in the image: patch voxel p is image index ``origin + p * step``."""

    origin: np.ndarray  # (3,) float, image index of patch voxel 0
    step: np.ndarray  # (3,) float, image voxels per patch voxel (>= 1: never finer than the image)

    @classmethod
    def around(cls, centre_vox, extent_vox, image_spacing_mm) -> "PatchGrid":
        """A patch centred on ``centre_vox`` covering at least ``extent_vox`` image voxels per axis.

        The step is the same in millimetres on every axis where the image allows, so that the
        network sees shapes undistorted; a coarse axis (5 mm slices) keeps its own spacing.
        """
        spacing = np.asarray(image_spacing_mm, float)
        patch = np.asarray(PATCH_VOX, float)
        needed_mm = float(np.max(np.asarray(extent_vox, float) * spacing / (patch - 1)))
        step = np.maximum(1.0, needed_mm / spacing)
        origin = np.asarray(centre_vox, float) - (patch - 1) / 2 * step
        return cls(origin, step)

    def image_box(self, shape, pad_vox: int = 0) -> tuple[slice, ...]:
        """The image voxels the patch covers (clipped to the image)."""
        low = np.floor(self.origin).astype(int) - pad_vox
        high = np.ceil(self.origin + (np.asarray(PATCH_VOX) - 1) * self.step).astype(int) + 1 + pad_vox
        return tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(low, high, shape))

    def spacing_mm(self, image_spacing_mm) -> np.ndarray:
        return self.step * np.asarray(image_spacing_mm, float)

    def to_patch(self, points_vox) -> np.ndarray:
        return (np.asarray(points_vox, float).reshape(-1, 3) - self.origin) / self.step


def sample(volume: np.ndarray, grid: PatchGrid, order: int) -> np.ndarray:
    """``volume`` seen through the patch grid (zero outside the image).

    Only the image voxels under the patch are read, so a patch costs the same on any image size.
    """
    box = grid.image_box(volume.shape, pad_vox=1)
    return sample_box(volume[box], box, grid, order)


def sample_box(local: np.ndarray, box: tuple[slice, ...], grid: PatchGrid, order: int) -> np.ndarray:
    """``sample`` of the image voxels ``box`` (as ``grid.image_box(shape, pad_vox=1)`` gives), given as ``local``."""
    if not local.size:
        return np.zeros(PATCH_VOX, np.float32)
    start = np.array([b.start for b in box], float)
    return ndimage.affine_transform(np.asarray(local, np.float32), grid.step, offset=grid.origin - start,
                                    output_shape=PATCH_VOX, order=order, mode="constant", cval=0.0)


def inside_image(shape, grid: PatchGrid) -> np.ndarray:
    """Patch voxels that fall inside the image."""
    inside = [(a >= -0.5) & (a <= n - 0.5) for a, n in
              ((grid.origin[i] + np.arange(PATCH_VOX[i]) * grid.step[i], shape[i]) for i in range(3))]
    return inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]


def normalized(patch: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Clipped to the patch's own 0.5-99.5 percentiles and z-scored: the same for CT and MR,
    since the model does not know which one it sees."""
    values = patch[inside] if inside.any() else patch.ravel()
    low, high = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(patch, low, high)
    std = float(clipped[inside].std()) if inside.any() else float(clipped.std())
    return ((clipped - float(clipped[inside].mean() if inside.any() else clipped.mean())) / max(std, 1e-6)
            ).astype(np.float32)


def balls(points_patch: np.ndarray, spacing_mm: np.ndarray, radius_mm: float = CLICK_RADIUS_MM) -> np.ndarray:
    """A channel with a ball of ``radius_mm`` (at least the voxel itself) at each point."""
    out = np.zeros(PATCH_VOX, np.float32)
    reach = np.maximum(1, np.ceil(radius_mm / spacing_mm)).astype(int)
    for point in np.rint(points_patch).astype(int):
        if np.any(point < 0) or np.any(point >= PATCH_VOX):
            continue
        lo = np.maximum(0, point - reach)
        hi = np.minimum(PATCH_VOX, point + reach + 1)
        axes = [(np.arange(a, b) - p) * s for a, b, p, s in zip(lo, hi, point, spacing_mm)]
        d2 = axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = np.maximum(out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]],
                                                               d2 <= max(radius_mm, spacing_mm.max() / 2) ** 2)
    return out


def box_channel(box_vox, grid: PatchGrid) -> np.ndarray:
    out = np.zeros(PATCH_VOX, np.float32)
    if box_vox is None:
        return out
    low, high = grid.to_patch(box_vox[0])[0], grid.to_patch(box_vox[1])[0]
    a = np.clip(np.floor(np.minimum(low, high)), 0, PATCH_VOX).astype(int)
    b = np.clip(np.ceil(np.maximum(low, high)) + 1, 0, PATCH_VOX).astype(int)
    out[a[0]:b[0], a[1]:b[1], a[2]:b[2]] = 1
    return out


def network_input(image: np.ndarray, spacing_mm, grid: PatchGrid, foreground_vox, background_vox, box_vox,
                  previous: np.ndarray | None) -> np.ndarray:
    """(IN_CHANNELS, *PATCH_VOX) float32: the image patch and its guidance channels."""
    inside = inside_image(image.shape, grid)
    patch_spacing = grid.spacing_mm(spacing_mm)
    channels = [
        normalized(sample(image, grid, 1), inside),
        balls(grid.to_patch(foreground_vox), patch_spacing),
        balls(grid.to_patch(background_vox), patch_spacing),
        box_channel(box_vox, grid),
        sample(previous, grid, 1) if previous is not None else np.zeros(PATCH_VOX, np.float32),
    ]
    return np.stack(channels)


def paste(probability_patch: np.ndarray, grid: PatchGrid, shape) -> tuple[tuple[slice, ...], np.ndarray]:
    """The object on the image voxels the patch covers: (their slices, bool mask)."""
    box = grid.image_box(shape)
    start = np.array([s.start for s in box], float)
    # image index i  ->  patch coordinate (i - origin) / step
    local = ndimage.affine_transform(probability_patch, 1 / grid.step, offset=(start - grid.origin) / grid.step,
                                     output_shape=tuple(s.stop - s.start for s in box), order=1, mode="nearest")
    return box, local >= 0.5


@dataclass
class LearnedResult:
    mask: np.ndarray
    region_vox: tuple[slice, ...]
    seconds: float
    zoom_outs: int
    patch_spacing_mm: list[float]


class InteractiveModel:
    """The trained network on one device, answering interactions on an image grid."""

    def __init__(self, network: torch.nn.Module, device: torch.device):
        self.network = network.to(device).eval()
        self.device = device

    def probabilities(self, channels: np.ndarray) -> np.ndarray:
        return self.batch_probabilities(channels[None])[0]

    @torch.no_grad()
    def batch_probabilities(self, channels: np.ndarray) -> np.ndarray:
        """(n, *PATCH_VOX) object probabilities for (n, IN_CHANNELS, *PATCH_VOX) inputs."""
        out = self.network(torch.from_numpy(channels).to(self.device))
        logits = out[0] if isinstance(out, (list, tuple)) else out
        return torch.softmax(logits.float(), 1)[:, 1].cpu().numpy()

    def segment(self, image: np.ndarray, spacing_mm, foreground_vox, background_vox, box_vox=None,
                previous: np.ndarray | None = None, focus_vox=None,
                correction_radius_mm: float | None = None) -> LearnedResult:
        """The object after these clicks and box, on the image grid.

        ``previous``: the object before them (bool, image grid), or None for a new object.
        ``focus_vox``: the interactions that are new (default all of them): the first patch
        is centred on them; earlier ones are still shown to the network as guidance.
        ``correction_radius_mm``: ``previous`` is a segmentation being corrected: see
        ``local_correction``. Finite for a stored or uploaded prior (no auto-zoom, since nothing
        far may change); infinite for the edit's own previous answer (a foreground click only
        adds, a background click only takes away, wherever the network says). A box that is new
        in this request starts the object afresh inside it (see ``_new_object_in_box``).
        """
        if box_vox is not None and focus_vox is None and previous is not None and previous.any():
            return self._new_object_in_box(image, spacing_mm, foreground_vox, background_vox, box_vox, previous)
        if correction_radius_mm is not None and previous is not None and previous.any():
            new = np.reshape(focus_vox if focus_vox is not None else
                             np.concatenate([np.reshape(foreground_vox, (-1, 3)), np.reshape(background_vox, (-1, 3))]),
                             (-1, 3))
            is_foreground = (new[:, None, :] == np.reshape(foreground_vox, (1, -1, 3))).all(-1).any(1)
            if np.isinf(correction_radius_mm):
                return self._continued(image, spacing_mm, foreground_vox, background_vox, box_vox, previous,
                                       new[is_foreground], new[~is_foreground])
            return self._corrected(image, spacing_mm, foreground_vox, background_vox, box_vox, previous, focus_vox,
                                   new[is_foreground], new[~is_foreground], correction_radius_mm)
        return self._segment(image, spacing_mm, foreground_vox, background_vox, box_vox, previous, focus_vox,
                             MAX_ZOOM_OUTS, may_read_wider=previous is None)

    def _continued(self, image, spacing_mm, foreground_vox, background_vox, box_vox, previous, new_foreground,
                   new_background) -> LearnedResult:
        """The edit's own previous answer, changed by its new clicks. A background click takes away what
        the network, shown the previous answer, no longer calls the object. A foreground click adds,
        while the edit has no background click, what the network reads afresh from all the clicks
        (and the box); after one, what it adds shown the previous answer.

        Shown its previous answer, the network added about a click's ball even where the click sat
        in a large missed part (3,000 of 176,000 missed voxels on a held-out glioma): it was trained
        on previous objects that are nearly right. Read afresh, the patch covers all the clicks and
        grows with them. But a fresh read knows nothing of what background clicks took away beyond
        their own balls, and put it back: on a held-out atlas region one such click added 13,000
        false voxels to a 7,000-voxel object. Exploratory runs of 2026-12-07 on the 15 held-out
        BraTS objects and 5 held-out atlas regions chose this rule over the fresh read for every
        click, over keeping only the fresh growth near the click or nearer to a foreground click than
        to a background one; bench/interactive_brats.py and bench/interactive.py measure it. The
        direction rule (``local_correction``) holds either way."""
        mask, parts = previous.copy(), []
        if len(new_background):
            parts.append(self._segment(image, spacing_mm, foreground_vox, background_vox, box_vox, previous,
                                       new_background, MAX_ZOOM_OUTS))
            mask = local_correction(mask, parts[-1].mask, [], new_background, spacing_mm, math.inf)
        if len(new_foreground):
            afresh = not len(np.reshape(background_vox, (-1, 3)))
            parts.append(self._segment(image, spacing_mm, foreground_vox, background_vox, box_vox,
                                       None if afresh else previous, None if afresh else new_foreground,
                                       MAX_ZOOM_OUTS))
            mask = local_correction(mask, parts[-1].mask, new_foreground, [], spacing_mm, math.inf)
        region = tuple(slice(min(p.region_vox[a].start for p in parts), max(p.region_vox[a].stop for p in parts))
                       for a in range(3))
        return LearnedResult(mask, region, sum(p.seconds for p in parts), max(p.zoom_outs for p in parts),
                             parts[-1].patch_spacing_mm)

    def _corrected(self, image, spacing_mm, foreground_vox, background_vox, box_vox, previous, focus_vox,
                   new_foreground, new_background, radius_mm: float) -> LearnedResult:
        """Someone's segmentation changed by new clicks, only within ``radius_mm`` of them and only in
        each click's direction (``local_correction``); nothing far may change, so no auto-zoom.

        New foreground clicks, while the edit has no background click, add what the network reads
        afresh from the edit's clicks (and box) near them, as in a continued edit (``_continued``):
        shown the prior, it added little more than the click's ball. On automatic whole-glioma
        predictions at 2 mm (9 from the loop benchmark, Dice 0.57-0.88, exploratory run of
        2026-12-07) ten clicks ended at a mean Dice of 0.87 instead of 0.82, and no image ended lower.
        Read afresh after background clicks, the union put back what they had taken away, and three
        of those images ended lower; so after one, the network is shown the prior as before."""
        if len(new_foreground) and not len(new_background) and not len(np.reshape(background_vox, (-1, 3))):
            result = self._segment(image, spacing_mm, foreground_vox, background_vox, box_vox, None, new_foreground,
                                   max_zoom_outs=0)
        else:
            result = self._segment(image, spacing_mm, foreground_vox, background_vox, box_vox, previous, focus_vox,
                                   max_zoom_outs=0)
        result.mask = local_correction(previous, result.mask, new_foreground, new_background, spacing_mm, radius_mm)
        return result

    def _new_object_in_box(self, image, spacing_mm, foreground_vox, background_vox, box_vox, previous) -> LearnedResult:
        """A box drawn over a segmentation: the object inside the box segmented afresh, the rest kept.

        Shown the segmentation as its previous answer, the network mostly keeps it: on 5 gliomas at
        2 mm with an automatic prediction as the prior (Dice 0.68-0.83), the box then gave less than
        the box alone on 4 (exploratory run of 2026-12-07). And corrected only near clicks, the box
        (which has none) changed nothing at all. Someone who draws a box means "the object is this,
        in here"; other objects of the segmentation lie outside it and stay."""
        fresh = self._segment(image, spacing_mm, foreground_vox, background_vox, box_vox, None, None, MAX_ZOOM_OUTS)
        mask = previous.copy()
        mask[fresh.region_vox] = fresh.mask[fresh.region_vox]
        fresh.mask = mask
        return fresh

    def _segment(self, image, spacing_mm, foreground_vox, background_vox, box_vox, previous, focus_vox,
                 max_zoom_outs: int, may_read_wider: bool = False) -> LearnedResult:
        """The network's answer on a first patch, zoomed out while the object runs into its faces.
        ``may_read_wider``: a new object; if it is one click, see ``_one_click_read``. (A click that
        corrects a prior is read at its own width: wider, on 9 automatic glioma predictions at 2 mm
        ten clicks ended at a mean Dice of 0.796 instead of 0.801, exploratory run of 2026-12-08.)"""
        start = time.perf_counter()
        shape = image.shape
        mask = np.zeros(shape, bool) if previous is None else previous.copy()
        grid = self.first_grid(shape, spacing_mm, foreground_vox, background_vox, box_vox, previous, focus_vox)
        probability = None
        if may_read_wider and box_vox is None and len(np.reshape(foreground_vox, (-1, 3))) == 1 and \
                not len(np.reshape(background_vox, (-1, 3))):
            grid, probability = self._one_click_read(image, spacing_mm, grid, foreground_vox)
        zoom_outs, boxes = 0, []
        while True:
            if probability is None:  # the input is sampled crop by crop: no full-size copy
                probability = self.probabilities(network_input(image, spacing_mm, grid, foreground_vox, background_vox,
                                                               box_vox, mask if mask.any() else None))
            box, local = paste(probability, grid, shape)
            probability = None  # the next pass, if any, reads its own grid
            axes_to_grow = _axes_changed_at_faces(mask[box], local, box, shape)
            mask[box] = local
            boxes.append(box)
            if not axes_to_grow or zoom_outs >= max_zoom_outs:
                break
            zoom_outs += 1
            grid = _zoomed_out(local, box, axes_to_grow, shape, spacing_mm)
        region = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))
        return LearnedResult(mask, region, time.perf_counter() - start, zoom_outs,
                             [round(float(s), 3) for s in grid.spacing_mm(spacing_mm)])

    def _one_click_read(self, image, spacing_mm, grid: PatchGrid, foreground_vox) -> tuple[PatchGrid, np.ndarray]:
        """(grid, probabilities) of a new object's first read: ``grid`` or one ONE_CLICK_READ_WIDTHS wider
        where that one's edge is clearly on a boundary (see WIDER_READ_MIN_CONTRAST). Both patches go
        through the network in one batch, which on a CPU costs less than two passes."""
        centre = grid.origin + (np.asarray(PATCH_VOX) - 1) / 2 * grid.step
        finest_mm = float(grid.spacing_mm(spacing_mm).min())  # on thick slices only the fine axes widen at first
        grids = [grid if width == 1 else PatchGrid.around(
            centre, (np.asarray(PATCH_VOX) - 1) * width * finest_mm / np.asarray(spacing_mm, float), spacing_mm)
            for width in ONE_CLICK_READ_WIDTHS]
        none = np.zeros((0, 3))
        probabilities = self.batch_probabilities(np.stack([
            network_input(image, spacing_mm, g, foreground_vox, none, None, None) for g in grids]))
        contrasts = [edge_contrast(sample(image, g, 1), p >= 0.5, inside_image(image.shape, g),
                                   float(g.spacing_mm(spacing_mm).max())) for g, p in zip(grids, probabilities)]
        best = 0
        for k in range(1, len(grids)):
            if contrasts[k] >= WIDER_READ_MIN_CONTRAST and contrasts[k] > contrasts[best]:
                best = k
        return grids[best], probabilities[best]

    @staticmethod
    def first_grid(shape, spacing_mm, foreground_vox, background_vox, box_vox, previous, focus_vox) -> PatchGrid:
        """A box fixes the region; otherwise the new clicks at the image's own resolution."""
        if box_vox is not None and focus_vox is None:
            low, high = np.asarray(box_vox[0], float), np.asarray(box_vox[1], float)
            extent = (high - low + 1) * (1 + 2 * BOX_MARGIN)
            return PatchGrid.around((low + high) / 2, extent, spacing_mm)
        focus = np.asarray(focus_vox if focus_vox is not None else
                           np.concatenate([np.reshape(foreground_vox, (-1, 3)), np.reshape(background_vox, (-1, 3))]),
                           float).reshape(-1, 3)
        if not len(focus):  # only a previous object (and scribbles reduced to clicks upstream)
            focus = np.argwhere(previous).astype(float) if previous is not None and previous.any() else \
                (np.asarray(shape, float)[None] - 1) / 2
        low, high = focus.min(0), focus.max(0)
        extent = np.maximum(high - low + 1, 0) * (1 + 2 * BOX_MARGIN)
        return PatchGrid.around((low + high) / 2, extent, spacing_mm)


def edge_contrast(image_patch: np.ndarray, object_patch: np.ndarray, inside: np.ndarray,
                  patch_step_mm: float) -> float:
    """How different the tissue just inside the object's edge is from the tissue just outside it:
    the difference of the mean intensities of EDGE_SHELL_MM shells, in standard deviations of the
    patch (its voxels in the image above their 5th percentile, which leaves out the air around a
    head). High where the edge lies on a boundary of the image, low where it cuts through like tissue."""
    shell = max(1, int(round(EDGE_SHELL_MM / patch_step_mm)))
    outer = ndimage.binary_dilation(object_patch, iterations=shell) & ~object_patch
    inner = object_patch & ~ndimage.binary_erosion(object_patch, iterations=shell)
    values = image_patch[inside]
    if not inner.any() or not outer.any() or not values.size:
        return 0.0
    spread = float(values[values > np.percentile(values, 5)].std()) if values.size > 1 else 0.0
    return abs(float(image_patch[inner].mean()) - float(image_patch[outer].mean())) / max(spread, 1e-6)


def local_correction(previous: np.ndarray, answer: np.ndarray, foreground_vox, background_vox, spacing_mm,
                     radius_mm: float) -> np.ndarray:
    """``previous`` corrected by ``answer`` only where the new clicks ask: a foreground click can
    only add to the object, and a background click only take away, within ``radius_mm`` of it.

    A prior from an automatic model is mostly right and large (a whole white matter); the network
    sees one patch of it, and its answer there redraws edges nobody clicked on. On a held-out
    head's unet3d white matter, exploratory runs of 2026-12-04 saw each click lower the Dice
    without this rule; bench/interactive.py measures it ("unet3d then clicks").

    With an infinite radius only the direction holds: an edit's own previous answer (after a box,
    or earlier clicks) may grow or shrink by a whole patch, but never the wrong way. On 2 mm
    gliomas (bench/results/loop_brats_whole_tumour_direction_rule_{on,off}.json) the last Dice after a
    box and clicks rose on 7 of the 8 tumours the box alone did not finish."""
    out = previous.copy()
    for points, adds in ((foreground_vox, True), (background_vox, False)):
        if not len(points):
            continue
        if np.isinf(radius_mm):  # anywhere: only the direction of the click is enforced
            out = (out | answer) if adds else (out & answer)
            continue
        box, near = _within_mm(previous.shape, np.reshape(points, (-1, 3)), spacing_mm, radius_mm)
        out[box] = (out[box] | (answer[box] & near)) if adds else (out[box] & (answer[box] | ~near))
    return out


def _within_mm(shape, points_vox: np.ndarray, spacing_mm, radius_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """The voxels within ``radius_mm`` of any of the points: (their bounding slices, mask there)."""
    reach = np.ceil(radius_mm / np.asarray(spacing_mm, float)).astype(int)
    low = np.maximum(points_vox.min(0) - reach, 0)
    high = np.minimum(points_vox.max(0) + reach + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    return box, near_clicks(tuple(high - low), points_vox - low, spacing_mm, radius_mm)


def _zoomed_out(local: np.ndarray, box, axes_to_grow: set[int], shape, spacing_mm) -> PatchGrid:
    """The next region around the object ``local`` (on the image voxels ``box``; not empty, since
    it reached a face): ZOOM_OUT_FACTOR times wider than ``box`` along the axes where it ran into a face,
    just around the object along the others, and never wider than the image.

    Growing only where needed keeps the patch fine: on a 0.6x0.6x5 mm CT, doubling all three
    axes of a 48-slice region asked for 480 mm through-plane, and the patch went to 10 mm voxels.
    """
    covered = np.array([b.stop - b.start for b in box], float)
    nz = np.argwhere(local)
    low, high = nz.min(0), nz.max(0)
    extent = [covered[a] * ZOOM_OUT_FACTOR if a in axes_to_grow else (high[a] - low[a] + 1) * (1 + 2 * BOX_MARGIN)
              for a in range(3)]
    centre = (low + high) / 2 + np.array([b.start for b in box])
    return PatchGrid.around(centre, np.minimum(extent, np.asarray(shape, float)), spacing_mm)


def _axes_changed_at_faces(before: np.ndarray, after: np.ndarray, box, shape) -> set[int]:
    """The axes along which the object touches a face of the region (one that is not the
    image's border) and differs there from what it was: the region was too small to hold the change."""
    axes = set()
    for axis in range(3):
        for side, index in ((0, 0), (1, -1)):
            at_border = box[axis].start == 0 if side == 0 else box[axis].stop == shape[axis]
            if at_border:
                continue
            face_after = np.take(after, index, axis=axis)
            if face_after.any() and not np.array_equal(face_after, np.take(before, index, axis=axis)):
                axes.add(axis)
    return axes
