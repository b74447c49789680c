"""The `fast` CIFAR recipe (beyond the paper); filled in by the speed work."""
