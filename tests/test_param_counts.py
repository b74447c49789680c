"""The CIFAR nets' exact parameter counts (Table 6 shows them rounded: 0.27M ... 19.4M), and the option B/C variants.

Each count is pinned twice: as an integer, and by a hand count of the architecture of Sec. 4.2 that does not use the
model code (``cifar_params``), so that a wrong pin cannot hide behind a wrong model.
"""

import pytest
import torch

from resnet.models import build_model, count_params

# Table 6, as printed.
TABLE6 = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M", 1202: "19.4M"}
# count_params(build_model(f"resnet{depth}")), option A (Sec. 4.2); plain nets have the same parameters.
RESNET_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
PLAIN_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}
# ResNet-20 with the other shortcuts of Table 3: B projects the two blocks where the width doubles, C every block.
RESNET20_OPTION_PARAMS = {"A": 269_722, "B": 272_474, "C": 283_962}


def build_on_meta(name: str, **options):
    """The model with its parameters on the meta device: shapes only, no memory, no initialisation cost."""
    with torch.device("meta"):
        return build_model(name, **options)


def cifar_params(depth: int, option: str | None = "A") -> int:
    """By hand: a 3x3 conv of 16 filters, three stages of n = (depth - 2) / 6 basic blocks of widths 16/32/64 (two 3x3
    convs without bias and two BNs each), a 10-way fc; projections (1x1 conv + BN) as the shortcut option says."""
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16  # conv1 and bn1
    in_planes = 16
    for i, width in enumerate((16, 32, 64)):
        for j in range(n):
            stride = 2 if i > 0 and j == 0 else 1
            total += in_planes * width * 9 + width * width * 9 + 2 * 2 * width
            projects = option == "C" or (option == "B" and (stride != 1 or in_planes != width))
            if projects:
                total += in_planes * width + 2 * width
            in_planes = width
    return total + 64 * 10 + 10  # fc


@pytest.mark.parametrize("depth", RESNET_PARAMS)
def test_cifar_resnet_params_exact(depth):
    n = count_params(build_on_meta(f"resnet{depth}"))
    assert n == RESNET_PARAMS[depth] == cifar_params(depth, "A")
    # and the pin agrees with Table 6's rounding
    shown = TABLE6[depth]
    assert f"{n / 1e6:.{len(shown.split('.')[1]) - 1}f}M" == shown


@pytest.mark.parametrize("depth", PLAIN_PARAMS)
def test_cifar_plain_params_exact(depth):
    assert count_params(build_on_meta(f"plain{depth}")) == PLAIN_PARAMS[depth] == cifar_params(depth, None)


@pytest.mark.parametrize("option", RESNET20_OPTION_PARAMS)
def test_resnet20_shortcut_option_params_exact(option):
    n = count_params(build_on_meta("resnet20", shortcut=option))
    assert n == RESNET20_OPTION_PARAMS[option] == cifar_params(20, option)


def test_meta_build_counts_like_a_real_build():
    # the meta device changes where the tensors live, not their shapes
    assert count_params(build_model("resnet20", shortcut="B")) == count_params(build_on_meta("resnet20", shortcut="B"))
