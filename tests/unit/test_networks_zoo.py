"""V-Net, ResEnc U-Net, Swin-Unet and nnFormer: shapes, deep supervision, gradients, sizes, errors.

Configurations are tiny (a few channels, inputs under 40 voxels per axis) so the
whole file runs in seconds on a CPU. Parameter counts are checked two ways: a
hand-computed value for the smallest config (arithmetic in the comment) and a
closed-form count from the papers' layer lists for a larger one.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from medseg.networks.nnformer import NnFormer, embedding_strides
from medseg.networks.resenc_unet import ResEncUNet
from medseg.networks.swin_unet import (
    SwinUNet,
    WindowAttention,
    attend_in_windows,
    depth_to_space,
    shifted_window_mask,
    space_to_depth,
    window_partition,
    window_reverse,
)
from medseg.networks.vnet import VNet

SIZE_3D = (19, 23, 17)
SIZE_2D = (37, 29)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The test machine shares its cores with training jobs; one thread avoids
    # oversubscription, which makes these tiny networks 10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(name: str, dims: int, in_channels: int = 1, out_channels: int = 3, **kw):
    """Three-stage networks with widths of a few channels."""
    if name == "vnet":
        return VNet(dims, in_channels, out_channels, features=(4, 8, 16), **kw)
    if name == "resenc":
        return ResEncUNet(dims, in_channels, out_channels, features=(4, 8, 16), blocks_per_stage=(1, 2, 2), **kw)
    if name == "resenc_bottleneck":
        return ResEncUNet(dims, in_channels, out_channels, features=(4, 8, 16), blocks_per_stage=(1, 2, 2),
                          block="bottleneck", **kw)
    if name == "swin":
        return SwinUNet(dims, in_channels, out_channels, features=(6, 12, 24), num_heads=(1, 2, 4), **kw)
    if name == "nnformer":
        return NnFormer(dims, in_channels, out_channels, features=(6, 12, 24), num_heads=(1, 2, 4),
                        patch_size=2, window_size=2, **kw)
    raise KeyError(name)


NETWORKS_2D_3D = ["vnet", "resenc", "resenc_bottleneck", "swin"]
ALL_NETWORKS = NETWORKS_2D_3D + ["nnformer"]
CASES = [(n, 3, SIZE_3D) for n in ALL_NETWORKS] + [(n, 2, SIZE_2D) for n in NETWORKS_2D_3D]


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --- shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,dims,size", CASES)
def test_output_matches_input_size_for_odd_sizes(name, dims, size):
    net = tiny(name, dims, deep_supervision=False).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, *size))
    assert out.shape == (2, 3, *size)


@pytest.mark.parametrize("name,dims,size", CASES)
def test_deep_supervision_returns_finest_first_in_training_only(name, dims, size):
    net = tiny(name, dims, deep_supervision=True)
    padded = [math.ceil(s / d) * d for s, d in zip(size, net.size_divisor)]
    outs = net.train()(torch.randn(1, 1, *size))
    # Like UNet: the full-size output cropped to the input, then one per coarser
    # decoder stage at half the (padded) resolution each.
    assert isinstance(outs, list) and len(outs) == 2
    assert tuple(outs[0].shape) == (1, 3, *size)
    assert tuple(outs[1].shape) == (1, 3, *[p // 2 for p in padded])
    assert net.eval()(torch.randn(1, 1, *size)).shape == (1, 3, *size)


def test_anisotropic_strides_keep_coarse_axis():
    strides = [[1, 1, 1], [2, 2, 1], [2, 2, 2]]
    for net in [
        VNet(3, 1, 2, features=(4, 8, 16), strides=strides, deep_supervision=True),
        ResEncUNet(3, 1, 2, features=(4, 8, 16), strides=strides, blocks_per_stage=(1, 1, 1)),
        SwinUNet(3, 1, 2, features=(3, 6, 12), strides=strides, window_size=(2, 2, 1), deep_supervision=True),
        NnFormer(3, 1, 2, features=(3, 6, 12), strides=strides, patch_size=(2, 2, 1), window_size=2),
    ]:
        padded = [math.ceil(s / d) * d for s, d in zip((13, 11, 5), net.size_divisor)]
        outs = net.train()(torch.randn(1, 1, 13, 11, 5))
        assert outs[0].shape == (1, 2, 13, 11, 5), type(net).__name__
        # The second output is one stride coarser: halved in-plane, the last axis kept.
        assert tuple(outs[1].shape[2:]) == (padded[0] // 2, padded[1] // 2, padded[2]), type(net).__name__


# --- gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("name,dims,size", CASES)
def test_every_parameter_and_the_input_get_gradients(name, dims, size):
    torch.manual_seed(0)
    net = tiny(name, dims, in_channels=2, deep_supervision=True).train()
    x = torch.randn(1, 2, *size, requires_grad=True)
    outs = net(x)
    # Cross-entropy against random labels, not a plain sum: the sum of logits after
    # an InstanceNorm is constant and would give zero gradients by construction.
    loss = sum(F.cross_entropy(o, torch.randint(0, 3, (o.shape[0], *o.shape[2:]))) for o in outs)
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- parameter counts -----------------------------------------------------------------


def conv(i, o, k):  # k = number of kernel taps
    return i * o * k + o


def vnet_count(dims, cin, cout, f, k, convs, norm=True):
    kk = k**dims

    def norm_p(c):
        return 2 * c if norm else 0

    def stage(c, m):
        # m x (conv + norm), PReLU after all but the last conv and one after the residual sum.
        return m * (conv(c, c, kk) + norm_p(c)) + m * c

    total = stage(f[0], convs[0]) - conv(f[0], f[0], kk) + conv(cin, f[0], kk)  # first conv takes the image
    total += 0 if f[0] % cin == 0 else conv(cin, f[0], 1)
    for i in range(1, len(f)):
        total += conv(f[i - 1], f[i], 2**dims) + norm_p(f[i]) + f[i] + stage(f[i], convs[i])
    below = f[-1]
    for i in range(len(f) - 2, -1, -1):
        total += conv(below, f[i], 2**dims) + norm_p(f[i]) + f[i] + stage(2 * f[i], convs[i])
        below = 2 * f[i]
    return total + conv(2 * f[0], cout, 1)


def resenc_count(dims, cin, cout, f, blocks, dec_convs=1, deep_supervision=True):
    kk = 3**dims

    def cna(i, o, k):  # conv + affine InstanceNorm (+ activation, no parameters)
        return conv(i, o, k) + 2 * o

    total = cna(cin, f[0], kk)
    ch = f[0]
    for fi, nb in zip(f, blocks):
        for j in range(nb):
            i = ch if j == 0 else fi
            total += cna(i, fi, kk) + cna(fi, fi, kk) + (cna(i, fi, 1) if i != fi else 0)
        ch = fi
    for i in range(len(f) - 1, 0, -1):
        total += conv(f[i], f[i - 1], 2**dims) + cna(2 * f[i - 1], f[i - 1], kk)
        total += (dec_convs - 1) * cna(f[i - 1], f[i - 1], kk)
    aux_heads = sum(conv(f[i], cout, 1) for i in range(1, len(f) - 1)) if deep_supervision else 0
    return total + conv(f[0], cout, 1) + aux_heads


def block_count(c, heads, table):
    """Pre-norm transformer block: 2 LayerNorms, q/kv/proj linears, 4x GELU MLP, bias table."""
    return 2 * 2 * c + 4 * (c * c + c) + (c * 4 * c + 4 * c) + (4 * c * c + c) + table * heads


def swin_count(dims, cin, cout, f, depths, heads, patch, window, bias=True):
    table = (2 * window - 1) ** dims if bias else 0
    merge, p = 2**dims, patch**dims
    total = conv(p * cin, f[0], 1) + 2 * f[0]  # patch embedding + LayerNorm
    total += sum(d * block_count(c, h, table) for c, d, h in zip(f, depths, heads))
    total += sum(2 * merge * f[i - 1] + merge * f[i - 1] * f[i] for i in range(1, len(f)))  # merging
    total += 2 * f[-1]  # bottleneck LayerNorm
    for i in range(len(f) - 2, -1, -1):
        total += f[i + 1] * merge * f[i] + 2 * f[i]  # expanding (no bias) + LayerNorm
        total += conv(2 * f[i], f[i], 1) + depths[i] * block_count(f[i], heads[i], table)  # skip fuse + blocks
    total += 2 * f[0] + f[0] * p * f[0] + 2 * f[0]  # decoder norm, final expanding
    return total + conv(f[0], cout, 1)


def nnformer_count(cin, cout, f, depths, heads, patch, window):
    table = (2 * window - 1) ** 3
    total, ch = 0, cin
    steps = int(math.log2(patch))
    for s in range(steps):
        out = f[0] if s == steps - 1 else f[0] // 2
        total += conv(ch, out, 27) + conv(out, out, 27) + 2 * 2 * out
        ch = out
    total += sum(2 * f[i - 1] + conv(f[i - 1], f[i], 27) for i in range(1, len(f)))  # downsampling
    n = len(f)
    tables = [table] * (n - 1) + [0]  # the GV-MSA bottleneck has no window, so no bias table
    total += sum(depths[i] * block_count(f[i], heads[i], tables[i]) for i in range(n))
    for i in range(n - 2, -1, -1):
        total += conv(f[i + 1], f[i], 8)  # transposed conv up
        total += block_count(f[i], heads[i], table) + 2 * f[i]  # skip attention: one extra LayerNorm
        total += (depths[i] - 1) * block_count(f[i], heads[i], table)
    aux_heads = sum(conv(f[i], cout, patch**3) for i in range(1, n - 1))  # deep supervision is on by default
    return total + 2 * f[0] + conv(f[0], cout, patch**3) + aux_heads


def test_parameter_counts_of_the_smallest_configs_match_hand_counts():
    # V-Net 2D, features (2, 4), kernel 3, convs (1, 2):
    # input 20+4+2, down 36+8+4, stage 148+8+4+148+8+4, up 34+4+2, decoder 148+8+4, head 10 = 604.
    assert n_params(VNet(2, 1, 2, features=(2, 4), kernel_size=3)) == 604
    # ResEnc 2D basic, features (2, 4), one block each:
    # stem 24, block0 42+42, block1 84+156+20 (1x1 projection), up 34, decoder 78, head 6 = 486.
    assert n_params(ResEncUNet(2, 1, 2, features=(2, 4), blocks_per_stage=(1, 1))) == 486
    # Swin 2D, features (2, 4), window 2 (bias table 3^2), patch 2:
    # embed 10+4, blocks 83 and 253, merging 16+32, bottleneck norm 8,
    # decoder: expand 32+4, fuse 10, block 83, norm 4, final expand 16+4, head 6 = 565.
    assert n_params(SwinUNet(2, 1, 2, features=(2, 4), num_heads=(1, 1), depths=(1, 1), window_size=2)) == 565
    # nnFormer, features (2, 4), patch 2, window 2 (bias table 3^3):
    # embedding 56+4+110+4, downsampling 4+220, LV-MSA block 101, GV-MSA block 244,
    # up 66, skip attention 105, decoder norm 4, final expanding 34 = 952.
    net = NnFormer(3, 1, 2, features=(2, 4), num_heads=(1, 1), depths=(1, 1), patch_size=2, window_size=2)
    assert n_params(net) == 952


def test_parameter_counts_match_closed_forms():
    f = (4, 8, 16)
    assert n_params(VNet(3, 2, 3, features=f)) == vnet_count(3, 2, 3, f, 5, (1, 2, 3))
    assert n_params(VNet(2, 3, 3, features=f, normalize=False)) == vnet_count(2, 3, 3, f, 5, (1, 2, 3), norm=False)
    assert n_params(ResEncUNet(3, 1, 3, features=f, blocks_per_stage=(1, 2, 3))) == resenc_count(3, 1, 3, f, (1, 2, 3))
    net = ResEncUNet(2, 1, 3, features=f, blocks_per_stage=(2, 1, 1), decoder_convs_per_stage=2, deep_supervision=False)
    assert n_params(net) == resenc_count(2, 1, 3, f, (2, 1, 1), dec_convs=2, deep_supervision=False)
    for dims in (2, 3):
        net = SwinUNet(dims, 1, 3, features=(6, 12, 24), depths=(1, 2, 2), num_heads=(1, 2, 4), patch_size=4)
        assert n_params(net) == swin_count(dims, 1, 3, (6, 12, 24), (1, 2, 2), (1, 2, 4), 4, 4)
    net = SwinUNet(2, 1, 3, features=(6, 12), num_heads=(1, 2), relative_position_bias=False)
    assert n_params(net) == swin_count(2, 1, 3, (6, 12), (2, 2), (1, 2), 2, 4, bias=False)
    net = NnFormer(3, 1, 3, features=(6, 12, 24), depths=(2, 3, 2), num_heads=(1, 2, 4))
    assert n_params(net) == nnformer_count(1, 3, (6, 12, 24), (2, 3, 2), (1, 2, 4), 4, 4)


@pytest.mark.parametrize("name", ALL_NETWORKS)
def test_parameter_count_grows_with_width(name):
    def build(scale: int):
        return {
            "vnet": lambda: VNet(3, 1, 2, features=(4 * scale, 8 * scale)),
            "resenc": lambda: ResEncUNet(3, 1, 2, features=(4 * scale, 8 * scale)),
            "resenc_bottleneck": lambda: ResEncUNet(3, 1, 2, features=(4 * scale, 8 * scale), block="bottleneck"),
            "swin": lambda: SwinUNet(3, 1, 2, features=(6 * scale, 12 * scale), num_heads=(1, 2)),
            "nnformer": lambda: NnFormer(3, 1, 2, features=(6 * scale, 12 * scale), num_heads=(1, 2)),
        }[name]()

    counts = [n_params(build(1)), n_params(build(2))]
    # Dominated by width^2 terms, so doubling the width should nearly quadruple it.
    assert 3 * counts[0] < counts[1] < 4 * counts[0]


# --- window machinery -----------------------------------------------------------------


def test_grid_rearrangements_are_inverse_and_keep_blocks_together():
    x = torch.randn(2, 8, 12, 4, 3)
    assert torch.equal(depth_to_space(space_to_depth(x, (2, 4, 2)), (2, 4, 2)), x)
    assert torch.equal(window_reverse(window_partition(x, (4, 4, 2)), (4, 4, 2), (8, 12, 4)), x)
    assert torch.equal(space_to_depth(x, (2, 4, 2))[0, 0, 1, 0].view(2, 4, 2, 3), x[0, :2, 4:8, :2])
    assert torch.equal(window_partition(x, (4, 4, 2))[0, 1].view(4, 4, 2, 3), x[0, :4, :4, 2:4])


def test_shifted_windows_attend_exactly_within_unwrapped_shifted_windows():
    """SW-MSA by roll + mask equals full attention restricted to windows offset by the shift."""
    torch.manual_seed(0)
    spatial, window, shift = (8, 6), (4, 2), (2, 1)
    attn = WindowAttention(8, 2, window, position_bias=False)
    x = torch.randn(1, *spatial, 8)
    mask = shifted_window_mask(spatial, window, shift)
    fast = attend_in_windows(attn, x, window, shift, mask)
    # Reference: token q belongs to window floor((q - shift) / w) on every axis, no wrap-around.
    coords = torch.stack(torch.meshgrid(*[torch.arange(s) for s in spatial], indexing="ij"), -1).view(-1, 2)
    group = torch.div(coords - torch.tensor(shift), torch.tensor(window), rounding_mode="floor")
    blocked = (group[:, None] != group[None, :]).any(-1)
    reference = attn(x.view(1, 1, -1, 8), mask=blocked[None]).view(1, *spatial, 8)
    assert torch.allclose(fast, reference, atol=1e-5)


def test_embedding_strides_split_power_of_two_patches():
    assert embedding_strides((1, 4, 4)) == [[1, 2, 2], [1, 2, 2]]
    assert embedding_strides((2, 4, 4)) == [[2, 2, 2], [1, 2, 2]]


def test_nnformer_decoder_reads_the_skip_through_attention():
    net = NnFormer(3, 1, 2, features=(6, 12), num_heads=(1, 2), patch_size=2, window_size=2).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        base = net(x)
        net.skip_attention[0].attn.kv.weight.mul_(2)  # only skip keys/values change
        assert not torch.allclose(net(x), base)


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [VNet, ResEncUNet, SwinUNet])
def test_rejects_bad_configuration(cls):
    kw = {"num_heads": (1, 2)} if cls is SwinUNet else {}
    with pytest.raises(ValueError):
        cls(4, 1, 2, features=(6, 12), **kw)
    with pytest.raises(ValueError):
        cls(3, 1, 2, features=(6,), **kw)
    with pytest.raises(ValueError):
        cls(3, 1, 2, features=(6, 12), strides=[[2, 2, 2], [2, 2, 2]], **kw)
    with pytest.raises(ValueError):
        cls(3, 1, 2, features=(6, 12), strides=[[1, 1, 1]], **kw)
    with pytest.raises(ValueError, match="spatial dims"):
        cls(3, 1, 2, features=(6, 12), **kw)(torch.randn(1, 1, 8, 8))


def test_rejects_architecture_specific_bad_configuration():
    with pytest.raises(ValueError, match="odd"):
        VNet(3, 1, 2, kernel_size=4)
    with pytest.raises(ValueError):
        VNet(3, 1, 2, features=(4, 8), convs_per_stage=(1, 0))
    with pytest.raises(ValueError, match="block"):
        ResEncUNet(3, 1, 2, block="dense")
    with pytest.raises(ValueError):
        ResEncUNet(3, 1, 2, features=(4, 8), blocks_per_stage=(1, 2, 3))
    with pytest.raises(ValueError, match="divisible"):
        SwinUNet(3, 1, 2, features=(8, 16))  # default heads 3, 6
    with pytest.raises(ValueError):
        SwinUNet(3, 1, 2, features=(6, 12), num_heads=(1, 2), window_size=(4, 4))
    with pytest.raises(ValueError):
        SwinUNet(3, 1, 2, features=(6, 12), num_heads=(1, 2), depths=(2, 0))
    with pytest.raises(ValueError, match="3D only"):
        NnFormer(2, 1, 2, features=(6, 12), num_heads=(1, 2))
    with pytest.raises(ValueError, match="power of two"):
        NnFormer(3, 1, 2, features=(6, 12), num_heads=(1, 2), patch_size=3)
    with pytest.raises(ValueError, match="spatial dims"):
        NnFormer(3, 1, 2, features=(6, 12), num_heads=(1, 2))(torch.randn(1, 1, 8, 8))
