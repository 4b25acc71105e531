"""The browser client's speed: image load and click-to-overlay, in a real Chromium (issue #33).

Two images through a real server and the page at /viewer/, as a user opens them:
- Colin27, a real 1 mm head MRI (181 x 217 x 181, sample-data/colin27);
- a synthetic 512 x 512 x 300 CT (0.7 x 0.7 x 1.5 mm; bench/clinical_ct.py's body, lungs and organs).

For each: the load (the page's own timer around opening the image: download, NiiVue's parse and
upload to the GPU, the stored label if any), then guided foreground clicks on an object, each a
real mouse click on the axial view, timed by the page from the click to the label shown, in
parts: writing the prior (the edit's first request only: later ones continue the edit the
server remembers), the request, pasting the changed region and redrawing.

Chromium runs headless with --disable-gpu, so WebGL is software-rendered (SwiftShader), on the
same 2 cores as the server: a desktop with a graphics card draws faster.

    python bench/viewer.py [--clicks 5] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))
from clinical_ct import synthetic_ct  # noqa: E402
from common import start_run, update_readme_table  # noqa: E402
from server import BenchServer  # noqa: E402

from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS, _missing, idle, ready  # noqa: E402

RESULTS = REPO / "bench" / "results" / "viewer_cpu.json"
CT_SHAPE, CT_SPACING = (512, 512, 300), (0.7, 0.7, 1.5)


def prepare(studies: Path) -> dict:
    """The two images in ``studies``; {image id: a voxel inside an object to click}."""
    shutil.copyfile(REPO / "sample-data" / "colin27" / "ch2.nii.gz", studies / "colin27_head.nii.gz")
    image, labels = synthetic_ct(CT_SHAPE, CT_SPACING, n_labels=4, seed=3)
    affine = np.diag([*CT_SPACING, 1.0])
    nib.save(nib.Nifti1Image(image, affine), str(studies / "ct_512x512x300.nii.gz"))
    organ = np.argwhere(labels == 1)
    return {"colin27_head": [90, 108, 90], "ct_512x512x300": organ[len(organ) // 2].tolist()}


def open_timed(page, image_id: str) -> dict:
    seconds = page.evaluate("""async (id) => {
        const t = performance.now();
        await window.medsegViewer.openImage(id);
        return (performance.now() - t) / 1000; }""", image_id)
    load = [t for t in page.evaluate("window.medsegViewer.state.timings") if t["what"] == "load"][-1]
    return {"open_s": round(seconds, 3), "download_s": round(load["fetch_ms"] / 1000, 3),
            "show_s": round(load["show_ms"] / 1000, 3), "file_mb": round(load["bytes"] / 2**20, 1)}


def click_timed(page, voxel) -> dict:
    before = len(page.evaluate("window.medsegViewer.state.timings"))
    page.evaluate("v => window.medsegViewer.view.centreOn(v)", voxel)
    point = page.evaluate("v => window.medsegViewer.view.canvasPointOf(v, 0)", voxel)
    box = page.locator("#gl").bounding_box()
    page.mouse.click(box["x"] + point["x"], box["y"] + point["y"])
    idle(page, 300)
    timings = page.evaluate("window.medsegViewer.state.timings")
    assert len(timings) > before, page.text_content("#error")
    t = timings[-1]
    return {(k[:-3] + "_s" if k.endswith("_ms") else k): (round(v / 1000, 3) if k.endswith("_ms") else v)
            for k, v in t.items() if k != "what"}


def summary(values: list[float]) -> dict:
    return {"median": round(float(np.median(values)), 3), "max": round(float(np.max(values)), 3)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3, help="loads of each image")
    ap.add_argument("--work", default=str(REPO / "work" / "bench-viewer"))
    args = ap.parse_args(argv)
    if _missing():
        sys.exit(_missing())
    from playwright.sync_api import sync_playwright

    info, studies = start_run(Path(args.work))
    targets = prepare(studies)
    results = {}
    with BenchServer(studies, {"models": "unet3d", "labels": "object=1", "al_auto_scoring": "false"},
                     Path(args.work) / "server.log") as srv, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{srv.url}/viewer/")
        ready(page)
        idle(page)
        info["chromium"] = browser.version
        for image_id, voxel in targets.items():
            loads = [open_timed(page, image_id) for _ in range(args.repeats)]
            page.check("input[name=tool][value=foreground]")
            clicks = []
            for n in range(args.clicks):  # the object, then points around it: each a new foreground click
                clicks.append(click_timed(page, [voxel[0] + 3 * n, voxel[1], voxel[2]]))
            page.screenshot(path=str(Path(args.work) / f"{image_id}.png"))
            results[image_id] = {"dims": page.evaluate("window.medsegViewer.state.grid.dims"), "loads": loads,
                                 "clicks": clicks,
                                 "open_s": summary([x["open_s"] for x in loads]),
                                 "click_to_overlay_s": summary([x["total_s"] for x in clicks]),
                                 "server_infer_s": summary([x["server_infer_s"] or 0 for x in clicks])}
            page.check("input[name=tool][value=navigate]")
            page.evaluate("window.medsegViewer.state.dirty = false")
        browser.close()
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out = {"machine": info, "protocol": __doc__.split("\n\n")[1], "results": results}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    write_table(out)
    print(json.dumps({k: {m: v[m] for m in ("open_s", "click_to_overlay_s", "server_infer_s")}
                      for k, v in results.items()}, indent=1))


def write_table(out: dict) -> None:
    rows = []
    for image_id, r in out["results"].items():
        parts = {k: float(np.median([c[k] for c in r["clicks"]])) for k in ("prior_s", "request_s", "overlay_s")}
        rows.append([image_id, " x ".join(map(str, r["dims"])), f"{r['loads'][0]['file_mb']}",
                     f"{r['open_s']['median']:.2f} / {r['open_s']['max']:.2f}",
                     f"{r['click_to_overlay_s']['median']:.2f} / {r['click_to_overlay_s']['max']:.2f}",
                     f"{parts['prior_s']:.2f} / {parts['request_s']:.2f} / {parts['overlay_s']:.2f}",
                     f"{r['server_infer_s']['median']:.2f}"])
    m = out["machine"]
    caption = (f"Generated by `bench/viewer.py` on {m['date']} ({m['cpu']}, {m['cores']} cores, Chromium "
               f"{m.get('chromium')} headless with software WebGL, on the same cores as the server; load "
               f"{m['load_average_before'][0]} before, {m['load_average_after'][0]} after). Seconds; open: the "
               "page's timer around opening the image; click: from the mouse click to the label drawn, median over "
               "its parts (writing the prior / the request / pasting and drawing).")
    header = ["image", "voxels", "file MB", "open s (median / max)", "click to overlay s (median / max)",
              "parts s (prior / request / overlay)", "server infer s"]
    for readme in (REPO / "bench" / "README.md", REPO / "docs" / "viewer.md"):
        update_readme_table(readme, "viewer_cpu", header, rows, caption)


if __name__ == "__main__":
    main()
