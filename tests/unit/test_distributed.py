"""Data-parallel training: two gloo processes on the CPU train one model in lockstep."""
import numpy as np
import torch

from medseg.models import MODELS
from medseg.pipeline.distributed import run_distributed
from medseg.pipeline.plan import CaseFingerprint, make_plan
from medseg.pipeline.preprocess import PreprocessedCase
from medseg.pipeline.training import TrainConfig, train_network


def sphere_case(tmp_path) -> PreprocessedCase:
    grid = np.indices((24, 24, 24)) - 12
    label = (np.sqrt((grid**2).sum(0)) < 7).astype(np.uint8)
    image = (label + np.random.default_rng(0).normal(0, 0.3, label.shape)).astype(np.float32)[None]
    # Memory-mapped, as cached training cases are: workers must get the file, not a copy.
    np.save(tmp_path / "image.npy", image)
    np.save(tmp_path / "label.npy", label)
    return PreprocessedCase(np.load(tmp_path / "image.npy", mmap_mode="r"), np.load(tmp_path / "label.npy", mmap_mode="r"),
                            label.shape, ((0, 24),) * 3, label.shape)


def test_two_gloo_processes_train_the_same_weights(tmp_path):
    plan = make_plan([CaseFingerprint("s", [1.0] * 3, [24] * 3, [1.0])], {"ball": 1},
                     gpu_memory_budget_gb=0.005, base_features=4, max_features=8)
    case = sphere_case(tmp_path)
    network = MODELS["unet3d"].build(plan)
    initial = {k: v.clone() for k, v in network.state_dict().items()}
    config = TrainConfig(max_iterations=4, batch_size=4, augment=False, log_every=2, device="cpu",
                         multi_gpu=True, world_size=2)
    assert config.processes() == 2
    results = run_distributed(config.processes(), train_network, network, plan, [case], [case], config)
    assert len(results) == 2
    rank0, rank1 = (r.state_dict for r in results)
    # Gradients were averaged every step, so both ranks hold the same weights...
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    # ...which moved from the initial ones, and rank 0 alone validated them.
    assert any(not torch.equal(rank0[k], initial[k]) for k in rank0 if rank0[k].is_floating_point())
    assert set(results[0].val_dice_per_label) == {"ball"} and results[1].val_dice_per_label == {}
    # Each rank trained on its own patches (its own half of the batch), so losses differ.
    assert [h["loss"] for h in results[0].history] != [h["loss"] for h in results[1].history]


def storage_is_shared(tensor: torch.Tensor) -> bool:
    return tensor.is_shared()


def test_every_rank_gets_its_own_copy_of_the_weights():
    # Shared storage would let every rank's optimizer write to the same weights.
    assert run_distributed(2, storage_is_shared, torch.zeros(3)) == [False, False]


def test_one_process_when_multi_gpu_is_off():
    assert TrainConfig().processes() == 1
    assert TrainConfig.from_request({"multi_gpu": "true", "world_size": "3"}).processes() == 3
