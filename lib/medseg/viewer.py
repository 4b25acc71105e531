"""The browser client's files, served by the MedSeg server itself at ``/viewer/``.

The page is MedSeg's own code (``web/app/``) plus NiiVue, which ``make install`` puts in
``web/node_modules`` from the npm registry (``web/package-lock.json`` pins it). Nothing is
fetched at run time, and there is no second port: the page talks to the REST API it came from.

The files hold no patient data, so they answer without a token (a browser cannot send one on
a page load); every image and label the page shows comes through the REST API under its roles.
Only the files listed at start-up are served, each with a Content-Security-Policy that allows
scripts and styles from this server alone (no inline script), and nothing framed or fetched from
elsewhere.
"""
from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

REPO = Path(__file__).resolve().parents[2]
WEB_DIR = Path(os.environ.get("MEDSEG_WEB_DIR", REPO / "web"))
APP_DIR = WEB_DIR / "app"
NIIVUE_DIST = WEB_DIR / "node_modules" / "@niivue" / "niivue" / "dist"

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".png": "image/png", ".svg": "image/svg+xml", ".json": "application/json",
                 ".wasm": "application/wasm"}
# WebGL needs no CSP source; blob: and data: images are the page's own screenshots and NiiVue's
# fonts and colour bars, made in the page. 'wasm-unsafe-eval' lets NiiVue decode compressed volumes.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
                           "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
                           "worker-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}

router = APIRouter(prefix="/viewer", tags=["Viewer"])


def served_files() -> dict[str, Path]:
    """URL path under /viewer/ -> file: MedSeg's page files and NiiVue's distribution."""
    files: dict[str, Path] = {}
    for root, prefix in ((APP_DIR, ""), (NIIVUE_DIST, "vendor/niivue/")):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in CONTENT_TYPES and not path.is_symlink():
                files[prefix + path.relative_to(root).as_posix()] = path
    return files


_FILES: dict[str, Path] | None = None


def _files() -> dict[str, Path]:
    global _FILES
    if _FILES is None:
        _FILES = served_files()
    return _FILES


@router.get("", include_in_schema=False)
def viewer_root():
    return RedirectResponse("viewer/", status_code=307)


@router.get("/", include_in_schema=False)
def viewer_page():
    if "vendor/niivue/index.js" not in _files():
        return HTMLResponse(
            "<!doctype html><title>MedSeg viewer</title><h1>The viewer is not installed</h1>"
            "<p>NiiVue is missing from web/node_modules: run <code>make install</code> (it runs "
            "<code>npm ci</code> in web/), then reload this page.</p>", status_code=503, headers=SECURITY_HEADERS)
    return _file_response("index.html")


@router.get("/{path:path}", include_in_schema=False)
def viewer_file(path: str):
    return _file_response(path)


def _file_response(path: str):
    found = _files().get(path)
    if found is None:
        raise HTTPException(status_code=404, detail=f"no viewer file {path[:200]!r}")
    return FileResponse(found, media_type=CONTENT_TYPES[found.suffix], headers=SECURITY_HEADERS)
