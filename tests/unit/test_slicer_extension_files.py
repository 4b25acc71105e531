"""The Slicer extension's files, and MedSegLib's parts that need no server.

Slicer cannot run here, so MedSeg.py is checked statically (it compiles for Slicer's Python, the
widget names it uses exist in the .ui, the parameter-node bindings match), and MedSegLib is run
for real (it must import without slicer/qt/vtk/ctk).
"""
from __future__ import annotations

import ast
import gzip
import io
import json
import re
import struct
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "slicer_extension"
MODULE_DIR = EXTENSION / "MedSeg"
LIB_DIR = MODULE_DIR / "MedSegLib"
MODULE_PY = MODULE_DIR / "MedSeg.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedSeg.ui"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from MedSegLib import (BackgroundJobs, LabelMappingError, LabelSet, LabelingSession, MedSegClientError,  # noqa: E402
                       ProtocolError, ServerInfo, ServerResponseError, TrainingMonitor, compose_label_array,
                       encode_multipart, image_id_for, masks_from_label_array, normalize_server_url,
                       parse_multipart, present_labels, shared_image_path)
from MedSegLib.client import error_detail, safe_filename  # noqa: E402
from MedSegLib.training import progress_entries  # noqa: E402

SLICER_ONLY = ("slicer", "qt", "vtk", "ctk", "SampleData", "sitkUtils")
LIB_FILES = sorted(LIB_DIR.glob("*.py"))
# The widget's panels and scene work: Slicer code, split out of MedSeg.py.
WIDGET_FILES = sorted((MODULE_DIR / "MedSegWidgets").glob("*.py"))


# ---------------------------------------------------------------- files and layout
@pytest.mark.parametrize("path", [MODULE_PY, MODULE_DIR / "Testing" / "run_selftest.py", *LIB_FILES, *WIDGET_FILES],
                         ids=lambda p: str(p.relative_to(EXTENSION)))
def test_python_files_compile_for_slicers_python(path):
    source = path.read_text()
    compile(source, str(path), "exec")
    # Slicer 5.8 ships Python 3.9: no match statements, no parenthesized context managers, ...
    ast.parse(source, filename=str(path), feature_version=(3, 9))


def test_medseglib_never_imports_slicer_qt_vtk_or_ctk():
    for path in LIB_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in SLICER_ONLY, f"{path.name} imports {name}"
    # And for real: importing it with those modules made unimportable works.
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name.split('.')[0] in {SLICER_ONLY!r}: raise ImportError('blocked ' + name)\n"
            "sys.meta_path.insert(0, Block())\n"
            f"sys.path.insert(0, {str(MODULE_DIR)!r})\n"
            "import MedSegLib, MedSegLib.client, MedSegLib.jobs, MedSegLib.training, MedSegLib.workflow\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_module_file_has_the_four_slicer_classes():
    tree = ast.parse(MODULE_PY.read_text())
    classes = {c.name: [ast.unparse(b) for b in c.bases] for c in tree.body if isinstance(c, ast.ClassDef)}
    assert classes["MedSeg"] == ["ScriptedLoadableModule"]
    assert classes["MedSegWidget"][0] == "ScriptedLoadableModuleWidget"
    assert classes["MedSegLogic"][0] == "ScriptedLoadableModuleLogic"
    assert classes["MedSegTest"] == ["ScriptedLoadableModuleTest"]
    test_class = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "MedSegTest")
    methods = {f.name for f in test_class.body if isinstance(f, ast.FunctionDef)}
    assert {"runTest", "setUp"} <= methods
    asserts = [n for n in ast.walk(test_class) if isinstance(n, ast.Attribute) and n.attr.startswith("assert")]
    assert len(asserts) >= 8, "the self-test must check real things"


def ui_widgets():
    root = ET.parse(UI_FILE).getroot()  # raises on malformed XML
    assert root.tag == "ui"
    return root, {w.get("name"): w for w in root.iter("widget")}


def test_ui_is_well_formed_and_every_widget_the_code_uses_exists():
    root, widgets = ui_widgets()
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    used = {name: set(re.findall(r"self\.ui\.(\w+)", path.read_text())) for path in [MODULE_PY, *WIDGET_FILES]
            for name in [path.name]}
    assert used["MedSeg.py"] and used["guided_editing.py"] and used["training_panel.py"], "the panels should use the .ui"
    missing = {name: sorted(u - set(widgets)) for name, u in used.items() if u - set(widgets)}
    assert not missing, f"the module uses widgets the .ui lacks: {missing}"
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    standard = {"QWidget", "QLabel", "QPushButton", "QComboBox", "QCheckBox", "QProgressBar", "QSpinBox", "QFrame"}
    for name, w in widgets.items():
        assert w.get("class") in standard | declared, f"{name}: class {w.get('class')} is not declared"
    # the connection that gives the node selector its scene
    senders = [(c.findtext("sender"), c.findtext("receiver")) for c in root.iter("connection")]
    assert ("MedSeg", "volumeSelector") in senders


def test_ui_parameter_bindings_match_the_parameter_node():
    _, widgets = ui_widgets()
    tree = ast.parse(MODULE_PY.read_text())
    node_class = next(c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "MedSegParameterNode")
    assert any(ast.unparse(d) == "parameterNodeWrapper" for d in node_class.decorator_list)
    fields = {s.target.id: ast.unparse(s.annotation) for s in node_class.body if isinstance(s, ast.AnnAssign)}
    expected_class = {"bool": "QCheckBox", "int": "QSpinBox", "vtkMRMLScalarVolumeNode": "qMRMLNodeComboBox"}
    bound = {}
    for name, w in widgets.items():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = (name, w.get("class"))
    assert bound, "no widget is bound to the parameter node"
    for parameter, (widget, cls) in bound.items():
        assert parameter in fields, f"{widget} binds to unknown parameter {parameter}"
        assert cls == expected_class[fields[parameter]], f"{widget} ({cls}) cannot hold a {fields[parameter]}"


def test_cmake_lists_every_script_and_resource():
    module_cmake = (MODULE_DIR / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "MedSeg")
    assert WIDGET_FILES
    for path in [MODULE_PY, *LIB_FILES, *WIDGET_FILES]:
        rel = path.relative_to(MODULE_DIR).as_posix()
        assert re.search(rf"^\s*{re.escape(rel)}\s*$", module_cmake, re.M), f"{rel} is not in MODULE_PYTHON_SCRIPTS"
    resources = re.search(r"set\(MODULE_PYTHON_RESOURCES(.*?)\)", module_cmake, re.S).group(1).split()
    assert resources
    for rel in resources:
        assert (MODULE_DIR / rel).is_file(), f"resource {rel} is missing"
    assert "slicerMacroBuildScriptedModule" in module_cmake
    extension_cmake = (EXTENSION / "CMakeLists.txt").read_text()
    assert "add_subdirectory(MedSeg)" in extension_cmake and "find_package(Slicer REQUIRED)" in extension_cmake
    # Slicer loads every .py directly in a module folder as a module: only MedSeg.py may be there.
    assert [p.name for p in MODULE_DIR.glob("*.py")] == ["MedSeg.py"]


def test_icon_is_a_png():
    data = (MODULE_DIR / "Resources" / "Icons" / "MedSeg.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width == height and 32 <= width <= 512


def test_readme_documents_install_workflow_and_headless_selftest():
    text = (EXTENSION / "README.md").read_text()
    assert "--python-script" in text and "run_selftest.py" in text and "MEDSEG_SERVER_URL" in text
    assert "additional module paths" in text.lower() and "Extension Wizard" in text


# ---------------------------------------------------------------- multipart
def nifti_gz_bytes(seed=0) -> bytes:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    data = rng.integers(0, 3, size=(17, 13, 11)).astype(np.uint8)
    buf = io.BytesIO()
    img = nib.Nifti1Image(data, np.diag([1.2, 1.5, 1.8, 1.0]))
    buf.write(gzip.compress(img.to_bytes()))
    payload = buf.getvalue()
    return payload + b"\r\n--not-the-boundary\r\n\r\n" + payload  # CRLFs and dashes inside binary data


def test_parses_the_multipart_layout_monai_label_sends():
    from requests_toolbelt import MultipartEncoder  # what MONAI Label's infer endpoint uses

    image = nifti_gz_bytes()
    params = {"label_names": {"grey_matter": 1}, "model_version": 3, "note": "ünïcode"}
    encoder = MultipartEncoder(fields={"params": (None, json.dumps(params), "application/json"),
                                       "image": ("pred x.nii.gz", io.BytesIO(image), "application/gzip")})
    parts = parse_multipart(encoder.to_string(), encoder.content_type)
    assert [p.name for p in parts] == ["params", "image"]
    assert parts[0].json() == params and parts[0].filename is None
    assert parts[1].filename == "pred x.nii.gz" and parts[1].data == image


def test_own_multipart_encoding_is_read_by_another_parser():
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    image = nifti_gz_bytes(1)
    content_type, body = encode_multipart({"params": json.dumps({"label_info": [{"name": "a", "idx": 1}]})},
                                          {"label": ("/some/dir/label.nii.gz", image)})
    decoded = MultipartDecoder(body, content_type).parts
    assert json.loads(decoded[0].content) == {"label_info": [{"name": "a", "idx": 1}]}
    assert b'filename="label.nii.gz"' in decoded[1].headers[b"Content-Disposition"]
    assert decoded[1].content == image
    assert [p.data for p in parse_multipart(body, content_type)][1] == image


@pytest.mark.parametrize("content_type, body, message", [
    ("application/json", b"{}", "expected a multipart"),
    ("multipart/form-data", b"--x\r\n\r\n--x--", "without a boundary"),
    ("multipart/form-data; boundary=abc", b"no delimiter here", "boundary not found"),
    ("multipart/form-data; boundary=abc", b"--abc\r\nContent-Disposition: form-data; name=a\r\n\r\nvalue", "truncated"),
])
def test_malformed_multipart_is_a_protocol_error(content_type, body, message):
    with pytest.raises(ProtocolError, match=message):
        parse_multipart(body, content_type)


# ---------------------------------------------------------------- errors and addresses
def test_error_detail_takes_the_servers_message():
    assert error_detail(b'{"detail": "label size [1, 2, 3] differs"}') == "label size [1, 2, 3] differs"
    validation = json.dumps({"detail": [{"loc": ["query", "image"], "msg": "field required"}]}).encode()
    assert error_detail(validation) == "query.image: field required"
    assert error_detail(b"Internal Server Error") == "Internal Server Error"
    assert error_detail(b"<html><body>Bad gateway</body></html>", "Bad Gateway") == "Bad Gateway"


def test_response_errors_read_as_refusals_or_failures():
    refused = ServerResponseError("save the label", 422, "unknown label name 'x'")
    assert str(refused) == "The label server refused to save the label (HTTP 422): unknown label name 'x'"
    failed = ServerResponseError("segment image 'a'", 500, "Internal Server Error")
    assert "failed to segment image 'a' (HTTP 500)" in str(failed) and "server log" in str(failed)
    assert isinstance(refused, MedSegClientError)


@pytest.mark.parametrize("text, url", [
    ("127.0.0.1:8000", "http://127.0.0.1:8000"),
    (" http://host:8000/ ", "http://host:8000"),
    ("https://labels.example.org/monai/", "https://labels.example.org/monai"),
])
def test_server_addresses_are_normalized(text, url):
    assert normalize_server_url(text) == url


@pytest.mark.parametrize("text", ["", "ftp://host", "http://host:notaport", "http://"])
def test_bad_server_addresses_are_refused_with_a_message(text):
    with pytest.raises(MedSegClientError):
        normalize_server_url(text)


def test_names_from_the_server_and_from_slicer_become_safe():
    assert safe_filename("../../etc/passwd", "x") == "passwd"
    assert safe_filename("", "fallback.nii.gz") == "fallback.nii.gz"
    assert image_id_for("MR Head (1).nii.gz") == "MR_Head_1"
    assert image_id_for("   ") == "image"


# ---------------------------------------------------------------- labels
def test_label_sets_from_info_dicts_and_lists():
    from_dict = LabelSet.from_info({"white_matter": 2, "background": 0, "grey_matter": 1})
    assert from_dict.names == ["grey_matter", "white_matter"]
    assert from_dict.index_of("white_matter") == 2 and from_dict.name_of(1) == "grey_matter"
    from_list = LabelSet.from_info(["background", "liver", "spleen"])
    assert from_list.to_dict() == {"liver": 1, "spleen": 2}
    assert from_dict.label_info() == [{"name": "grey_matter", "idx": 1}, {"name": "white_matter", "idx": 2}]
    assert from_dict.label_info(["white_matter"]) == [{"name": "white_matter", "idx": 2}]
    with pytest.raises(ProtocolError, match="share an index"):
        LabelSet({"a": 1, "b": 1})
    with pytest.raises(LabelMappingError, match="not a label of this app"):
        from_dict.index_of("csf")


def test_label_colours_are_stable_and_distinct():
    labels = LabelSet({f"structure_{i}": i for i in range(1, 9)})
    colors = [labels.color_of(n) for n in labels.names]
    assert len(set(colors)) == len(colors)
    assert all(0.0 <= c <= 1.0 for rgb in colors for c in rgb)
    assert LabelSet({"grey_matter": 1}).color_of("grey_matter") == LabelSet({"grey_matter": 7}).color_of("grey_matter")


def test_segments_to_label_map_by_name_not_by_order():
    labels = LabelSet({"grey_matter": 1, "white_matter": 2})
    a = np.zeros((4, 5, 6), np.uint8)
    b = np.zeros_like(a)
    a[0] = 1
    b[:2] = 1  # overlaps a in slice 0: the later segment wins, as in Slicer's export
    out = compose_label_array([("white_matter", a), ("grey_matter", b)], labels)
    assert out[0].max() == 1 and (out[1] == 1).all() and (out[2:] == 0).all()
    out = compose_label_array([("grey_matter", b), ("white_matter", a)], labels)
    assert (out[0] == 2).all() and (out[1] == 1).all()
    with pytest.raises(LabelMappingError, match="not labels of this app"):
        compose_label_array([("Segment_1", a)], labels)
    masks = dict(masks_from_label_array(out, labels))
    assert set(masks) == {"grey_matter", "white_matter"} and masks["white_matter"].sum() == a.sum()
    assert present_labels(np.zeros_like(out), labels) == []
    with pytest.raises(LabelMappingError, match=r"values \[5\]"):
        masks_from_label_array(np.full((2, 2, 2), 5, np.uint8), labels)


def test_server_info_from_a_stock_monai_label_app():
    info = ServerInfo.from_json({
        "name": "radiology", "labels": [], "datastore": {"completed": 3, "total": 10},
        "models": {"segmentation_spleen": {"type": "segmentation", "labels": {"background": 0, "spleen": 1}},
                   "deepgrow_3d": {"type": "deepgrow", "labels": ["spleen"]}},
        "trainers": {"segmentation_spleen": {}}, "strategies": {"random": {}},
        "train_stats": {"segmentation_spleen": {"total_epochs": 50, "epoch": 5, "best_metric": 0.7}}})
    assert info.segmentation_models() == ["segmentation_spleen"]
    assert info.labels.to_dict() == {"spleen": 1}
    assert (info.labeled, info.total) == (3, 10) and info.progress_text == "3 / 10 images labeled"
    assert info.train_stats_for("segmentation_spleen")["epoch"] == 5
    with pytest.raises(ProtocolError):
        ServerInfo.from_json({"detail": "Not Found"})
    assert info.interactive_methods("deepgrow_3d") == []  # a stock task: nothing to choose
    assert info.default_strategy is None  # a stock server marks none: the module falls back to names


def test_the_strategy_the_server_marks_as_default_is_preselected():
    info = ServerInfo.from_json({"models": {}, "strategies": {
        "epistemic": {"description": "e", "default": False}, "random": {"description": "r", "default": True},
        "odd": "not a dict"}})
    assert info.default_strategy == "random" and info.strategies == ["epistemic", "random", "odd"]


def test_the_method_menu_offers_only_methods_that_can_answer():
    info = ServerInfo.from_json({"labels": {"a": 1}, "models": {
        "interactive": {"type": "deepgrow", "methods": {"learned": False, "seeded": True}},
        "odd": {"type": "deepgrow", "methods": ["learned"]}}})
    assert info.interactive_methods("interactive") == ["seeded"]  # no weights: no learned
    assert info.interactive_methods("odd") == [] and info.interactive_methods("missing") == []


# ---------------------------------------------------------------- training progress
def progress_line(**entry):
    return json.dumps({"progress": entry})


def test_training_monitor_follows_a_medseg_run():
    monitor = TrainingMonitor("unet3d")
    monitor.started({"id": "t1", "status": "SUBMITTED", "start_ts": "2026-11-30 02:39:11"})
    stale = {"status": "DONE", "started_at": "2026-11-30T01:00:00", "version": 1,
             "val_dice_per_label": {"grey_matter": 0.1}}
    p = monitor.update({"id": "t1", "status": "RUNNING", "start_ts": "2026-11-30 02:39:11", "details": []}, stale)
    assert p.running and p.iteration is None and p.val_dice_per_label == {}  # last run's stats are ignored
    details = ["log line", progress_line(iteration=10, max_iterations=40, loss=0.5, epoch=1.0,
                                         val_dice_per_label={"grey_matter": 0.8, "white_matter": 0.7}),
               progress_line(iteration=20, max_iterations=40, loss=0.4, epoch=2.0)]
    p = monitor.update({"id": "t1", "status": "RUNNING", "start_ts": "2026-11-30 02:39:11", "details": details}, {})
    assert (p.iteration, p.max_iterations, p.percent) == (20, 40, 50)
    assert p.val_dice_per_label == {"grey_matter": 0.8, "white_matter": 0.7}  # kept from an earlier line
    assert p.mean_val_dice == pytest.approx(0.75)
    assert "iteration 20/40" in p.message and "validation Dice 0.750" in p.message
    final = {"status": "DONE", "started_at": "2026-11-30T02:39:12", "version": 2, "published": True,
             "val_dice_per_label": {"grey_matter": 0.9, "white_matter": 0.85}}
    p = monitor.update({"id": "t1", "status": "DONE", "start_ts": "2026-11-30 02:39:11", "details": details}, final)
    assert p.finished and p.percent == 100 and p.version == 2 and p.published is True
    assert "version 2 published" in p.message and "next Segment" in p.message


def test_training_monitor_reports_rejected_failed_and_stopped_runs():
    task = {"id": "t", "status": "DONE", "start_ts": "2026-11-30 02:00:00", "details": []}
    p = TrainingMonitor().update(task, {"status": "DONE", "started_at": "2026-11-30T02:00:01", "published": False})
    assert "not published" in p.message
    p = TrainingMonitor().update({**task, "status": "ERROR", "details": ["Traceback", "ValueError: bad"]},
                                 {"status": "ERROR", "started_at": "2026-11-30T02:00:01", "error": "no final label"})
    assert p.status == "ERROR" and "no final label" in p.message and "unchanged" in p.message
    p = TrainingMonitor().update({**task, "status": "ERROR", "details": ["ValueError: bad"]}, {})
    assert p.error == "ValueError: bad"
    p = TrainingMonitor().update({**task, "status": "STOPPED"}, {})
    assert p.finished and "stopped" in p.message
    assert TrainingMonitor().update(None, {}).status == "IDLE"


def test_training_monitor_reads_a_stock_trainers_stats():
    p = TrainingMonitor("seg").update({"id": "t", "status": "RUNNING", "details": []},
                                      {"total_epochs": 50, "epoch": 10, "best_metric": 0.6, "start_ts": 1.0})
    assert p.percent == 20 and p.val_dice_per_label == {"mean": 0.6}


def test_progress_lines_are_picked_out_of_task_output():
    assert progress_entries(["x", '{"progress": {"iteration": 1}}', '{"progress": broken', None]) == [{"iteration": 1}]


# ---------------------------------------------------------------- jobs and workflow
def test_background_jobs_hand_results_back_on_the_polling_thread():
    jobs = BackgroundJobs()
    seen = []
    release = threading.Event()

    def slow(x):
        release.wait(10)
        return x * 2, threading.get_ident()

    jobs.submit("segment", slow, 21, on_done=lambda r: seen.append(("done", r[0], threading.get_ident(), r[1])))
    jobs.submit("submit", lambda: 1 / 0, on_error=lambda e, details: seen.append(("error", type(e), details)))
    with pytest.raises(RuntimeError, match="already running"):
        jobs.submit("segment", slow, 1)
    assert jobs.busy("segment") and jobs.poll() in (0, 1)
    release.set()
    deadline = time.time() + 10
    while jobs.busy() and time.time() < deadline:
        jobs.poll()
        time.sleep(0.01)
    assert not jobs.busy()
    done = next(s for s in seen if s[0] == "done")
    assert done[1] == 42 and done[2] == threading.get_ident() and done[3] != threading.get_ident()
    error = next(s for s in seen if s[0] == "error")
    assert error[1] is ZeroDivisionError and "ZeroDivisionError" in error[2]
    jobs.shutdown()


def test_shared_path_is_used_only_when_it_exists_here(tmp_path):
    image = tmp_path / "a.nii.gz"
    image.write_bytes(b"x")
    assert shared_image_path({"id": "a", "path": str(image)}) == str(image)
    assert shared_image_path({"id": "a", "path": "/nowhere/a.nii.gz"}) is None
    assert shared_image_path({"id": "a"}) is None


def test_session_enables_steps_in_order():
    session = LabelingSession()
    assert not session.can_segment() and not session.can_upload(True)
    session.info = ServerInfo.from_json({"name": "MedSeg", "labels": {"a": 1}, "models": {"m": {"type": "segmentation"}},
                                         "trainers": {"m": {}}, "strategies": {"random": {}}})
    assert session.can_upload(True) and not session.can_segment() and session.can_train()
    session.sample_loaded("img", "downloaded")
    assert session.can_segment() and session.can_submit() and not session.can_upload(True)
    session.segmented("m", 3)
    assert session.dirty and session.model_version == 3
    session.submitted(1)
    assert not session.dirty and session.submitted_version == 1


# ---------------------------------------------------------------- the Slicer API the module calls
# Every Slicer, MRML, VTK, Qt and CTK name the widget code uses, each checked in Slicer's source or
# documentation (Libs/MRML/Core, Modules/Loadable/Markups and Segmentations, Base/Python/slicer/util.py)
# when it was first used. A name not listed fails the test: look it up there before adding it, so a
# typo or a method of another Slicer version is caught here and not on a clinician's first click.
SLICER_API_NAMES = set(" ".join([
    # methods and constants of VTK/MRML objects (vtkMRMLMarkupsROINode, vtkMRMLSegmentationNode, vtkSegmentation,
    # vtkSlicerSegmentationsModuleLogic, vtkMRMLColorTableNode, vtkMRMLScalarVolumeNode, vtkStringArray, ...)
    ".AddEmptySegment .AutoWindowLevelOff .CreateDefaultDisplayNodes .ExportSegmentsToLabelmapNode "
    ".ForcePlaceMultipleMarkups .ForcePlaceSingleMarkup .GetAttribute .GetColor .GetDimensions "
    ".GetDisplayNode .GetElement .GetID .GetImageData .GetName .GetNthControlPointPositionWorld "
    ".GetNthSegment .GetNthSegmentID .GetNumberOfControlPoints .GetNumberOfDefinedControlPoints "
    ".GetNumberOfSegments .GetObjectToWorldMatrix .GetParentTransformNode .GetRASToIJKMatrix .GetSegment "
    ".GetSegmentIdBySegmentName .GetSegmentation .GetSelectedSegmentID .GetSize "
    ".ImportLabelmapToSegmentationNode .InsertNextValue .IsA .PointEndInteractionEvent .PointModifiedEvent "
    ".PointPositionDefinedEvent .RemoveAllControlPoints .RemoveNthControlPoint .SetAndObserveColorNodeID "
    ".SetAttribute .SetColor .SetNamesInitialised .SetNumberOfColors "
    ".SetReferenceImageGeometryParameterFromVolumeNode .SetSelectedColor .SetSingletonTag .SetTypeToUser "
    ".SetWindowLevelMinMax .UnRegister",
    # the slicer package: slicer.util, slicer.mrmlScene, MRML classes
    "slicer.modules slicer.modules.segmentations slicer.modules.segmentations.logic slicer.mrmlScene "
    "slicer.mrmlScene.AddNewNodeByClass slicer.mrmlScene.AddNode slicer.mrmlScene.Clear "
    "slicer.mrmlScene.CreateNodeByClass slicer.mrmlScene.EndCloseEvent slicer.mrmlScene.GetFirstNodeByClass "
    "slicer.mrmlScene.GetNodeByID slicer.mrmlScene.GetSingletonNode slicer.mrmlScene.IsNodePresent "
    "slicer.mrmlScene.RemoveNode slicer.mrmlScene.StartCloseEvent slicer.qMRMLSegmentEditorWidget slicer.util "
    "slicer.util.arrayFromSegmentBinaryLabelmap slicer.util.arrayFromVolume slicer.util.childWidgetVariables "
    "slicer.util.confirmOkCancelDisplay slicer.util.errorDisplay slicer.util.getNodesByClass "
    "slicer.util.infoDisplay slicer.util.loadLabelVolume slicer.util.loadUI slicer.util.loadVolume "
    "slicer.util.mainWindow slicer.util.saveNode slicer.util.setSliceViewerLayers slicer.util.settingsValue "
    "slicer.util.toBool slicer.util.tryWithErrorDisplay slicer.util.updateSegmentBinaryLabelmapFromArray "
    "slicer.vtkMRMLMarkupsNode slicer.vtkMRMLMarkupsNode.PointModifiedEvent slicer.vtkMRMLTransformNode "
    "slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes slicer.vtkSegmentation "
    "slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY slicer.vtkSegmentation.MasterRepresentationModified "
    "slicer.vtkSegmentation.SegmentModified",
    # Qt (PythonQt) and VTK classes
    "qt.QCheckBox qt.QDialog qt.QDialogButtonBox qt.QDialogButtonBox.Cancel qt.QDialogButtonBox.Ok "
    "qt.QFormLayout qt.QLineEdit qt.QLineEdit.Password qt.QSettings qt.QTimer qt.QTimer.singleShot qt.Qt "
    "qt.Qt.ToolTipRole vtk.vtkCommand vtk.vtkCommand.ModifiedEvent vtk.vtkMatrix4x4 vtk.vtkStringArray",
    # qMRMLSegmentEditorWidget slots
    "segmentEditorWidget.installKeyboardShortcuts segmentEditorWidget.saveStateForUndo "
    "segmentEditorWidget.setActiveEffect segmentEditorWidget.setMRMLScene "
    "segmentEditorWidget.setMRMLSegmentEditorNode segmentEditorWidget.setSegmentationNode "
    "segmentEditorWidget.uninstallKeyboardShortcuts",
    # members of the .ui widgets (QComboBox, QPushButton, QProgressBar, qSlicerMarkupsPlaceWidget, ...)
    "ui.addItem ui.addItems ui.checked ui.clear ui.connect ui.count ui.currentData ui.currentText ui.enabled "
    "ui.findText ui.insertItem ui.itemText ui.layout ui.lineEdit ui.setCurrentNode ui.setEditText "
    "ui.setFormat ui.setItemData ui.setMaximum ui.setPlaceModeEnabled ui.setValue ui.text ui.toolTip "
]).split())
SLICER_ROOTS = {"slicer", "qt", "vtk", "ctk"}


def _attribute_chain(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else None


def slicer_api_names(paths) -> set:
    """Names rooted at slicer/qt/vtk/ctk, members of the .ui widgets and of the embedded Segment
    Editor, and every CamelCase attribute (VTK and MRML methods) the files use."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            chain = _attribute_chain(node)
            if chain and chain[0] in SLICER_ROOTS:
                names.add(".".join(chain))
            elif chain and chain[:2] == ["self", "ui"] and len(chain) == 4:
                names.add("ui." + chain[3])
            elif chain and chain[:2] == ["self", "segmentEditorWidget"] and len(chain) == 3:
                names.add("segmentEditorWidget." + chain[2])
            if node.attr[:1].isupper() and not (chain and chain[0] in SLICER_ROOTS):
                names.add("." + node.attr)
    return names


def test_every_slicer_api_name_the_module_calls_is_a_known_one(tmp_path):
    used = slicer_api_names([MODULE_PY, *WIDGET_FILES])
    unknown = sorted(used - SLICER_API_NAMES)
    assert not unknown, f"not checked against Slicer's API: {unknown}"
    assert len(used) > 100  # the walk sees the module's calls
    # The check catches what it is for: names that Slicer does not have.
    probe = tmp_path / "probe.py"
    probe.write_text("def f(node):\n    node.GetNumberOfControlPoint()\n    slicer.util.arrayFromVolumes(node)\n")
    assert slicer_api_names([probe]) - SLICER_API_NAMES == {".GetNumberOfControlPoint", "slicer.util.arrayFromVolumes"}
