import pytest

from medseg.config import AppConfig
from medseg.errors import ConfigError


def test_defaults_and_work_dir_beside_local_studies(tmp_path):
    cfg = AppConfig.from_conf({}, str(tmp_path / "studies"), str(tmp_path / "app"))
    assert cfg.work_dir == tmp_path / "studies" / ".medseg"
    assert cfg.device == "auto" and cfg.tta is False and cfg.modality == "MR" and cfg.gpu_memory_gb is None
    assert cfg.labels == {"grey_matter": 1, "white_matter": 2}


def test_remote_studies_get_a_work_dir_in_the_app(tmp_path):
    cfg = AppConfig.from_conf({}, "http://127.0.0.1:8042/dicom-web", str(tmp_path))
    assert cfg.work_dir.parent == tmp_path / "work"


@pytest.mark.parametrize("conf", [
    {"device": "tpu"}, {"tta": "maybe"}, {"modality": "PET"}, {"gpu_memory_gb": "-1"},
    {"labels": '{"a": 2}'}, {"labels": "not json"}, {"models": "unet3d,nope"},
])
def test_invalid_conf_is_refused_with_a_clear_error(conf, tmp_path):
    with pytest.raises(ConfigError):
        AppConfig.from_conf(conf, str(tmp_path), str(tmp_path))


def test_parsed_values(tmp_path):
    cfg = AppConfig.from_conf({"labels": '{"liver": 1, "tumour": 2}', "tta": "true", "modality": "ct",
                               "models": "unet3d", "gpu_memory_gb": "24"}, str(tmp_path), str(tmp_path))
    assert cfg.labels == {"liver": 1, "tumour": 2} and cfg.tta and cfg.modality == "CT"
    assert [m.name for m in cfg.models] == ["unet3d"] and cfg.gpu_memory_gb == 24.0


def test_auto_train_settings(tmp_path):
    cfg = AppConfig.from_conf({"models": "unet3d,unet2d", "auto_train_after": "3",
                               "auto_train_options": '{"max_iterations":50}'}, str(tmp_path), str(tmp_path))
    assert cfg.auto_train_after == 3 and cfg.auto_train_model == "unet3d"
    assert cfg.auto_train_options == {"max_iterations": 50}
    assert AppConfig.from_conf({}, str(tmp_path), str(tmp_path)).auto_train_after == 0  # off by default
    for bad in ({"auto_train_after": "-1"}, {"auto_train_model": "vnet", "models": "unet3d"},
                {"auto_train_options": "{max_iterations: 5"}, {"auto_train_options": "[1]"},
                {"auto_train_options": '{"max_iterations":0}'}):
        with pytest.raises(ConfigError, match="auto_train"):
            AppConfig.from_conf(bad, str(tmp_path), str(tmp_path))


def test_shipped_weights_can_be_ignored(tmp_path):
    from medseg.checkpoint import model_stores

    app = tmp_path / "app"
    (app / "model" / "unet3d").mkdir(parents=True)
    (app / "model" / "unet3d" / "model.pt").write_bytes(b"x")
    with_shipped = model_stores(AppConfig.from_conf({"models": "unet3d"}, str(tmp_path / "s"), str(app)))
    assert with_shipped["unet3d"].current_path() == app / "model" / "unet3d" / "model.pt"
    without = model_stores(AppConfig.from_conf({"models": "unet3d", "shipped_weights": "false"},
                                               str(tmp_path / "s"), str(app)))
    assert without["unet3d"].current_path() is None and without["unet3d"].load() is None
    with pytest.raises(ConfigError):
        AppConfig.from_conf({"shipped_weights": "perhaps"}, str(tmp_path), str(tmp_path))


def test_other_anatomy_keeps_the_class_agnostic_guided_editing_weights(tmp_path):
    from medseg.tasks.interactive_train import interactive_store

    app = tmp_path / "app"
    (app / "model" / "interactive").mkdir(parents=True)
    (app / "model" / "interactive" / "model.pt").write_bytes(b"x")
    other_anatomy = AppConfig.from_conf({"models": "unet3d", "shipped_weights": "false"}, str(tmp_path / "s"), str(app))
    assert interactive_store(other_anatomy).current_path() == app / "model" / "interactive" / "model.pt"
    none = AppConfig.from_conf({"models": "unet3d", "shipped_weights": "false", "shipped_interactive_weights": "false"},
                               str(tmp_path / "s"), str(app))
    assert interactive_store(none).current_path() is None


def test_safety_keys():
    cfg = AppConfig.from_conf({"max_upload_mb": "5", "max_image_voxels": "1000000", "infer_server_paths": "true",
                               "open_network": "false"}, "/tmp/studies", "/tmp/app")
    assert (cfg.max_upload_mb, cfg.infer_server_paths, cfg.open_network) == (5.0, True, False)
    assert cfg.grid_limits().max_voxels == 1000000
    for bad in ({"max_upload_mb": "0"}, {"max_image_voxels": "abc"}, {"open_network": "maybe"}):
        with pytest.raises(ConfigError):
            AppConfig.from_conf(bad, "/tmp/studies", "/tmp/app")


def test_labels_as_pairs_or_json():
    from medseg.config import parse_labels

    assert parse_labels("ribs=1,spine=2") == parse_labels('{"ribs": 1, "spine": 2}') == {"ribs": 1, "spine": 2}
    assert AppConfig.from_conf({"labels": "a=1,b=2,c=3"}, "/tmp/studies", "/tmp/app").labels == {"a": 1, "b": 2, "c": 3}
    for bad in ("ribs", "ribs=x", "=1", "", "a=1,b=3"):
        with pytest.raises(ConfigError):
            AppConfig.from_conf({"labels": bad}, "/tmp/studies", "/tmp/app") if bad else parse_labels(bad)
