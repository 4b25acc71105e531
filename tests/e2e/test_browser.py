"""The browser client (web/, served at /viewer/) in a real Chromium against a real server.

A user's whole flow: load, next image, segment, a guided click, a brush stroke, submit; then
the stored final label is read back through REST and must be on the image's grid and hold
exactly the voxels the page showed. The clicked image is stored LPS, oblique and anisotropic,
so a click that lands on its object shows that the page's voxel mapping is right.

Screenshots of each step go to work/test-artifacts/browser/ (look at them).

Chromium is Debian's (/usr/bin/chromium), driven by Playwright from PyPI; NiiVue comes from
``make install`` (npm ci in web/). Where they are missing the tests skip, except under CI,
where they fail: .ci/run installs them.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from tests.conftest import REPO, Server, make_studies
from tests.e2e.helpers import gunzip_if_needed

CHROMIUM = os.environ.get("MEDSEG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
ARTIFACTS = REPO / "work" / "test-artifacts" / "browser"
NIIVUE = REPO / "web" / "node_modules" / "@niivue" / "niivue" / "dist" / "index.js"

SHAPE = (48, 40, 24)
OBJECT_CENTRE = (16, 20, 12)


def _missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (make install installs it)"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (Debian package chromium; .ci/run installs it)"
    if not NIIVUE.exists():
        return "NiiVue is not in web/node_modules (make install runs npm ci in web/)"
    return None


def require_browser():
    why = _missing()
    if why and os.environ.get("CI"):
        pytest.fail(f"CI must run the browser tests: {why}")
    if why:
        pytest.skip(why)


def oblique_lps_affine() -> np.ndarray:
    """LPS (i runs right to left, j anterior to posterior), 0.8 x 0.8 x 2.5 mm, turned 20 degrees about z."""
    angle = np.deg2rad(20)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = turn @ np.diag([-0.8, -0.8, 2.5])
    affine[:3, 3] = [20.0, 16.0, -30.0]
    return affine


def phantom() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    c = OBJECT_CENTRE
    obj = ((i - c[0]) / 9) ** 2 + ((j - c[1]) / 8) ** 2 + ((k - c[2]) / 4) ** 2 <= 1
    image = np.full(SHAPE, 100.0)
    image[obj] = 300.0
    image[30:44, 8:32, 4:20] = 200.0
    return (image + rng.normal(0, 15, SHAPE)).astype(np.float32), obj


@pytest.fixture(scope="module")
def srv(tmp_path_factory, sample_sets):
    require_browser()
    studies = make_studies(tmp_path_factory.mktemp("browser"), sample_sets)
    image, obj = phantom()
    nib.save(nib.Nifti1Image(image, oblique_lps_affine()), str(studies / "phantom_lps.nii.gz"))
    server = Server(studies, {"models": "unet3d"})  # the app's labels: grey_matter 1, white_matter 2
    server.obj = obj
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    require_browser()
    from playwright.sync_api import sync_playwright

    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{url}/viewer/")
    return page


def idle(page, timeout_s: float = 120):
    """Until the page has no request in flight. (Polled from here: Playwright's wait_for_function
    evaluates a string in the page, which the page's Content-Security-Policy rightly refuses.)"""
    deadline = time.monotonic() + timeout_s
    while page.evaluate("document.body.dataset.busy") not in ("0", None):
        assert time.monotonic() < deadline, f"the page stayed busy: {page.text_content('#status')!r}"
        time.sleep(0.2)


def ready(page, timeout_s: float = 60):
    """Until the workspace shows; what the page said otherwise, if it does not."""
    try:
        page.wait_for_selector("#workspace:not([hidden])", timeout=timeout_s * 1000)
    except Exception:
        shot(page, "not-ready")
        raise AssertionError(f"the workspace did not show: error {page.text_content('#error')!r}, "
                             f"page errors {page.errors}") from None


def shot(page, name: str):
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def label_values(page) -> np.ndarray:
    """The label map the page shows, on the image's grid (i fastest, as NIfTI stores it)."""
    flat = np.array(page.evaluate("Array.from(window.medsegViewer.state.label.values)"), dtype=np.uint8)
    dims = page.evaluate("window.medsegViewer.state.grid.dims")
    return flat.reshape(dims[::-1]).transpose(2, 1, 0)


def click_voxel(page, voxel):
    """A real mouse click on ``voxel`` (native i, j, k) in the axial view, its slice brought up first."""
    page.evaluate("v => window.medsegViewer.view.centreOn(v)", list(voxel))
    point = page.evaluate("v => window.medsegViewer.view.canvasPointOf(v, 0)", list(voxel))
    assert point, f"voxel {voxel} is not in the axial view"
    box = page.locator("#gl").bounding_box()
    return box["x"] + point["x"], box["y"] + point["y"]


def stroke(page, from_voxel, to_voxel):
    """A real mouse drag in the axial view from one voxel to another (same slice)."""
    start = click_voxel(page, from_voxel)
    end = click_voxel(page, to_voxel)
    page.mouse.move(*start)
    page.mouse.down()
    for t in np.linspace(0, 1, 8):
        page.mouse.move(start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1]))
    page.mouse.up()
    idle(page)


def test_load_next_segment_click_brush_submit(srv, browser):
    page = open_page(browser, srv.url)
    ready(page)
    idle(page)
    assert page.locator("#images-table tbody tr").count() == 5
    shot(page, "01-loaded")

    # next image: the strategy menu comes from /info/
    strategies = page.locator("#strategy option").all_text_contents()
    assert "random" in strategies
    page.select_option("#strategy", "random")
    page.click("#next-image")
    idle(page)
    assert page.evaluate("window.medsegViewer.state.imageId") is not None
    shot(page, "02-next-image")

    # segment a head with the shipped unet3d
    head = [r for r in page.locator("#images-table tbody tr").evaluate_all("rows => rows.map(r => r.dataset.image)")
            if r != "phantom_lps"][0]
    page.click(f"#images-table tr[data-image='{head}']")
    idle(page)
    page.select_option("#model", "unet3d")
    page.click("#segment-button")
    idle(page, 300)
    assert "Segmented with unet3d" in page.text_content("#status"), page.text_content("#error")
    assert (label_values(page) > 0).sum() > 1000
    shot(page, "03-segmented")

    # a foreground click on the LPS oblique phantom selects its object
    page.once("dialog", lambda d: d.accept())  # the unsubmitted segmentation of the head
    page.click("#images-table tr[data-image='phantom_lps']")
    idle(page)
    assert page.evaluate("window.medsegViewer.state.grid.dims") == list(SHAPE)
    page.check("#segments input[value='1']")
    page.check("input[name=tool][value=foreground]")
    x, y = click_voxel(page, OBJECT_CENTRE)
    page.mouse.click(x, y)
    idle(page)
    assert "Foreground click at 16, 20, 12" in page.text_content("#status"), page.text_content("#error")
    shown = label_values(page)
    lesion = shown == 1  # the phantom's object, labelled with segment 1
    dice = 2 * (lesion & srv.obj).sum() / (lesion.sum() + srv.obj.sum())
    assert dice > 0.8, f"the click selected Dice {dice:.2f} of the object"
    assert not lesion[30:44, 8:32, 4:20].any(), "the click's answer spilled into the other block"
    shot(page, "04-click")

    # a brush stroke of 2 mm in the block beside it, on the axial slice
    page.fill("#brush-mm", "2")
    page.check("input[name=tool][value=brush]")
    page.check("#segments input[value='2']")
    stroke(page, (34, 20, 12), (40, 20, 12))
    after = label_values(page)
    painted = after == 2
    assert painted[34:41, 18:23, 12].sum() >= 5, "the stroke did not paint along its path"
    assert not painted[:, :, [11, 13]].any(), "a stroke on one slice stays on that slice"
    assert (after[lesion] == 1).all(), "the brush of another segment left the first one as it was"
    shot(page, "05-brush")

    # undo and redo of the stroke
    page.click("#undo")
    assert not (label_values(page) == 2).any()
    page.click("#redo")
    assert (label_values(page) == after).all()

    # submit: the stored final label is on the image's grid and holds what the page showed
    page.click("#submit")
    idle(page)
    assert "Submitted phantom_lps" in page.text_content("#status"), page.text_content("#error")
    shot(page, "06-submitted")
    stored = requests.get(f"{srv.url}/datastore/label", params={"label": "phantom_lps", "tag": "final"}, timeout=30)
    assert stored.status_code == 200
    label = nib.Nifti1Image.from_bytes(gunzip_if_needed(stored.content))
    image = nib.load(str(srv.studies / "phantom_lps.nii.gz"))
    assert label.shape == image.shape
    assert np.allclose(label.affine, image.affine, atol=1e-4)
    assert np.array_equal(np.asarray(label.dataobj).astype(np.uint8), after)
    info = requests.get(f"{srv.url}/medseg/labels/phantom_lps/versions", timeout=30).json()["versions"][-1]
    assert info["effort"]["interactions"] >= 4 and info["effort"]["seconds"] > 0

    # versions: a second submit without the stroke, the diff against version 1, and its restore
    page.click("#undo")
    page.click("#submit")
    idle(page)
    assert page.locator("#versions option").count() == 2
    page.select_option("#versions", "1")
    page.click("#diff-version")
    idle(page)
    diff = page.text_content("#diff-result")
    assert "Against v1: white_matter +0" in diff and "grey_matter" not in diff, diff
    page.click("#restore-version")
    idle(page)
    assert "Version 1 is the final label again" in page.text_content("#status"), page.text_content("#error")
    assert (label_values(page) == after).all()
    assert page.locator("#versions option").count() == 3
    shot(page, "07-versions")

    # training: started, followed and stopped from the page
    page.select_option("#train-model", "unet3d")
    page.click("#train-start")
    idle(page)
    deadline = time.monotonic() + 120
    while "RUNNING" not in (page.text_content("#train-status") or ""):
        assert time.monotonic() < deadline, (page.text_content("#train-status"), page.text_content("#error"))
        time.sleep(0.5)
    page.click("#train-stop")
    idle(page)
    deadline = time.monotonic() + 120
    while "RUNNING" in (page.text_content("#train-status") or ""):
        assert time.monotonic() < deadline, page.text_content("#train-status")
        time.sleep(0.5)  # the page keeps asking while it runs
    shot(page, "08-training-stopped")
    assert not [e for e in page.errors if "favicon" not in e], page.errors



def test_the_page_is_served_with_a_strict_content_security_policy(srv):
    require_browser()
    page = requests.get(f"{srv.url}/viewer/", timeout=30)
    assert page.status_code == 200 and "<script type=\"module\" src=\"js/app.js\">" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    assert "<script>" not in page.text, "no inline script"
    for path in ("js/app.js", "vendor/niivue/index.js", "css/viewer.css"):
        answer = requests.get(f"{srv.url}/viewer/{path}", timeout=30)
        assert answer.status_code == 200 and answer.headers["x-content-type-options"] == "nosniff", path
    for path in ("../../README.md", "..%2F..%2FMakefile", "vendor/niivue/../../package.json", "js/missing.js"):
        assert requests.get(f"{srv.url}/viewer/{path}", timeout=30).status_code == 404, path
