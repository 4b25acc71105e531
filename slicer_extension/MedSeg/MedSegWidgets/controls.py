"""Small helpers for Qt controls and MRML nodes that every panel uses."""
from typing import Optional


def nodeId(node) -> Optional[str]:
    return node.GetID() if node is not None else None


def fillCombo(combo, items, preferred=()) -> None:
    current = combo.currentText
    wasBlocked = combo.blockSignals(True)
    combo.clear()
    combo.addItems(list(items))
    choice = current if current in items else next((p for p in preferred if p in items), None)
    if choice:
        combo.setCurrentIndex(combo.findText(choice))
    combo.blockSignals(wasBlocked)


def hexColour(rgb) -> str:
    return "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb)


def matrixRows(matrix) -> list:
    """A vtkMatrix4x4 as 4 rows of 4 numbers, for MedSegLib's geometry."""
    return [[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]
