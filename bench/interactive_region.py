"""What answering only the recomputed region saves per click on a clinical-size CT.

Data: the synthetic 512x512x60 CT at 0.6x0.6x5 mm of ``bench/clinical_ct.py`` (4 organs). Each
object is clicked the benchmark's way (``medseg.pipeline.click_simulation``, learning-free
method, no prior, so no request reuses another's work), and every click is sent twice through
REST: once for the whole label and once with ``"changed_region_only": true``, in alternating
order. Both are timed as the caller sees them (answer decoded) and their sizes compared; the
crop must equal the whole answer inside ``region_vox``, or the run fails.

    python bench/interactive_region.py [--clicks 5]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clinical_ct import synthetic_ct  # noqa: E402
from common import start_run, update_readme_table  # noqa: E402
from server import BenchServer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHAPE, SPACING_MM = (512, 512, 60), (0.6, 0.6, 5.0)


def ask(url: str, params: dict, region_only: bool) -> tuple[np.ndarray, dict, float, int]:
    """(label array, answer params, seconds as the caller sees it, answer bytes)."""
    from tests.e2e.helpers import parse_multipart_label

    t = time.perf_counter()
    r = requests.post(f"{url}/infer/interactive", params={"image": "clinical_ct"},
                      data={"params": json.dumps({**params, "changed_region_only": region_only})}, timeout=300)
    r.raise_for_status()
    label, meta = parse_multipart_label(r)
    array = np.asarray(label.dataobj)
    return array, meta, time.perf_counter() - t, len(r.content)


def click_twice(url: str, truth: np.ndarray, clicks: int, order_seed: int) -> list[dict]:
    from medseg.pipeline.click_simulation import next_click

    params, predicted, rows = {"foreground": [], "background": []}, None, []
    for n in range(clicks):
        click = next_click(truth, predicted, SPACING_MM)
        if click is None:
            break
        params[click[0]].append(click[1])
        answers = {}
        for region_only in ((False, True) if (n + order_seed) % 2 == 0 else (True, False)):
            answers[region_only] = ask(url, params, region_only)
        whole, crop = answers[False], answers[True]
        region = tuple(slice(a, b) for a, b in crop[1]["region_vox"])
        if crop[1]["label_grid"] != "changed_region" or not np.array_equal(crop[0], whole[0][region]):
            raise SystemExit("the region answer is not the whole answer's crop")
        predicted = whole[0] == 1
        rows.append({"whole_s": round(whole[2], 3), "region_s": round(crop[2], 3),
                     "whole_bytes": whole[3], "region_bytes": crop[3],
                     "region_vox": [s.stop - s.start for s in region]})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--work", default=str(REPO / "work" / "bench-interactive-region"))
    args = ap.parse_args(argv)
    import nibabel as nib

    sys.path.insert(0, str(REPO))
    work = Path(args.work)
    info, studies = start_run(work)
    image, labels = synthetic_ct(SHAPE, SPACING_MM, 4, seed=1)
    nib.save(nib.Nifti1Image(image, np.diag([*SPACING_MM, 1.0])), str(studies / "clinical_ct.nii.gz"))
    with BenchServer(studies, {"models": "unet3d", "al_auto_scoring": "false"}, work / "server.log") as srv:
        ask(srv.url, {"foreground": [[256, 256, 30]]}, False)  # the image read and cached before timing
        per_organ = {f"organ_{v}": click_twice(srv.url, labels == v, args.clicks, v)
                     for v in range(1, 5) if (labels == v).any()}
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    rows = [r for organ in per_organ.values() for r in organ]
    median = {k: float(np.median([r[k] for r in rows])) for k in ("whole_s", "region_s", "whole_bytes", "region_bytes")}
    result = {"machine": info, "data": __doc__.split("\n\n")[1].replace("\n", " "), "clicks": len(rows),
              "median": median, "region_over_whole_time": round(median["region_s"] / median["whole_s"], 3),
              "per_organ": per_organ}
    out = REPO / "bench" / "results" / f"interactive_region_{info['device']}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("clicks", "median", "region_over_whole_time")}))
    table = [["whole label", f"{median['whole_s']:.2f}", f"{median['whole_bytes'] / 1e3:.0f}"],
             ["changed_region_only", f"{median['region_s']:.2f}", f"{median['region_bytes'] / 1e3:.0f}"]]
    caption = (f"One click's answer on a 512x512x60 CT (learning-free method, {len(rows)} clicks on 4 organs, each "
               f"sent both ways), generated by `bench/interactive_region.py` on {info['date']} ({info['cpu']}, "
               f"{info['threads']} threads, load {info['load_average_before']}). Region / whole time: "
               f"{result['region_over_whole_time']}.")
    update_readme_table(REPO / "bench" / "README.md", f"interactive_region_{info['device']}",
                        ["answer", "median s per click", "median kB sent"], table, caption)


if __name__ == "__main__":
    main()
