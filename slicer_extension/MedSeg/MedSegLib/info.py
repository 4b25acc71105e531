"""What ``GET /info/`` says about the app, as the module shows it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from .errors import ProtocolError
from .labels import LabelSet


@dataclass
class ModelInfo:
    name: str
    type: str
    labels: LabelSet
    description: str = ""
    dimension: Optional[int] = None
    weights_version: Optional[int] = None  # MedSeg servers say which weights they serve
    val_dice_per_label: Dict[str, float] = field(default_factory=dict)
    # An interactive MedSeg task says which of its methods can answer now ("learned" needs weights).
    methods: Dict[str, bool] = field(default_factory=dict)

    @property
    def is_segmentation(self) -> bool:
        # Stock MONAI Label apps also list deepgrow/deepedit models, which need clicks.
        return self.type in ("segmentation", "")


@dataclass
class ServerInfo:
    name: str
    version: str
    description: str
    labels: LabelSet
    models: Dict[str, ModelInfo]
    trainers: List[str]
    strategies: List[str]
    labeled: int
    total: int
    train_stats: Dict[str, dict]
    raw: dict
    default_strategy: Optional[str] = None  # the one the server marks as measured best; None on stock servers

    @classmethod
    def from_json(cls, data) -> "ServerInfo":
        if not isinstance(data, dict) or "models" not in data:
            raise ProtocolError("the answer to /info/ is not a MONAI Label app description; is this the label server's address?")
        app_labels = LabelSet.from_info(data.get("labels"))
        models = {}
        for name, m in (data.get("models") or {}).items():
            m = m if isinstance(m, dict) else {}
            weights = m.get("weights") if isinstance(m.get("weights"), dict) else {}
            methods = m.get("methods") if isinstance(m.get("methods"), dict) else {}
            model_labels = LabelSet.from_info(m["labels"]) if m.get("labels") else app_labels
            models[name] = ModelInfo(
                name=name, type=str(m.get("type", "segmentation")), labels=model_labels,
                description=str(m.get("description", "")), dimension=m.get("dimension"),
                weights_version=weights.get("version"),
                val_dice_per_label=dict(weights.get("val_dice_per_label") or {}),
                methods={str(k): bool(v) for k, v in methods.items()})
        if not len(app_labels):
            # Stock apps without app-level labels: MONAI Label merges the models' labels.
            merged = {}
            for m in models.values():
                for label_name, idx in m.labels:
                    merged.setdefault(label_name, idx)
            app_labels = LabelSet(merged)
        datastore = data.get("datastore") if isinstance(data.get("datastore"), dict) else {}
        stats = data.get("train_stats") if isinstance(data.get("train_stats"), dict) else {}
        strategies = data.get("strategies") if isinstance(data.get("strategies"), dict) else {}
        default_strategy = next((name for name, s in strategies.items() if isinstance(s, dict) and s.get("default") is True),
                                None)
        return cls(
            name=str(data.get("name", "")), version=str(data.get("version", "")),
            description=str(data.get("description", "")), labels=app_labels, models=models,
            trainers=list(data.get("trainers") or {}), strategies=list(data.get("strategies") or {}),
            labeled=int(datastore.get("completed", 0) or 0), total=int(datastore.get("total", 0) or 0),
            train_stats=stats, raw=data, default_strategy=default_strategy)

    def segmentation_models(self) -> List[str]:
        return [name for name, m in self.models.items() if m.is_segmentation]

    def interactive_methods(self, model: str) -> List[str]:
        """The methods ``model`` (the interactive task) can use now; empty for a stock app's task."""
        m = self.models.get(model)
        return [name for name, available in (m.methods if m is not None else {}).items() if available]

    def labels_for(self, model: str) -> LabelSet:
        """The labels a model's output values mean (a stock app's model may number them its own way)."""
        m = self.models.get(model)
        return m.labels if m is not None and len(m.labels) else self.labels

    def train_stats_for(self, model: Optional[str]) -> dict:
        # MONAI Label >= 0.5 keys the stats by trainer; a flat dict is an older single-trainer app.
        if model and isinstance(self.train_stats.get(model), dict):
            return self.train_stats[model]
        if self.train_stats and not any(isinstance(v, dict) for v in self.train_stats.values()):
            return self.train_stats
        return {}

    @property
    def progress_text(self) -> str:
        return f"{self.labeled} / {self.total} images labeled"

    def summary(self) -> str:
        models = self.segmentation_models()
        title = f"{self.name} {self.version}".strip()
        return (f"{title}: {len(models)} model{'s' if len(models) != 1 else ''}, "
                f"labels {self.labels.describe()}, {self.progress_text}")
