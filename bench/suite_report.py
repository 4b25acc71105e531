"""The suite's report: ratios to nnU-Net, the targets, the Markdown table and the plot.

Used by bench/suite.py, which measures; this module only turns its results into what is read.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from common import update_readme_table  # noqa: E402

NNUNET = "nnU-Net v2"
SEGRESNET = "MONAI Label segmentation"


def mean_dice(row: dict, subset: str) -> float | None:
    d = ((row.get("scores") or {}).get(subset) or {}).get("dice")
    return float(np.mean(list(d.values()))) if d else None


def add_ratios(rows: list[dict]) -> None:
    """Time and Dice of every row relative to nnU-Net's in the same run."""
    ref = next((r for r in rows if r["model"] == NNUNET and "error" not in r), None)
    if ref is None:
        return
    ref_t = ref["infer"]["client_s_median"]
    for r in rows:
        if "error" in r or "infer" not in r:
            continue
        r["vs_nnunet"] = {
            "infer_time_ratio": round(r["infer"]["client_s_median"] / ref_t, 3),
            "infer_time_ratio_vs_cli": round(r["infer"]["client_s_median"] / ref["predict_cli_template_wall_s"], 3),
            "heldout_dice_ratio": round(mean_dice(r, "heldout") / mean_dice(ref, "heldout"), 4),
            "heldout_dice_delta": round(mean_dice(r, "heldout") - mean_dice(ref, "heldout"), 4),
            "template_dice_delta": round(mean_dice(r, "template") - mean_dice(ref, "template"), 4),
        }
        if train_rate(r) and train_rate(ref):
            r["vs_nnunet"]["train_speed_ratio"] = round(train_rate(r) / train_rate(ref), 3)


def targets(rows: list[dict], gpu: bool) -> list[dict]:
    """The issue's targets for unet3d, checked on this run's numbers: [{target, met, detail}]."""
    ours = next((r for r in rows if r["model"] == "unet3d" and "vs_nnunet" in r), None)
    nn = next((r for r in rows if r["model"] == NNUNET and "error" not in r), None)
    if not ours or not nn:
        return []
    v, t_ours, t_nn, t_cli = (ours["vs_nnunet"], ours["infer"]["client_s_median"], nn["infer"]["client_s_median"],
                              nn["predict_cli_template_wall_s"])
    out = [{"target": "same network as nnU-Net's plan", "met": ours.get("parameters") == nn.get("parameters"),
            "detail": f"{ours.get('parameters'):,} vs {nn.get('parameters'):,} parameters"}]
    if gpu:
        out += [
            {"target": "infer at least 3x faster than nnU-Net (warm predictor)", "met": t_ours * 3 <= t_nn,
             "detail": f"{t_ours:.2f} s vs {t_nn:.2f} s"},
            {"target": "infer at least 3x faster than nnUNetv2_predict (command)", "met": t_ours * 3 <= t_cli,
             "detail": f"{t_ours:.2f} s vs {t_cli:.2f} s"},
            {"target": "whole infer request under 1 s", "met": t_ours < 1.0, "detail": f"{t_ours:.2f} s"},
        ]
        busy = ours["train"].get("loop_gpu_util_mean_pct", ours["train"].get("gpu_util_mean_pct"))
        out.append({"target": "GPU busy over 90% while training", "met": busy is not None and busy > 90,
                    "detail": f"mean utilization {busy}% over the training loop" if busy is not None else "not measured"})
    else:
        out += [
            {"target": "infer no slower than nnU-Net (warm predictor)", "met": t_ours <= t_nn,
             "detail": f"{t_ours:.2f} s vs {t_nn:.2f} s"},
            {"target": "infer no slower than nnUNetv2_predict (command)", "met": t_ours <= t_cli,
             "detail": f"{t_ours:.2f} s vs {t_cli:.2f} s"},
        ]
    for subset, key in (("held-out", "heldout_dice_delta"), ("template", "template_dice_delta")):
        # "Within 0.01": no more than 0.01 below nnU-Net's (being better is not a miss).
        out.append({"target": f"{subset} Dice within 0.01 of nnU-Net's (or above)", "met": v[key] >= -0.01,
                    "detail": f"mean over labels {v[key]:+.3f}"})
    return out


def train_rate(row: dict) -> float | None:
    """Training iterations per second (the cascade: its full-resolution stage)."""
    rates = row.get("train", {}).get("iterations_per_s") or {}
    return rates.get("main") or rates.get("fullres") or next(iter(rates.values()), None)


def fmt(x, digits=3, missing="–") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return missing
    return f"{x:.{digits}f}"


def roofline_cell(forward: dict) -> str:
    if "same_network_as" in forward:
        return f"as {forward['same_network_as']}"
    if "achieved_tflops" not in forward:
        return "–"
    share = forward.get("fraction_of_peak")
    return fmt(forward["achieved_tflops"], 3) + (f" ({100 * share:.1f}%)" if share is not None else "")


def write_table(result: dict, mode_name: str, labels: dict) -> None:
    header = (["model", "patch", "parameters", "train it/s"]
              + [f"held-out Dice {k}" for k in labels] + [f"held-out HD95 {k} mm" for k in labels]
              + [f"template Dice {k}" for k in labels]
              + ["infer s (1 mm, no TTA)", "infer s (TTA)", "peak RAM MB (infer)", "peak GPU MB (infer)",
                 "forward TFLOP/s (% of peak)", "time / nnU-Net", "Dice − nnU-Net (held-out)"])
    rows = []
    for r in result["rows"]:
        name = f"`{r['model']}`" if r["kind"] == "ours" else r["model"]
        if "error" in r:
            rows.append([name, "failed: " + r["error"][:80].replace("|", "/")] + [""] * (len(header) - 2))
            continue
        s = r["scores"]
        v = r.get("vs_nnunet", {})
        infer = r.get("infer", {})
        rows.append([
            name, "x".join(map(str, r["plan"]["patch_size_vox"])), f"{r.get('parameters', 0):,}",
            fmt(train_rate(r), 2),
            *[fmt(s["heldout"]["dice"][k]) for k in labels],
            *[fmt(s["heldout"]["hd95_mm"][k], 1) for k in labels],
            *[fmt(s["template"]["dice"][k]) for k in labels],
            fmt(infer.get("client_s_median"), 2), fmt((r.get("infer_tta") or {}).get("client_s_median"), 2),
            str(infer.get("peak_rss_mb", "–")), str(infer.get("peak_gpu_mb", infer.get("peak_gpu_allocated_mb", "–"))),
            roofline_cell(r.get("forward") or {}), fmt(v.get("infer_time_ratio"), 2), fmt(v.get("heldout_dice_delta"), 3),
        ])
    m, st = result["machine"], result["settings"]
    nn = next((r for r in result["rows"] if r["model"] == NNUNET and "error" not in r), None)
    data = (f"{st['n_train']} training pseudo-subjects (seed {st['seed_train']}; "
            f"{len(result['split']['train'])} train / {len(result['split']['val'])} validation), "
            f"{st['n_heldout']} held-out (seed {st['seed_heldout']}), "
            + (f"resampled to {st['spacing_mm']:g} mm" if st["spacing_mm"] else "at their own 1.2-1.8 mm spacing"))
    lines = [
        f"`{mode_name}` run, {m['date']}, {m['cpu']} ({m['threads']} threads)"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
        + f", torch {m['torch']}, monai {m['monai']}, monailabel {m['monailabel']}"
        + (f", nnunetv2 {nn['version']}" if nn else "") + f"; {data}; {st['iterations']} training iterations each "
        f"from scratch; suite wall time {(result['wall_s'] - (result.get('nnunet_setup_s') or 0)) / 60:.1f} min"
        + (" (without the one-time setup of nnU-Net's environment)" if (result.get("nnunet_setup_s") or 0) > 30 else "")
        + (f"; 1-minute load average {m['load_average_1min_start']:g} at the start and "
           f"{m['load_average_1min_end']:g} at the end on {m['cores']} cores" if "load_average_1min_start" in m else "")
        + "; generated by bench/suite.py.",
        "",
        "Infer s: one request on the 1 mm template, median of "
        f"{st['repeats']} (with TTA: {st['tta_repeats']}) after a warm-up request, end to end as the caller sees it (REST round trip for the two MONAI Label apps; for "
        "nnU-Net a warm predictor process: read, preprocess, predict, write). "
        + (f"`nnUNetv2_predict --disable_tta` from the command line took {nn['predict_cli_template_wall_s']:.1f} s "
           "on the same volume (process start and model load included). " if nn else "")
        + "Time / nnU-Net: infer s over nnU-Net's; Dice − nnU-Net: mean over labels. "
        "Forward TFLOP/s: one forward pass of a batch of 2 patches (FP16 autocast on a GPU, against its "
        "data-sheet tensor peak; FP32 on the CPU, against the faster of a large matrix product and a large "
        "3D convolution measured on the same machine). "
        "HD95 of a label a model missed entirely shows as –.",
    ]
    if nn:
        own, used = nn["own_plan"], nn["plan_used"]
        lines += ["", f"nnU-Net's own plan (ExperimentPlanner, 3d_fullres): patch {'x'.join(map(str, own['patch_size_vox']))}"
                  f" at {'x'.join(f'{x:g}' for x in own['target_spacing_mm'])} mm, batch {own['batch_size']}, "
                  f"features {'-'.join(map(str, own['features']))}; "
                  + (f"run with {nn['plan_matched_to']}'s plan (patch {'x'.join(map(str, used['patch_size_vox']))}, "
                     f"batch {used['batch_size']}, features {'-'.join(map(str, used['features']))}: the same "
                     f"network, {nn['parameters']:,} parameters) so that the pipelines are compared, not network sizes."
                     if nn.get("plan_matched_to") else "run with that plan.")]
    if result.get("targets"):
        lines += ["", "Targets for `unet3d` (issue #8), checked on this run:", ""]
        lines += [f"- {t['target']}: **{'met' if t['met'] else 'not met'}** ({t['detail']})" for t in result["targets"]]
    for readme in (REPO / "bench" / "README.md", REPO / "docs" / "benchmarks.md"):
        update_readme_table(readme, "suite", header, rows, "\n".join(lines))


def plot(result: dict, path: Path, labels: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [r for r in result["rows"] if "error" not in r]
    names = [r["model"] for r in rows]
    colors = ["tab:blue" if r["kind"] == "ours" else "tab:gray" for r in rows]
    hatches = ["", "//", "..", "xx"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), dpi=110)
    x = np.arange(len(rows))
    width = 0.8 / max(1, len(labels))
    for subset, ax in (("heldout", axes[0]), ("template", axes[1])):
        for j, label in enumerate(labels):
            values = [r["scores"][subset]["dice"][label] for r in rows]
            bars = ax.bar(x + (j - (len(labels) - 1) / 2) * width, values, width, color=colors,
                          hatch=hatches[j % len(hatches)], edgecolor="black", linewidth=0.4)
            ax.bar_label(bars, [f"{v:.2f}" for v in values], fontsize=6)
        ax.set_title(f"Dice per label, {'held-out subjects (mean)' if subset == 'heldout' else '1 mm template'}",
                     fontsize=9)
        ax.set_ylim(0, 1.2)  # headroom for the legend above the bars
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch=hatches[j % len(hatches)], label=label)
                           for j, label in enumerate(labels)], fontsize=7, loc="upper center", ncol=len(labels))
        ax.grid(axis="y", alpha=0.3)
    ax = axes[2]
    plain = [r["infer"]["client_s_median"] for r in rows]
    tta = [(r.get("infer_tta") or {}).get("client_s_median") or 0 for r in rows]
    bars = ax.bar(x - 0.2, plain, 0.4, color=colors, edgecolor="black", linewidth=0.4)
    ax.bar_label(bars, [f"{v:.1f}" for v in plain], fontsize=6)
    bars = ax.bar(x + 0.2, tta, 0.4, color=colors, hatch="//", edgecolor="black", linewidth=0.4)
    ax.bar_label(bars, [f"{v:.1f}" if v else "n/a" for v in tta], fontsize=6)
    ticks, tick_names = list(x), list(names)
    nn = next((r for r in rows if r["model"] == NNUNET), None)
    if nn:  # the command a user runs: process start and model load included
        cli = nn["predict_cli_template_wall_s"]
        bars = ax.bar([len(rows) - 0.2], [cli], 0.4, color="white", edgecolor="tab:gray", linewidth=0.8)
        ax.bar_label(bars, [f"{cli:.1f}"], fontsize=6)
        ticks.append(len(rows))
        tick_names.append("nnUNetv2_predict\n(command, no TTA)")
    ax.set_title("infer on the 1 mm template, s (median, end to end)", fontsize=9)
    ax.set_xticks(ticks, tick_names, rotation=30, ha="right", fontsize=8)
    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", label="no TTA"),
                       Patch(facecolor="white", edgecolor="black", hatch="//", label="TTA (mirroring)")], fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    m, st = result["machine"], result["settings"]
    data = f"{st['spacing_mm']:g} mm" if st["spacing_mm"] else "native-resolution"
    fig.suptitle(f"bench/suite.py {st['mode']}: {m['gpu'] or m['cpu']}, {st['iterations']} iterations from scratch, "
                 f"{data} training data (blue: ours, grey: peers)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("monailabel", "numpy", "scipy", "nibabel", "SimpleITK", "matplotlib", "psutil"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
