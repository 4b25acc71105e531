"""The bundled MNI ICBM152 2009a symmetric T1 template and its tissue label map.

Sources: the template and the grey/white-matter probability maps ship inside the
``nilearn`` wheel (``nilearn/datasets/data/mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz``);
see sample-data/mni152/LICENSE for the copyright notice that must travel with them.
Only the T1 image and the derived label map are committed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[3]
TEMPLATE_DIR = REPO_ROOT / "sample-data" / "mni152"
TEMPLATE_T1 = TEMPLATE_DIR / "mni152_2009a_sym_t1_1mm.nii.gz"
TEMPLATE_LABELS = TEMPLATE_DIR / "mni152_2009a_sym_tissue_labels_1mm.nii.gz"

# Label contract of the sample data: the index stored in the label map per tissue.
TISSUE_LABELS = {"grey_matter": 1, "white_matter": 2}


def tissue_labels_from_probabilities(gm: np.ndarray, wm: np.ndarray, brain: np.ndarray | None = None,
                                      threshold: float = 0.5) -> np.ndarray:
    """Hard tissue labels from GM/WM probability maps.

    A voxel is brain tissue where P(GM) + P(WM) > threshold (the rest is CSF or
    outside the brain) and takes the more probable of the two tissues. ``brain``
    (the extracted T1's nonzero voxels) bounds the labels: the probability maps
    reach 1-2 mm past the template's brain extraction (167 ml of grey matter where
    the T1 is zero), and a label where the image holds nothing teaches a network to
    paint the dark CSF rim around a real brain as grey matter.
    """
    if gm.shape != wm.shape:
        raise ValueError(f"GM and WM maps differ in shape: {gm.shape} vs {wm.shape}")
    labels = np.zeros(gm.shape, dtype=np.uint8)
    tissue = (gm + wm) > threshold
    if brain is not None:
        tissue &= brain
    labels[tissue & (gm >= wm)] = TISSUE_LABELS["grey_matter"]
    labels[tissue & (wm > gm)] = TISSUE_LABELS["white_matter"]
    return labels


def load_template():
    """(image float32, labels uint8, affine) of the bundled 1 mm template."""
    import nibabel as nib

    img = nib.load(str(TEMPLATE_T1))
    lab = nib.load(str(TEMPLATE_LABELS))
    return (
        np.asarray(img.dataobj, dtype=np.float32),
        np.asarray(lab.dataobj, dtype=np.uint8),
        img.affine.copy(),
    )


def main(argv=None) -> None:
    """Derive the committed label map from nilearn's GM/WM maps (run once by a maintainer)."""
    import argparse

    import nibabel as nib

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("gm", help="mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz")
    parser.add_argument("wm", help="mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz")
    parser.add_argument("--out", default=str(TEMPLATE_LABELS))
    args = parser.parse_args(argv)
    gm_img = nib.load(args.gm)
    wm_img = nib.load(args.wm)
    brain = np.asarray(nib.load(str(TEMPLATE_T1)).dataobj) > 0
    labels = tissue_labels_from_probabilities(
        np.asarray(gm_img.dataobj, dtype=np.float32), np.asarray(wm_img.dataobj, dtype=np.float32), brain
    )
    out = nib.Nifti1Image(labels, gm_img.affine)
    out.set_data_dtype(np.uint8)
    nib.save(out, args.out)
    print(f"wrote {args.out}: {[(name, int((labels == v).sum())) for name, v in TISSUE_LABELS.items()]}")


if __name__ == "__main__":
    main()
