"""Options that clients send: JSON ``params``, infer options, flags. Checked once, where they enter.

MONAI Label passes ``params`` (a form field holding JSON) and ``info`` straight to
``json.loads`` and then to the tasks, so a malformed or misspelt option surfaces as a
500 or is silently ignored. MedSeg's routes (``medseg.guarded_routes``) parse them here
first: a value that is not what the option takes, or an option no task knows, gets a
422 that names it, before any inference, training or write starts.
"""
from __future__ import annotations

import json
import math
from typing import Any

from medseg.errors import MedSegInputError
from medseg.ids import label_tag

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


def json_object(text: str | None, what: str = "params") -> dict[str, Any]:
    """``text`` as a JSON object (empty text: ``{}``); 422 for anything else."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return {}
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as e:
        raise MedSegInputError(f"{what} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise MedSegInputError(f"{what} must be a JSON object ({{...}}), got {type(value).__name__}")
    return value


def flag(name: str, value) -> bool:
    """A yes/no option: JSON true/false, or one of the usual words; anything else is refused."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise MedSegInputError(f"option {name} must be true or false, got {value!r}")


def number(name: str, value, kind: type, low: float, high: float):
    """``value`` as ``kind`` (int or float) within ``[low, high]``; 422 otherwise."""
    if isinstance(value, bool):
        raise MedSegInputError(f"option {name} must be a number, got {value!r}")
    try:
        as_float = float(value)
        if not math.isfinite(as_float):
            raise ValueError
        result = kind(as_float) if kind is int else as_float
        if kind is int and result != as_float:
            raise ValueError
    except (TypeError, ValueError, OverflowError) as e:
        raise MedSegInputError(f"option {name} must be {'a whole' if kind is int else 'a'} number, got {value!r}") from e
    if not low <= result <= high:
        raise MedSegInputError(f"option {name} must be between {low:g} and {high:g}, got {value!r}")
    return result


def choice(name: str, value, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise MedSegInputError(f"option {name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def client_id(params: dict) -> dict:
    """``params`` with its ``client_id`` checked: text, or left out when null. MONAI Label's own
    Python client sends ``"client_id": null`` unless told a name, and means "no client"."""
    if "client_id" not in params:
        return params
    out = dict(params)
    if out["client_id"] is None:
        del out["client_id"]
    else:
        out["client_id"] = text("client_id", out["client_id"])
    return out


def text(name: str, value, max_chars: int = 256) -> str:
    if not isinstance(value, str) or len(value) > max_chars or "\x00" in value:
        raise MedSegInputError(f"option {name} must be text of at most {max_chars} characters")
    return value


# POST /infer/<model>: what each option is, and MONAI Label's own keys that its clients send
# (accepted; those that do not apply to a volume model are documented as ignored in docs/).
INFER_FLAGS = ("tta", "probabilities", "uncertainty", "save_label", "result_compress")
INFER_IGNORED = ("result_extension", "result_dtype", "restore_label_idx", "largest_cc", "label_info", "description")


def infer_options(params: dict[str, Any], device: str) -> dict[str, Any]:
    """The infer options in ``params``, checked and typed; ``device`` is where the models run."""
    # "label_file" and "session": files the infer route received with the request (never client JSON).
    known = {*INFER_FLAGS, *INFER_IGNORED, "label_tag", "client_id", "device", "timeout", "label_file", "session"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise MedSegInputError(f"unknown infer option(s) {unknown}; options: {', '.join(sorted(known))}")
    out = client_id(params)
    for key in INFER_FLAGS:
        if key in params:
            out[key] = flag(key, params[key])
    if "label_tag" in params:
        out["label_tag"] = label_tag(params["label_tag"])
    if "timeout" in params:
        out["timeout"] = number("timeout", params["timeout"], float, 1, 24 * 3600)
    if "device" in params:
        wanted = text("device", params["device"], 16)
        if wanted not in ("auto", device, device.split(":")[0]):
            raise MedSegInputError(f"device {wanted!r} is not available: this server runs its models on {device} "
                                   "(--conf device); leave device out")
    return out


EFFORT_KEYS = {"interactions": (int, 0, 10**6), "seconds": (float, 0, 10**7), "seconds_waited": (float, 0, 10**7)}


def labelling_effort(value) -> dict[str, Any]:
    """A submitted label's ``effort`` ({"interactions": 7, "seconds": 95.0}), checked: what the label
    cost its author, kept with the label version for effort-per-case reports."""
    if not isinstance(value, dict) or not value:
        raise MedSegInputError(f"effort must be an object with {', '.join(EFFORT_KEYS)}")
    unknown = sorted(set(value) - set(EFFORT_KEYS))
    if unknown:
        raise MedSegInputError(f"unknown effort key(s) {unknown}; keys: {', '.join(EFFORT_KEYS)}")
    return {k: number(f"effort.{k}", v, *EFFORT_KEYS[k]) for k, v in value.items()}
