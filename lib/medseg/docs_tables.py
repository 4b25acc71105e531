"""Tables in README.md and docs/ made from the code and the model cards, so that they cannot drift.

Each sits between ``<!-- key:start -->`` and ``<!-- key:end -->`` markers, the same markers
the benchmark scripts write their measured tables into.

    python -m medseg.docs_tables           # rewrite them
    python -m medseg.docs_tables --check   # exit 1 when one is out of date (a test runs this)
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "apps" / "medseg" / "model"


def replace_block(text: str, key: str, body: str) -> str:
    """``text`` with the block between ``key``'s markers replaced by ``body`` (appended when absent)."""
    block = f"<!-- {key}:start -->\n{body.rstrip()}\n<!-- {key}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(key)}:start -->.*?<!-- {re.escape(key)}:end -->", re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip() + "\n\n" + block + "\n"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def conf_table() -> str:
    from medseg.config import CONF_KEYS

    rows = [[f"`{k.name}`", k.default, k.meaning] for k in CONF_KEYS]
    return ("Generated from `medseg.config.CONF_KEYS` by `python -m medseg.docs_tables`.\n\n"
            + markdown_table(["key", "default", "meaning"], rows))


def expected_inputs(card: dict) -> str:
    """What a model's shipped weights take, from what its card says they trained on."""
    if "head" in card["data"]["train"]:
        return "T1 MR of the head as scanned (skull, neck, noise, any orientation) or skull-stripped"
    return "skull-stripped T1 MR; a head scan is skull-stripped first by `unet3d` (brain-extraction stage)"


def _median_seconds(card: dict) -> float:
    return statistics.median(case["seconds"] for cases in card["evaluation"].values() for case in cases.values())


def model_table() -> str:
    from medseg.models import MODELS

    rows = []
    for name in MODELS:  # the model table's order
        path = MODEL_DIR / name / "model_card.json"
        if not path.exists():
            continue
        card = json.loads(path.read_text())
        dice = card["heldout_dice_per_label"]
        colin = card.get("colin27", {}).get("with_skull", {}).get("brain_mask_dice")
        rows.append([
            f"[`{card['model']}`](../apps/medseg/model/{card['model']}/MODEL_CARD.md)",
            card["description"].split(" (")[0],
            expected_inputs(card),
            " / ".join(f"{dice[k]:.2f}" for k in card["labels"]),
            f"{colin:.2f}" if colin is not None else "not in its card",
            f"{_median_seconds(card):.1f}",
            f"{card['hardware']['device']}, {card['training']['seconds'] / 60:.0f} min",
        ])
    header = ["model", "what it is", "inputs it expects", "held-out Dice GM / WM", "Colin27 with skull: brain mask",
              "s per image", "trained on"]
    return ("Generated from each model card (`apps/medseg/model/*/model_card.json`) by `python -m "
            "medseg.docs_tables`. All label grey and white matter (GM / WM) of the brain. Held-out Dice: "
            "pseudo-subjects no model trained on; Colin27: a real head, brain-mask Dice against its "
            "skull-stripped scan; seconds: median infer time over the card's test images on the training "
            "machine's CPU, without the brain-extraction stage (one `unet3d` run more).\n\n" + markdown_table(header, rows))


def interactive_card_table() -> str:
    """The interactive model's card: what it trained on, and its quick check on Colin27's AAL regions."""
    path = MODEL_DIR / "interactive" / "model_card.json"
    if not path.exists():
        return "No interactive weights are shipped: guided editing is learning-free only."
    card = json.loads(path.read_text())
    check = card["quick_check"]
    rows = []
    for name, what in (("held_out_aal", "held-out AAL regions (never trained on)"),
                       ("trained_aal", "AAL regions of the training kind")):
        curve = check[name]["mean_dice_per_click"]
        noc = next(v for k, v in check[name].items() if k.startswith("noc@85"))
        rows.append([what, str(len(check[name]["regions"])),
                     " / ".join(f"{curve[n - 1]:.2f}" for n in (1, 3, 5, len(curve))), f"{noc:.1f}"])
    objects = ", ".join(f"{k} {v}" for k, v in card["data"]["objects"].items() if not k.startswith("lesions"))
    lesions = sum(v for k, v in card["data"]["objects"].items() if k.startswith("lesions"))
    redone = f"; redone {card['quick_check_at']} with the inference of that date" if card.get("quick_check_at") else ""
    return (f"Generated from `apps/medseg/model/interactive/model_card.json` by `python -m medseg.docs_tables`. "
            f"[`interactive`](../apps/medseg/model/interactive/MODEL_CARD.md): {card['description']}; "
            f"{card['network']['parameters']:,} parameters, trained "
            f"{card['training']['seconds'] / 60:.0f} min on a CPU ({card['training']['iterations']} iterations) on "
            f"objects: {objects}, and {lesions} synthetic lesions. Quick check in the training script (the model "
            f"called directly, simulated clicks on Colin27{redone}; `bench/interactive.py` measures through REST):\n\n"
            + markdown_table(["objects", "n", f"Dice after 1 / 3 / 5 / {len(curve)} clicks",
                              f"NoC@85 (of {len(curve)})"], rows))


# (file, marker key) -> the function that makes the block. Links in a block are relative to docs/.
GENERATED = {
    ("docs/configuration.md", "conf-keys"): conf_table,
    ("docs/models.md", "model-cards"): model_table,
    ("README.md", "model-cards"): lambda: model_table().replace("](../", "]("),
    ("docs/interactive.md", "interactive-model-card"): interactive_card_table,
}


def stale_blocks(root: Path = REPO_ROOT) -> list[str]:
    """The ``file:key`` blocks whose text differs from what would be generated now."""
    stale = []
    for (name, key), make in GENERATED.items():
        text = (root / name).read_text()
        if replace_block(text, key, make()) != text:
            stale.append(f"{name}:{key}")
    return stale


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only report out-of-date blocks")
    args = ap.parse_args(argv)
    if args.check:
        stale = stale_blocks()
        print("\n".join(stale) or "all generated tables are up to date")
        sys.exit(1 if stale else 0)
    for (name, key), make in GENERATED.items():
        path = REPO_ROOT / name
        path.write_text(replace_block(path.read_text(), key, make()))
        print(f"wrote {name}:{key}")


if __name__ == "__main__":
    main()
