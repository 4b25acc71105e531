"""Every model of the table builds from a plan made with its own planning settings and runs on a patch."""
import pytest
import torch

from medseg.models import MODELS, select_models
from medseg.errors import ConfigError
from medseg.pipeline.plan import CaseFingerprint, make_plan

LABELS = {"grey_matter": 1, "white_matter": 2}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_builds_from_its_plan_and_predicts_a_patch(name):
    spec = MODELS[name]
    cases = [CaseFingerprint("a", [1.5, 1.5, 1.5], [90, 100, 90], [1.0])]
    planning = {"gpu_memory_budget_gb": 0.05, "base_features": 4, "max_features": 16, "max_stages": 4}
    planning.update(spec.planning)
    plan = make_plan(cases, LABELS, spatial_dims=spec.spatial_dims, **planning)
    net = spec.build(plan)
    divisor = getattr(net, "size_divisor", [1] * spec.spatial_dims)
    assert all(p % d == 0 for p, d in zip(plan.patch_size_vox, divisor)), (plan.patch_size_vox, divisor)
    with torch.no_grad():
        # A cascade's second stage also reads the first stage's one-hot foreground.
        out = net.eval()(torch.randn(1, 1 + plan.previous_stage_channels, *plan.patch_size_vox))
    assert out.shape == (1, 3, *plan.patch_size_vox)


def test_select_models():
    assert [s.name for s in select_models("unet3d")] == ["unet3d"]
    assert len(select_models("all")) == len(MODELS)
    with pytest.raises(ConfigError, match="unknown"):
        select_models("unet3d,nope")
