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
