"""Datasets, input normalisation and augmentation."""
