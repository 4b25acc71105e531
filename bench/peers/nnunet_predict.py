"""Timed nnU-Net v2 prediction, one warm process (runs in the nnU-Net virtual environment).

``nnUNetv2_predict`` pays for Python, torch and the weights on every call; a server pays
for them once. To compare like with like, this script loads the trained model once
(``nnUNetPredictor.initialize_from_trained_model_folder``) and then times each case the
way ``nnUNetPredictor.predict_from_files_sequential`` processes it (nnunetv2/inference/
predict_from_raw_data.py), split into the same phases our server reports:

* pre: read the file and preprocess (crop, resample to the plan's spacing, normalise),
  ``preprocessor.run_case``;
* infer: sliding window (Gaussian weighting, step 0.5), with or without mirroring,
  ``predict_logits_from_preprocessed_data``;
* post: back to the original grid and write the NIfTI, ``export_prediction_from_logits``.

The template (the timing case) is predicted once to warm the process up and then
``--repeats`` times without mirroring and ``--tta-repeats`` times with mirroring (nnU-Net's
TTA: every flip the checkpoint allows); each held-out case once, without mirroring.
Prints one JSON object on its last stdout line.

    python nnunet_predict.py --model-dir <results>/<trainer>__nnUNetPlans__3d_fullres --fold 0 \
        --device cpu --out <dir> --template <template_0000.nii.gz> [--repeats 3] [--tta-repeats 3] \
        [<heldout_0000.nii.gz> ...]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--fold", default="0")
    ap.add_argument("--checkpoint", default="checkpoint_final.pth")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", required=True)
    ap.add_argument("--template", required=True, help="the timing case")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs without mirroring after one warm-up run")
    ap.add_argument("--tta-repeats", type=int, default=3, help="timed runs with mirroring")
    ap.add_argument("heldout", nargs="*")
    args = ap.parse_args()

    import torch
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if args.device == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())  # as nnUNetv2_predict does for -device cpu
    else:
        torch.set_num_threads(1)
    device = torch.device(args.device)
    t0 = time.perf_counter()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, allow_tqdm=False)
    fold = args.fold if args.fold == "all" else int(args.fold)
    predictor.initialize_from_trained_model_folder(args.model_dir, use_folds=(fold,), checkpoint_name=args.checkpoint)
    load_s = time.perf_counter() - t0
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)

    def run(path: str, out_dir: str) -> dict:
        name = os.path.basename(path).replace("_0000.nii.gz", "")
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        t_a = time.perf_counter()
        data, _seg, props = preprocessor.run_case([path], None, predictor.plans_manager,
                                                  predictor.configuration_manager, predictor.dataset_json)
        data = torch.from_numpy(data).to(dtype=torch.float32, memory_format=torch.contiguous_format)
        t_b = time.perf_counter()
        logits = predictor.predict_logits_from_preprocessed_data(data).cpu()
        sync()
        t_c = time.perf_counter()
        export_prediction_from_logits(logits, props, predictor.configuration_manager, predictor.plans_manager,
                                      predictor.dataset_json, os.path.join(out_dir, name), False)
        t_d = time.perf_counter()
        return {"case": name, "pre": round(t_b - t_a, 3), "infer": round(t_c - t_b, 3), "post": round(t_d - t_c, 3),
                "total": round(t_d - t_a, 3)}

    plain_dir, tta_dir = os.path.join(args.out, "plain"), os.path.join(args.out, "tta")
    os.makedirs(plain_dir, exist_ok=True)
    os.makedirs(tta_dir, exist_ok=True)
    warmup = run(args.template, plain_dir)
    plain = [run(args.template, plain_dir) for _ in range(args.repeats)]
    heldout = [run(path, plain_dir) for path in args.heldout]
    # nnUNetPredictor reads use_mirroring at every sliding window: the same warm process, mirrored.
    predictor.use_mirroring = True
    tta = [run(args.template, tta_dir) for _ in range(args.tta_repeats)]
    peak_gpu_mb = round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None
    print(json.dumps({"load_s": round(load_s, 3), "warmup": warmup, "plain": plain, "tta": tta, "heldout": heldout,
                      "mirror_axes": list(predictor.allowed_mirroring_axes or []),
                      "peak_gpu_allocated_mb": peak_gpu_mb, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
