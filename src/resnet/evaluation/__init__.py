"""Evaluation: top-1/top-5 error of a model on a set of images."""
