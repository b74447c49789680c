"""The networks, pinned to the paper's and torchvision's numbers."""

import pytest
import torch
import torchvision

from resnet.models import (MODELS, ZeroPadShortcut, build_model, count_macs, count_params, model_config, summarize)
from resnet.errors import UsageError

# Table 1's nets: torchvision's parameter counts (option B).
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
# Table 1: multiply-adds of the paper's (v1) nets.
PAPER_MACS = {18: 1.8e9, 34: 3.6e9, 50: 3.8e9, 101: 7.6e9, 152: 11.3e9}
# Table 6: parameters of the CIFAR ResNets (option A), to the precision shown there.
PAPER_CIFAR_PARAMS = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M", 1202: "19.4M"}


@pytest.mark.parametrize("depth", TORCHVISION_PARAMS)
def test_imagenet_params_match_torchvision(depth):
    assert count_params(build_model(f"resnet{depth}")) == TORCHVISION_PARAMS[depth]
    # the stride position does not change the parameter count
    if depth >= 50:
        assert count_params(build_model(f"resnet{depth}", variant="v1.5")) == TORCHVISION_PARAMS[depth]


@pytest.mark.parametrize("depth", PAPER_MACS)
def test_imagenet_macs_within_3pct_of_table1(depth):
    macs = count_macs(build_model(f"resnet{depth}", variant="v1" if depth >= 50 else None), 224)
    assert abs(macs / PAPER_MACS[depth] - 1) < 0.03, macs


def test_resnet50_v15_macs():
    assert abs(count_macs(build_model("resnet50", variant="v1.5"), 224) / 4.1e9 - 1) < 0.01


@pytest.mark.parametrize("depth", PAPER_CIFAR_PARAMS)
def test_cifar_params_match_table6(depth):
    shown = PAPER_CIFAR_PARAMS[depth]
    decimals = len(shown.split(".")[1]) - 1
    assert f"{count_params(build_model(f'resnet{depth}')) / 1e6:.{decimals}f}M" == shown


def test_cifar_plain_has_same_weights_as_resnet_with_option_a():
    # Option A is parameter-free, so plain-n and ResNet-n have identical parameter sets (Sec. 4.2).
    for d in (20, 56, 110):
        plain, res = build_model(f"plain{d}"), build_model(f"resnet{d}")
        assert [n for n, _ in plain.named_parameters()] == [n for n, _ in res.named_parameters()]


def test_shortcut_options_param_order():
    # Table 3: A has no projection parameters, B projects where dimensions grow, C everywhere: A < B < C.
    a, b, c = (count_params(build_model("resnet34", shortcut=o)) for o in "ABC")
    assert a < b < c
    assert b == TORCHVISION_PARAMS[34]
    a, b, c = (count_params(build_model("resnet20", shortcut=o)) for o in "ABC")
    assert a < b < c


def test_plain_net_is_the_same_block_without_shortcut():
    torch.manual_seed(0)
    res, plain = build_model("resnet20").eval(), build_model("plain20").eval()
    plain.load_state_dict(res.state_dict())
    block_r, block_p = res.layer1[0], plain.layer1[0]
    x = torch.relu(torch.randn(2, 16, 8, 8))
    assert block_p.downsample is None
    torch.testing.assert_close(block_r(x), torch.relu(block_r.residual(x) + x))
    torch.testing.assert_close(block_p(x), torch.relu(block_r.residual(x)))


def test_option_a_pads_zeros_and_subsamples():
    sc = ZeroPadShortcut(16, 32, 2)
    x = torch.randn(1, 16, 8, 8)
    y = sc(x)
    assert y.shape == (1, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_weights_give_torchvision_outputs(depth):
    torch.manual_seed(depth)
    tv = getattr(torchvision.models, f"resnet{depth}")(num_classes=7).eval()
    for m in tv.modules():  # non-trivial BN statistics, so that any misplaced layer shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    ours = build_model(f"resnet{depth}", num_classes=7, variant="v1.5" if depth >= 50 else None).eval()
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=1e-5)


def test_v1_and_v15_differ_only_in_stride_position():
    v1, v15 = build_model("resnet50", variant="v1"), build_model("resnet50", variant="v1.5")
    assert v1.layer2[0].conv1.stride == (2, 2) and v1.layer2[0].conv2.stride == (1, 1)
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)


def test_zero_init_residual_makes_blocks_identity():
    m = build_model("resnet20", zero_init_residual=True).eval()
    x = torch.relu(torch.randn(2, 16, 8, 8))
    torch.testing.assert_close(m.layer1[1](x), x)


@pytest.mark.parametrize("name", [n for n, c in MODELS.items() if c.depth <= 56])
def test_every_model_runs_any_classes_any_size(name):
    m = build_model(name, num_classes=5).eval()
    size = 64 if m.config.family == "imagenet" else 16
    with torch.no_grad():
        assert m(torch.randn(1, 3, size, size)).shape == (1, 5)


def test_summary_table_matches_table1_output_sizes():
    s = summarize(build_model("resnet34"))
    assert [r["output"] for r in s["stages"]] == ["56x56", "56x56", "28x28", "14x14", "7x7", "1x1"]
    assert [r["blocks"] for r in s["stages"][1:5]] == [3, 4, 6, 3]


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="resnet21"), "unknown model"),
    (dict(name="plain34", shortcut="B"), "plain net"),
    (dict(name="resnet34", shortcut="D"), "unknown shortcut"),
    (dict(name="resnet34", variant="v1.5"), "bottleneck"),
    (dict(name="resnet50", variant="v2"), "unknown variant"),
    (dict(name="resnet50", num_classes=0), "positive"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(UsageError, match=message):
        model_config(**kwargs)


def test_channels_last_training_hands_back_channels_last_gradients():
    """PyTorch's backward of option A's strided slice returns NCHW; keep_channels_last_grad turns it back, so that the
    gradient reaching a block input stays channels_last (mixed layouts take slow elementwise paths)."""
    torch.manual_seed(0)
    net = build_model("resnet20").train().to(memory_format=torch.channels_last)
    seen = {}

    def keep(module, args):  # the input of the first block of stage 2, whose shortcut subsamples (option A)
        args[0].register_hook(lambda g: seen.update(grad=g))

    net.layer2[0].register_forward_pre_hook(keep)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
    net(x).square().sum().backward()
    for g in (x.grad, seen["grad"]):
        assert g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous()


def test_channels_last_training_keeps_the_values():
    """Layouts change, values do not: in float64 the gradients of a channels_last ResNet-20 equal the NCHW net's."""
    torch.manual_seed(0)
    net = build_model("resnet20").train().double()
    twin = build_model("resnet20").train().double()
    twin.load_state_dict(net.state_dict())
    twin = twin.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    net(x1).square().sum().backward()
    twin(x2).square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-9, atol=1e-10)
    for (name, a), b in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_option_a_shortcut_equals_slicing_and_padding_in_the_inputs_layout(layout):
    """Option A (subsample, then zero channels on both sides) as one function: the same values and gradients as
    PyTorch's strided slice and F.pad, in float64, with the output and the gradient in the input's layout."""
    from resnet.models.blocks import subsample_pad

    x = torch.randn(3, 4, 7, 6, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y = subsample_pad(x, 2, 2, 3)
    y_ref = torch.nn.functional.pad(x2[:, :, ::2, ::2], (0, 0, 0, 0, 2, 3))
    assert y.shape == (3, 9, 4, 3) and y.is_contiguous(memory_format=layout)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    g = torch.randn_like(y_ref)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, rtol=0, atol=0)
    assert x.grad.is_contiguous(memory_format=layout)
