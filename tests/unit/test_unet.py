import pytest
import torch

from medseg.networks.unet import UNet


@pytest.mark.parametrize("dims,size", [(3, (19, 23, 17)), (3, (32, 32, 32)), (2, (37, 29))])
def test_output_matches_input_size_for_odd_sizes(dims, size):
    net = UNet(dims, 1, 3, features=(4, 8, 16), deep_supervision=False).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, *size))
    assert out.shape == (2, 3, *size)


def test_deep_supervision_returns_finest_first_in_training_only():
    net = UNet(3, 1, 3, features=(4, 8, 16, 32))
    outs = net.train()(torch.randn(1, 1, 32, 32, 32))
    assert [tuple(o.shape[2:]) for o in outs] == [(32, 32, 32), (16, 16, 16), (8, 8, 8)]
    assert net.eval()(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_anisotropic_strides_keep_coarse_axis():
    net = UNet(3, 1, 2, features=(4, 8, 16), strides=[[1, 1, 1], [2, 2, 1], [2, 2, 2]],
               kernel_sizes=[[3, 3, 1], [3, 3, 3], [3, 3, 3]])
    assert net.size_divisor == [4, 4, 2]
    outs = net.train()(torch.randn(1, 1, 16, 16, 6))
    assert tuple(outs[1].shape[2:]) == (8, 8, 6)


def test_blocks_are_conv_instancenorm_leakyrelu_and_gradients_reach_the_input():
    net = UNet(3, 1, 2, features=(4, 8))
    kinds = [type(m).__name__ for m in net.encoder[0][0]]
    assert kinds == ["Conv3d", "InstanceNorm3d", "LeakyReLU"]
    assert net.encoder[0][0][2].negative_slope == 0.01
    x = torch.randn(1, 1, 8, 8, 8, requires_grad=True)
    net.train()(x)[0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_rejects_bad_configuration():
    with pytest.raises(ValueError):
        UNet(4, 1, 2)
    with pytest.raises(ValueError):
        UNet(3, 1, 2, features=(4, 8), strides=[[2, 2, 2], [2, 2, 2]])
    with pytest.raises(ValueError, match="spatial dims"):
        UNet(3, 1, 2, features=(4, 8))(torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("dims", [2, 3])
def test_pointwise_head_equals_the_convolution_it_replaces_and_loads_its_weights(dims):
    from medseg.networks.blocks import pointwise_conv

    torch.manual_seed(0)
    conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(8, 121, 1)
    head = pointwise_conv(dims, 8, 121)
    head.load_state_dict(conv.state_dict())  # checkpoints of the conv heads load unchanged
    x = torch.randn(2, 8, *([9, 7, 5][:dims]), requires_grad=True)
    out = head(x)
    assert out.shape == conv(x).shape
    assert torch.allclose(out, conv(x), atol=1e-5)
    out.sum().backward()  # it trains too
    assert head.weight.grad is not None and x.grad is not None


def test_inference_runs_only_the_finest_head():
    net = UNet(3, 1, 4, features=[8, 16, 32, 64], deep_supervision=True).eval()
    calls = []
    for level, head in enumerate(net.heads):
        head.register_forward_hook(lambda *_, level=level: calls.append(level))
    net(torch.randn(1, 1, 16, 16, 16))
    assert calls == [len(net.heads) - 1]  # heads run coarsest first; the last is full resolution
