"""What labelling cost: the interactions and seconds of every submitted final label, per structure,
in the order the labels were submitted (``GET /medseg/effort``).

Clients send ``effort`` ({"interactions", "seconds"}) with a final label; the local datastore
keeps it in the label's version, with the structures the label holds. This is the number a
department head asks for: does the tenth image of a structure cost less than the first?
"""
from __future__ import annotations

import html
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import HTMLResponse
from monailabel.config import settings
from monailabel.endpoints.user.auth import RBAC, User
from monailabel.interfaces.utils.app import app_instance

def effort_report(versions_by_image: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Every version with an effort, oldest first, and per structure the n-th image labelled."""
    submitted = []
    for image, versions in versions_by_image.items():
        for v in versions:
            effort = v.get("effort") or {}
            if "interactions" not in effort and "seconds" not in effort:
                continue
            submitted.append({"image": image, "version": v.get("version"), "time": v.get("time"),
                              "ts": v.get("ts", 0), "interactions": effort.get("interactions"),
                              "seconds": effort.get("seconds"), "structures": v.get("structures")})
    submitted.sort(key=lambda s: s["ts"])
    per_structure: dict[str, list[dict[str, Any]]] = {}
    for s in submitted:
        for name in s["structures"] or ["(not recorded)"]:
            per_structure.setdefault(name, []).append(
                {"n": len(per_structure.get(name, [])) + 1, "image": s["image"], "version": s["version"],
                 "time": s["time"], "interactions": s["interactions"], "seconds": s["seconds"]})
    summary = {name: _summary(rows) for name, rows in per_structure.items()}
    return {"labels": [{k: v for k, v in s.items() if k != "ts"} for s in submitted],
            "per_structure": per_structure, "summary": summary}


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    interactions = [r["interactions"] for r in rows if r["interactions"] is not None]
    seconds = [r["seconds"] for r in rows if r["seconds"] is not None]
    return {"images": len(rows), "first_interactions": interactions[0] if interactions else None,
            "latest_interactions": interactions[-1] if interactions else None,
            "median_interactions": float(np.median(interactions)) if interactions else None,
            "median_seconds": round(float(np.median(seconds)), 1) if seconds else None}


def render_html(report: dict[str, Any]) -> str:
    """A page with, per structure, an SVG line of interactions per image in submission order and
    its table. No script: the page is served under a strict Content-Security-Policy."""
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>MedSeg: labelling effort</title>"
             "</head><body><h1>Labelling effort</h1>",
             "<p>Interactions (clicks, boxes, strokes, edits) and seconds per submitted final label, "
             "per structure, in the order the labels were submitted.</p>"]
    if not report["per_structure"]:
        parts.append("<p>No submitted label records its effort yet.</p>")
    for name, rows in report["per_structure"].items():
        s = report["summary"][name]
        parts.append(f"<h2>{html.escape(name)}</h2><p>{s['images']} images; interactions: first "
                     f"{s['first_interactions']}, latest {s['latest_interactions']}, median "
                     f"{s['median_interactions']}; median {s['median_seconds']} s</p>")
        parts.append(_svg([r["interactions"] for r in rows]))
        parts.append("<table><tr><th>#</th><th>image</th><th>version</th><th>time</th><th>interactions</th>"
                     "<th>seconds</th></tr>")
        for r in rows:
            cells = [r["n"], r["image"], r["version"], r["time"], r["interactions"], r["seconds"]]
            parts.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    return "".join(parts) + "</body></html>"


def _svg(values: list, width: int = 480, height: int = 160) -> str:
    points = [(i, v) for i, v in enumerate(values) if v is not None]
    if not points:
        return ""
    top = max(v for _, v in points) or 1
    step = (width - 40) / max(1, len(values) - 1)
    xy = " ".join(f"{20 + i * step:.1f},{height - 20 - v / top * (height - 40):.1f}" for i, v in points)
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
            f"aria-label='interactions per image'><polyline fill='none' stroke='#3fa9f5' stroke-width='2' "
            f"points='{xy}'/><text x='2' y='14' font-size='11'>{top}</text><text x='2' y='{height - 6}' "
            f"font-size='11'>0</text></svg>")


router = APIRouter(prefix="/medseg", tags=["MedSeg effort"])
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'"


@router.get("/effort", summary="Interactions and seconds per submitted label, per structure (JSON or HTML)")
def get_effort(format: str = "json", user: User = Depends(RBAC(settings.MONAI_LABEL_AUTH_ROLE_USER))):
    if format not in ("json", "html"):
        raise HTTPException(status_code=422, detail="format must be json or html")
    store = app_instance().datastore()
    if not hasattr(store, "label_versions"):
        raise HTTPException(status_code=501, detail="the effort of labels is kept only by the local (folder) datastore")
    report = effort_report({image: store.label_versions(image) for image in store.list_images()})
    if format == "html":
        return HTMLResponse(render_html(report), headers={"Content-Security-Policy": CSP,
                                                          "X-Content-Type-Options": "nosniff"})
    return report
