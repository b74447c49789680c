"""The paper's published numbers that the reports put next to ours (PAPER.md, sections 3 and 6)."""

from __future__ import annotations

# Table 6: CIFAR-10 test error (%) and parameters. ResNet-110: best of 5 runs (mean 6.61 +/- 0.16).
CIFAR_TABLE6 = {
    20: {"params": "0.27M", "test_error": 8.75},
    32: {"params": "0.46M", "test_error": 7.51},
    44: {"params": "0.66M", "test_error": 7.17},
    56: {"params": "0.85M", "test_error": 6.97},
    110: {"params": "1.7M", "test_error": 6.43, "note": "best of 5 runs; 6.61 +/- 0.16 mean"},
    1202: {"params": "19.4M", "test_error": 7.93, "note": "overfitting, per the paper"},
}

# akamaster/pytorch_resnet_cifar10 (option A), test error (%), best epoch picked on the test set.
CIFAR_AKAMASTER = {20: 8.27, 32: 7.37, 44: 6.90, 56: 6.61, 110: 6.32, 1202: 6.18}

# Fig. 6 is a figure: only its qualitative finding is quoted.
FIG6 = ("plain-20/32/44/56: the deeper the plain net, the higher its training (and test) error -- the degradation "
        "problem; ResNet-20/32/44/56: the deeper, the lower; plain-110 has more than 60% error")
FIG7 = ("ResNets have generally smaller responses than their plain counterparts, and the deeper ResNet has smaller "
        "magnitudes of responses (each residual function is close to zero)")

# Table 2 (ImageNet val, 10-crop, top-1 %, option A shortcuts for the ResNets).
IMAGENET_TABLE2 = {("plain18", None): 27.94, ("plain34", None): 28.54, ("resnet18", "A"): 27.88,
                   ("resnet34", "A"): 25.03}
# Table 3 (ImageNet val, 10-crop, top-1 / top-5 %).
IMAGENET_TABLE3 = {("resnet34", "A"): (25.03, 7.76), ("resnet34", "B"): (24.52, 7.46),
                   ("resnet34", "C"): (24.19, 7.40), ("resnet50", "B"): (22.85, 6.71),
                   ("resnet101", "B"): (21.75, 6.05), ("resnet152", "B"): (21.43, 5.71)}
# Table 4 (single model, multi-scale fully-convolutional, top-1 / top-5 %).
IMAGENET_TABLE4 = {("resnet34", "B"): (21.84, 5.71), ("resnet34", "C"): (21.53, 5.60),
                   ("resnet50", "B"): (20.74, 5.25), ("resnet101", "B"): (19.87, 4.60),
                   ("resnet152", "B"): (19.38, 4.49)}
# Parameters (torchvision, option B) of Table 1's nets.
IMAGENET_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                   "resnet101": 44_549_160, "resnet152": 60_192_808}
