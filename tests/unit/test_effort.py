"""The effort report (medseg.effort) and the structures a label holds (medseg.labels)."""
import numpy as np

from medseg.effort import effort_report, render_html
from medseg.labels import SLAB_VOXELS, structures_present


def test_the_structures_of_a_label_are_those_with_voxels():
    label = np.zeros(SLAB_VOXELS + 10, np.uint16)  # more than one slab
    label[-1] = 3
    label[5] = 1
    assert structures_present(label, {"liver": 1, "spleen": 2, "kidney": 3}) == ["kidney", "liver"]
    assert structures_present(np.zeros((4, 4, 4), np.uint8), {"liver": 1}) == []


def test_the_report_orders_by_submission_and_counts_per_structure():
    versions = {
        "b": [{"version": 1, "ts": 20, "time": "t2", "effort": {"interactions": 4, "seconds": 30.0},
               "structures": ["liver"]}],
        "a": [{"version": 1, "ts": 10, "time": "t1", "effort": {"interactions": 9, "seconds": 80.0},
               "structures": ["liver", "<i>spleen</i>"]},
              {"version": 2, "ts": 30, "time": "t3", "effort": None, "structures": ["liver"]}],  # a restore
    }
    report = effort_report(versions)
    assert [(r["image"], r["version"]) for r in report["labels"]] == [("a", 1), ("b", 1)]
    assert [(r["n"], r["image"], r["interactions"]) for r in report["per_structure"]["liver"]] == \
        [(1, "a", 9), (2, "b", 4)]
    assert report["summary"]["liver"] == {"images": 2, "first_interactions": 9, "latest_interactions": 4,
                                          "median_interactions": 6.5, "median_seconds": 55.0}
    page = render_html(report)
    assert "&lt;i&gt;spleen&lt;/i&gt;" in page and "<i>spleen" not in page and "<script" not in page
    assert "No submitted label" in render_html(effort_report({}))
