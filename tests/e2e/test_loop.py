"""The loop benchmark's smoke test: ``bench/loop.py --quick`` through real servers, and what it records.

Three images of a structure no served model knows (the right putamen on warped copies of Colin27,
which ships with the repository; BraTS whole tumour too where ``../shared`` has it): the annotator
corrects each (a box first where there is no prediction, or one a box alone beats; clicks on
the prediction otherwise), submits it with its effort, and the model is trained after two labels, so the third
image starts from a real prediction. The run fails by itself when
``GET /medseg/effort`` does not list what was submitted, in order.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medseg.data import brats

REPO = Path(__file__).resolve().parents[2]


def run_quick(pool: str, tmp_path: Path) -> dict:
    done = subprocess.run([sys.executable, str(REPO / "bench" / "loop.py"), "--quick", "--pool", pool,
                           "--work", str(tmp_path / "work"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((tmp_path / f"loop_{pool}_quick.json").read_text())


@pytest.mark.parametrize("pool", [
    "colin27_putamen",
    pytest.param("brats_whole_tumour", marks=pytest.mark.skipif(not brats.available(), reason=brats.why_absent())),
])
def test_the_quick_loop_labels_corrects_submits_and_retrains(pool, tmp_path):
    result = run_quick(pool, tmp_path)
    cap = result["args"]["max_interactions"]
    alone = {row["image"]: row for row in result["runs"]["interactive_only"]["seed0"]}
    rows = result["runs"]["random"]["seed0"]
    assert [r["n"] for r in rows] == [1, 2, 3] and len({r["image"] for r in rows}) == 3

    for row in rows + list(alone.values()):
        assert 0 <= row["interactions"] <= cap
        assert len(row["dice_per_interaction"]) == len(row["seconds_per_interaction"]) == row["interactions"]
        assert row["reached_target"] == (row["interactions"] == 0 or row["dice_per_interaction"][-1] >= 0.9)
        assert row["interactions"] == cap or row["reached_target"]
    # Before the first training there is no prediction: the loop's first image costs what guided
    # editing alone costs on it (the same server code, the same clicks).
    first = rows[0]
    assert first["model_trainings"] == 0 and first["dice_before"] == 0 and first["predict_s"] == 0
    assert first["interactions"] == alone[first["image"]]["interactions"]
    assert first["dice_per_interaction"] == pytest.approx(alone[first["image"]]["dice_per_interaction"], abs=0.02)
    # The model was trained after two labels, and the third image got its prediction.
    assert rows[1]["train_s"] > 0 and rows[1]["trained_version"] == 1 and rows[1]["published"] is True
    assert rows[2]["model_trainings"] == 1 and rows[2]["predict_s"] > 0
    # The annotator corrects a prediction with clicks where it is at least as good as a box alone on
    # that image (measured by the interactive_only arm), and starts with a box where it is not.
    assert first["started_with_box"] is True
    if rows[2]["interactions"]:
        box_alone = alone[rows[2]["image"]]["dice_per_interaction"][0]
        assert rows[2]["started_with_box"] == (rows[2]["dice_before"] < box_alone)
    assert rows[-1]["effort_report_agrees"] is True
    summary = result["summary"]["random"]
    assert summary["first_median"] == first["interactions"] and summary["images"] == 3
