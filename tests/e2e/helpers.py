"""Small client helpers for the end-to-end tests (plain requests against the REST API)."""
from __future__ import annotations

import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import requests

# Training in tests: a couple of iterations on the CPU, and the weights published whatever their
# validation score (a tiny run is rarely better than the served weights; the gate has its own tests).
TINY_TRAINING = {"max_iterations": 2, "batch_size": 1, "augment": False, "model_selection": False,
                 "publish": "always", "val_every": 1}


def parse_multipart_label(response: requests.Response):
    """(label image, params) from MONAI Label's multipart infer answer."""
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    decoder = MultipartDecoder(response.content, response.headers["content-type"])
    params, image = None, None
    for part in decoder.parts:
        disposition = part.headers.get(b"Content-Disposition", b"").decode()
        if 'name="params"' in disposition:
            params = json.loads(part.content)
        elif 'name="image"' in disposition:
            fh = nib.FileHolder(fileobj=io.BytesIO(gunzip_if_needed(part.content)))
            image = nib.Nifti1Image.from_file_map({"header": fh, "image": fh})
            image = nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header)
    return image, params


def gunzip_if_needed(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def infer(url: str, model: str, image_id: str, **params):
    r = requests.post(f"{url}/infer/{model}", params={"image": image_id}, data={"params": json.dumps(params)},
                      timeout=600)
    r.raise_for_status()
    return parse_multipart_label(r)


def put_label(url: str, image_id: str, path: Path, tag: str = "final", params: dict | None = None):
    with open(path, "rb") as f:
        return requests.put(f"{url}/datastore/label", params={"image": image_id, "tag": tag},
                            files={"label": (path.name, f)}, data={"params": json.dumps(params or {})}, timeout=120)


def datastore_state(url: str) -> dict:
    return requests.get(f"{url}/datastore/", params={"output": "all"}, timeout=30).json()


def dice(pred: np.ndarray, truth: np.ndarray, value: int) -> float:
    p, t = pred == value, truth == value
    return float(2 * np.logical_and(p, t).sum() / max(p.sum() + t.sum(), 1))
