"""nnU-Net v2 as a peer: plan, preprocess, train with our budget, predict, timed.

nnU-Net runs from its own virtual environment (``bench/work/nnunet-venv``, made on first
use with ``pip install nnunetv2==NNUNET_VERSION`` and the torch release our environment
has): nnunetv2 pulls numpy 2, which monailabel's dependencies refuse
(/work/shared/ENVIRONMENT.md), and a peer should run as its users install it.

What is done, with nnU-Net's own commands (nnunetv2 2.8.1, ``nnunetv2/run/run_training.py``,
``nnunetv2/experiment_planning/plan_and_preprocess_entrypoints.py``):

1. the benchmark's training images become ``Dataset<ID>_MedSegBench`` in nnU-Net's raw
   format (``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``dataset.json``
   with channel "MRI", which selects nnU-Net's per-image z-score);
2. ``nnUNetv2_extract_fingerprint --verify_dataset_integrity`` and
   ``nnUNetv2_plan_experiment`` (the default ``ExperimentPlanner``, 3d_fullres);
3. with ``match`` (the default when our unet3d was trained in the same run) the
   3d_fullres configuration of ``nnUNetPlans.json`` is edited to our unet3d plan: target
   spacing, patch, batch, stages, features, kernels and strides (nnU-Net documents
   editing plans files for exactly this, ``documentation/explanation_plans_files.md``).
   Both networks are then the same PlainConvUNet (same parameter count, checked by the
   suite) and the comparison is about the pipelines, not about network size. nnU-Net's
   own plan is kept in the results next to the one used;
4. ``nnUNetv2_preprocess`` with that plan; the train/validation split is written as
   ``splits_final.json`` (fold 0) from our server's split, so both train on the same images;
5. ``nnUNetv2_train <ID> 3d_fullres 0 -tr nnUNetTrainer_MedSegBench`` where that trainer
   is a subclass written into nnunetv2's trainer package at run time (nnU-Net looks
   trainers up by class name inside ``nnunetv2.training.nnUNetTrainer``) that only sets
   ``num_epochs`` x ``num_iterations_per_epoch`` = our iteration budget (nnU-Net's poly
   learning rate then decays per epoch over those epochs) and one validation batch per
   epoch (nnU-Net's 50 are a progress estimate, not training);
6. prediction without TTA (and with mirroring, for the TTA row), timed per case in one
   warm process (``nnunet_predict.py``), and one ``nnUNetv2_predict --disable_tta`` call
   on the 1 mm template timed from the outside, as a user would run it.

nnU-Net's data-augmentation workers are left at nnU-Net's default
(``get_allowed_n_proc_DA``: 12, at most the number of CPUs); ``nnUNet_def_n_proc``
(preprocessing and export processes) is set to the number of CPUs, at most nnU-Net's 8.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from monitor import ProcessTreeMonitor  # noqa: E402

NNUNET_VERSION = "2.8.1"
VENV = REPO / "bench" / "work" / "nnunet-venv"
DATASET_ID = 977
DATASET_NAME = f"Dataset{DATASET_ID}_MedSegBench"
TRAINER = "nnUNetTrainer_MedSegBench"
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"

TRAINER_SOURCE = '''"""Written by MedSeg's bench/peers/nnunet.py: nnUNetTrainer with the benchmark's iteration budget."""
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class {name}(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = {epochs}
        self.num_iterations_per_epoch = {per_epoch}
        self.num_val_iterations_per_epoch = 1
'''


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv(log) -> dict:
    """The peer's environment: made once here (nnunetv2 pinned, torch the same release as ours),
    or an existing one (``--nnunet-venv``, e.g. prepared on a machine without a registry), used as it is."""
    import torch

    torch_version = torch.__version__.split("+")[0]
    pins = [f"nnunetv2=={NNUNET_VERSION}", f"torch=={torch_version}"]
    marker = VENV / "medseg-bench-pins.txt"
    t0 = time.time()
    made_here = marker.exists()
    if not venv_python().exists() or (made_here and marker.read_text().split() != pins):
        if VENV.exists() and not made_here:
            raise RuntimeError(f"{VENV} exists but is not a Python environment; remove it or pass another")
        shutil.rmtree(VENV, ignore_errors=True)
        log(f"nnU-Net: creating {VENV} with {' '.join(pins)} (once; several minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", *pins], check=True)
        marker.write_text("\n".join(pins))
        made_here = True
    versions = json.loads(subprocess.run(
        [str(venv_python()), "-c", "import json, importlib.metadata as m; print(json.dumps({p: m.version(p) for p in "
         "('nnunetv2', 'torch', 'numpy', 'dynamic_network_architectures', 'batchgeneratorsv2', 'SimpleITK')}))"],
        capture_output=True, text=True, check=True).stdout)
    return {"versions": versions, "setup_s": round(time.time() - t0, 1), "venv": str(VENV),
            "pinned_here": pins if made_here else None}


def nnunet_env(root: Path) -> dict:
    env = dict(os.environ)
    env.update({
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_def_n_proc": str(min(8, os.cpu_count() or 1)),
        "PATH": f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
    env.pop("PYTHONPATH", None)  # nothing of our environment leaks into the peer's
    return env


def run_logged(cmd: list[str], env: dict, log_path: Path, gpu: bool = False, keep_monitor: list | None = None) -> dict:
    """Run one nnU-Net command, output to a log file, peak memory of its process tree."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        with ProcessTreeMonitor(proc.pid, gpu=gpu) as mon:
            rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"{cmd[0]} failed with exit code {rc}; see {log_path}")
    if keep_monitor is not None:
        keep_monitor.append(mon)
    return {"wall_s": round(time.perf_counter() - t0, 2), **mon.result()}


def write_raw_dataset(root: Path, train_pairs: dict[str, tuple[Path, Path]], labels: dict[str, int]) -> Path:
    raw = root / "raw" / DATASET_NAME
    shutil.rmtree(raw, ignore_errors=True)
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir(parents=True)
    for case, (image, label) in train_pairs.items():
        shutil.copyfile(image, raw / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copyfile(label, raw / "labelsTr" / f"{case}.nii.gz")
    dataset = {"channel_names": {"0": "MRI"}, "labels": {"background": 0, **labels},
               "numTraining": len(train_pairs), "file_ending": ".nii.gz", "name": "MedSegBench",
               "description": "MedSeg benchmark pseudo-subjects of the MNI ICBM152 2009a template"}
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return raw


def matched_configuration(config: dict, our_plan: dict) -> dict:
    """nnU-Net's 3d_fullres configuration with our plan's spacing, patch, batch and topology.

    nnU-Net reads NIfTI through SimpleITK, whose arrays are (z, y, x): the reverse of the
    voxel order nibabel (and our plan) uses, so every per-axis list is reversed.
    """
    config = json.loads(json.dumps(config))
    rev = lambda xs: list(reversed(list(xs)))  # noqa: E731
    n = len(our_plan["features"])
    config["spacing"] = rev(our_plan["target_spacing_mm"])
    config["patch_size"] = rev(our_plan["patch_size_vox"])
    config["batch_size"] = int(our_plan["batch_size"])
    arch = config["architecture"]["arch_kwargs"]
    arch.update({
        "n_stages": n,
        "features_per_stage": list(our_plan["features"]),
        "kernel_sizes": [rev(k) for k in our_plan["kernel_sizes"]],
        "strides": [rev(s) for s in our_plan["strides"]],
        "n_conv_per_stage": [2] * n,
        "n_conv_per_stage_decoder": [2] * (n - 1),
    })
    return config


def plan_summary(config: dict) -> dict:
    """Per-axis lists in our (nibabel) axis order, for the report."""
    rev = lambda xs: list(reversed(list(xs)))  # noqa: E731
    arch = config["architecture"]["arch_kwargs"]
    return {"target_spacing_mm": rev(config["spacing"]), "patch_size_vox": rev(config["patch_size"]),
            "batch_size": config["batch_size"], "features": list(arch["features_per_stage"]),
            "strides": [rev(s) for s in arch["strides"]], "n_stages": arch["n_stages"],
            "network": config["architecture"]["network_class_name"].split(".")[-1]}


def epochs_for(iterations: int) -> tuple[int, int]:
    """(epochs, iterations per epoch) whose product is the budget: up to 10 epochs, so that
    nnU-Net's per-epoch poly learning-rate schedule still decays in steps."""
    epochs = max(d for d in range(1, min(10, iterations) + 1) if iterations % d == 0)
    return epochs, iterations // epochs


def write_trainer(iterations: int) -> dict:
    site = subprocess.run([str(venv_python()), "-c", "import nnunetv2, os; print(os.path.dirname(nnunetv2.__file__))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    epochs, per_epoch = epochs_for(iterations)
    path = Path(site) / "training" / "nnUNetTrainer" / "variants" / "training_length" / "medseg_bench_trainer.py"
    path.write_text(TRAINER_SOURCE.format(name=TRAINER, epochs=epochs, per_epoch=per_epoch))
    return {"trainer": TRAINER, "epochs": epochs, "iterations_per_epoch": per_epoch, "file": str(path)}


def training_seconds_per_epoch(model_dir: Path) -> list[float]:
    """Epoch times nnU-Net logs (training iterations plus one validation batch each)."""
    times = []
    for log in sorted((model_dir / "fold_0").glob("training_log_*.txt")):
        times += [float(x) for x in re.findall(r"Epoch time: ([0-9.]+) s", log.read_text())]
    return times


def training_window(model_dir: Path) -> tuple[float, float] | None:
    """Wall-clock start of epoch 1 and end of training, from the trainer's time-stamped log:
    the steady training loop (epoch 0 holds start-up, and on a GPU torch.compile)."""
    import datetime

    stamps = {}
    for log in sorted((model_dir / "fold_0").glob("training_log_*.txt")):
        for line in log.read_text().splitlines():
            m = re.match(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+): (Epoch 1|Training done\.)$", line.strip())
            if m:
                stamps[m.group(2)] = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
    if "Training done." not in stamps:
        return None
    return stamps.get("Epoch 1", stamps["Training done."]), stamps["Training done."]


def parameter_count(model_dir: Path) -> int:
    code = (
        "import sys, torch\n"
        "from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor\n"
        "p = nnUNetPredictor(device=torch.device('cpu'), perform_everything_on_device=False, allow_tqdm=False)\n"
        "p.initialize_from_trained_model_folder(sys.argv[1], use_folds=(0,))\n"
        "print(sum(x.numel() for x in p.network.parameters()))\n")
    out = subprocess.run([str(venv_python()), "-c", code, str(model_dir)], capture_output=True, text=True, check=True,
                         env=nnunet_env(model_dir.parents[2]))
    return int(out.stdout.strip().splitlines()[-1])


def stage_inputs(folder: Path, images: dict[str, Path]) -> Path:
    """Inputs named as nnU-Net expects (<case>_0000.nii.gz), in a folder of their own."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for case, image in images.items():
        os.symlink(os.path.abspath(image), folder / f"{case}_0000.nii.gz")
    return folder


def run(root: Path, train_pairs: dict[str, tuple[Path, Path]], split: dict[str, list[str]],
        heldout_images: dict[str, Path], template_image: Path, labels: dict[str, int], iterations: int,
        our_plan: dict | None, device: str, repeats: int, tta_repeats: int, log) -> dict:
    """Everything for the nnU-Net peer; predictions are written under root/predictions/."""
    setup = ensure_venv(log)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    env = nnunet_env(root)
    logs = root / "logs"
    gpu = device.startswith("cuda")
    n_proc = env["nnUNet_def_n_proc"]
    steps = {}
    write_raw_dataset(root, train_pairs, labels)

    log("nnU-Net: fingerprint and plan")
    steps["fingerprint"] = run_logged(["nnUNetv2_extract_fingerprint", "-d", str(DATASET_ID), "-np", n_proc,
                                       "--verify_dataset_integrity"], env, logs / "plan.log")
    steps["plan"] = run_logged(["nnUNetv2_plan_experiment", "-d", str(DATASET_ID)], env, logs / "plan.log")
    plans_path = root / "preprocessed" / DATASET_NAME / f"{PLANS}.json"
    plans = json.loads(plans_path.read_text())
    own = plans["configurations"][CONFIGURATION]
    used = matched_configuration(own, our_plan) if our_plan else own
    plans["configurations"][CONFIGURATION] = used
    plans_path.write_text(json.dumps(plans, indent=1))
    (root / "preprocessed" / DATASET_NAME / "splits_final.json").write_text(json.dumps([split], indent=1))

    log("nnU-Net: preprocess")
    steps["preprocess"] = run_logged(["nnUNetv2_preprocess", "-d", str(DATASET_ID), "-c", CONFIGURATION,
                                      "-np", n_proc], env, logs / "preprocess.log")

    trainer = write_trainer(iterations)
    log(f"nnU-Net: train {trainer['epochs']} x {trainer['iterations_per_epoch']} iterations on {device}")
    train_mon: list = []
    steps["train"] = run_logged(["nnUNetv2_train", str(DATASET_ID), CONFIGURATION, "0", "-tr", TRAINER,
                                 "-device", "cuda" if gpu else "cpu"], env, logs / "train.log", gpu=gpu,
                                keep_monitor=train_mon)
    train_mon = train_mon[0]
    model_dir = root / "results" / DATASET_NAME / f"{TRAINER}__{PLANS}__{CONFIGURATION}"
    epoch_s = training_seconds_per_epoch(model_dir)
    # The first epoch also starts the augmentation workers (and compiles on the GPU): the
    # rate is taken over the epochs after it when there are any.
    steady = epoch_s[1:] or epoch_s
    its = trainer["iterations_per_epoch"] * len(steady) / sum(steady) if steady and sum(steady) > 0 else None
    window = training_window(model_dir)
    if gpu and window:
        steps["train"].update(train_mon.busy_between(*window))

    pred_dir = root / "predictions"
    heldout_in = stage_inputs(root / "inputs" / "heldout", heldout_images)
    template_in = stage_inputs(root / "inputs" / "template", {"template": template_image})
    log("nnU-Net: predict (warm process; template without and with TTA, held-out subjects)")
    cmd = [str(venv_python()), str(Path(__file__).with_name("nnunet_predict.py")), "--model-dir", str(model_dir),
           "--fold", "0", "--device", "cuda" if gpu else "cpu", "--out", str(pred_dir),
           "--template", str(template_in / "template_0000.nii.gz"), "--repeats", str(repeats),
           "--tta-repeats", str(tta_repeats), *sorted(str(p) for p in heldout_in.glob("*_0000.nii.gz"))]
    t0 = time.perf_counter()
    with open(logs / "predict.log", "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        with ProcessTreeMonitor(proc.pid, gpu=gpu) as mon:
            stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"nnU-Net prediction failed; see {logs / 'predict.log'}")
    predict = {**json.loads(stdout.strip().splitlines()[-1]), **mon.result(),
               "process_wall_s": round(time.perf_counter() - t0, 2)}
    predictions = {"template": pred_dir / "plain" / "template.nii.gz",
                   **{r["case"]: pred_dir / "plain" / f"{r['case']}.nii.gz" for r in predict["heldout"]}}

    # What a user of the command line waits for: one nnUNetv2_predict call on the template.
    cli_out = root / "predictions" / "cli"
    log("nnU-Net: nnUNetv2_predict --disable_tta on the template (command-line wall time)")
    cli = run_logged(["nnUNetv2_predict", "-i", str(template_in), "-o", str(cli_out), "-d", str(DATASET_ID),
                      "-c", CONFIGURATION, "-f", "0", "-tr", TRAINER, "--disable_tta", "--disable_progress_bar",
                      "-device", "cuda" if gpu else "cpu"], env, logs / "predict_cli.log", gpu=gpu)
    return {
        "version": setup["versions"]["nnunetv2"],
        "environment": setup,
        "own_plan": plan_summary(own),
        "plan_used": plan_summary(used),
        "plan_matched_to": "unet3d" if our_plan else None,
        "trainer": trainer,
        "parameters": parameter_count(model_dir),
        "steps": steps,
        "train_epoch_seconds": epoch_s,
        "train_iterations_per_s": round(its, 3) if its else None,
        "predict": predict,
        "predict_cli_template_wall_s": cli["wall_s"],
        "predict_cli": cli,
        "predictions": {c: str(p) for c, p in predictions.items()},
        "model_dir": str(model_dir),
        "n_proc_DA": min(12, os.cpu_count() or 1) if "nnUNet_n_proc_DA" not in env else int(env["nnUNet_n_proc_DA"]),
    }
