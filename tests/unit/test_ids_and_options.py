"""The checks every id, tag and client option passes (medseg.ids, medseg.request_options)."""
import numpy as np
import nibabel as nib
import pytest

from medseg.datastore.local import MedSegLocalDatastore
from medseg.errors import MedSegInputError
from medseg.ids import image_id, label_tag
from medseg.request_options import flag, infer_options, json_object, number
from medseg.tasks.train import check_train_request


@pytest.mark.parametrize("name", ["subject_000", "1.2.840.113619.2.55", "case-7", "_x", "a" * 128])
def test_valid_ids(name):
    assert image_id(name) == name and label_tag(name) == name


@pytest.mark.parametrize("name", ["", "..", ".", ".hidden", "a/b", "/abs", "a\\b", "a\x00b", "a" * 129, "ü",
                                  "a b", "trailing.", "labels", None, 5, ["x"]])
def test_invalid_ids(name):
    with pytest.raises(MedSegInputError):
        image_id(name)


def test_reserved_tag_and_enum_tags():
    from monailabel.interfaces.datastore import DefaultLabelTag

    assert label_tag(DefaultLabelTag.FINAL) == "final"
    with pytest.raises(MedSegInputError, match="reserved"):
        label_tag("versions")


@pytest.mark.parametrize("text, ok", [("", True), ("{}", True), ('{"a": 1}', True), ("[1]", False), ("5", False),
                                      ("nope", False), ("null", False)])
def test_json_object(text, ok):
    if ok:
        assert isinstance(json_object(text), dict)
    else:
        with pytest.raises(MedSegInputError):
            json_object(text)


def test_flags_and_numbers():
    assert flag("x", "true") is True and flag("x", False) is False and flag("x", 0) is False
    for bad in ("maybe", 2, None, [1]):
        with pytest.raises(MedSegInputError):
            flag("x", bad)
    assert number("n", "3", int, 1, 5) == 3
    for bad in ("abc", 1e12, 2.5, float("nan"), True, 0):
        with pytest.raises(MedSegInputError):
            number("n", bad, int, 1, 100)


def test_infer_options():
    assert infer_options({"tta": "yes", "client_id": "slicer"}, "cpu")["tta"] is True
    for bad in ({"tta": "maybe"}, {"device": "nonsense"}, {"device": "cuda"}, {"unknown": 1},
                {"label_tag": "../x"}, {"client_id": 5}):
        with pytest.raises(MedSegInputError):
            infer_options(bad, "cpu")


def test_train_request_bounds_and_epochs():
    from medseg.pipeline.training import TrainConfig

    assert check_train_request({"max_iterations": 3, "publish": "always"})["publish"] == "always"
    for bad in ({"max_iterations": -1}, {"max_iterations": "abc"}, {"learning_rate": -1}, {"publish": "bogus"},
                {"max_iterations": 1e12}, {"batch_size": -1}, {"val_fraction": 5}, {"world_size": -2},
                {"multi_gpu": True, "world_size": 10**5}, {"max_epochs": 1, "max_iterations": 1}, {"what": 1},
                {"class_weighting": "inverse"}, {"class_weighting": 1}):
        with pytest.raises(MedSegInputError):
            check_train_request(bad)
    config = TrainConfig.from_request({"max_epochs": 3, "batch_size": 2})
    assert config.iterations_for(n_train_cases=5, plan_batch_size=4) == 8  # ceil(3 * 5 / 2)
    assert TrainConfig.from_request({"max_epochs": 2}).iterations_for(4, plan_batch_size=2) == 4
    assert TrainConfig.from_request({"class_weighting": "none"}).class_weighting == "none"


def test_float64_label_is_stored_as_integers(tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    image = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), studies / "img.nii.gz")
    store = MedSegLocalDatastore(str(studies), labels={"a": 1, "b": 2}, extensions=["*.nii.gz"], auto_reload=False)
    label = np.zeros((8, 8, 8), np.float64)
    label[2:5, 2:5, 2:5] = 2
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "label.nii.gz")
    store.save_label("img", str(tmp_path / "label.nii.gz"), "final", {})
    stored = nib.load(store.get_label_uri("img", "final"))
    assert stored.get_data_dtype() == np.uint8
    assert np.array_equal(np.asarray(stored.dataobj), label.astype(np.uint8))


def test_replace_is_a_checked_flag(tmp_path):
    from medseg.datastore.local import ImageIdConflictError

    studies = tmp_path / "studies"
    studies.mkdir()
    image = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "up.nii.gz")
    store = MedSegLocalDatastore(str(studies), labels={"a": 1}, extensions=["*.nii.gz"], auto_reload=False)
    store.add_image("img", str(tmp_path / "up.nii.gz"), {})
    with pytest.raises(ImageIdConflictError):
        store.add_image("img", str(tmp_path / "up.nii.gz"), {"replace": "false"})
    with pytest.raises(MedSegInputError, match="replace"):
        store.add_image("img", str(tmp_path / "up.nii.gz"), {"replace": "perhaps"})
    store.add_image("img", str(tmp_path / "up.nii.gz"), {"replace": True})
    assert store.get_image_info("img")["image_version"] == 2
    assert (studies / "labels" / "versions" / "img" / "images" / "v1.nii.gz").exists()


def test_background_tasks_lower_their_priority_and_nothing_else_does():
    import os
    import subprocess
    import sys

    from medseg.background import in_task_process, lower_priority

    assert not in_task_process() and lower_priority() is False  # this test process is not a task
    assert in_task_process(["/x/site-packages/monailabel/interfaces/utils/app.py", "-m", "train"])
    # A real process whose argv[0] is MONAI Label's task runner path lowers itself.
    # torch's worker threads exist before the task lowers itself: they must be lowered too.
    code = ("import sys, os, torch; sys.argv[0] = os.path.join('x', 'monailabel', 'interfaces', 'utils', 'app.py'); "
            "torch.set_num_threads(2); a = torch.randn(600, 600); (a @ a).sum(); "
            "from medseg.background import lower_priority; lower_priority(); lower_priority(); "
            "stats = [open(f'/proc/self/task/{t}/stat').read().rsplit(')', 1)[1].split() for t in os.listdir('/proc/self/task')]; "
            "print(len(stats), *sorted({(int(s[16]), int(s[38])) for s in stats}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    n_threads, states = int(out[0]), out[1:]
    assert n_threads >= 2
    # /proc's stat fields 19 and 41: niceness, and policy 5 (SCHED_IDLE), the same in every thread.
    assert states == [f"({min(19, os.nice(0) + 10)},", f"{os.SCHED_IDLE})"]
