"""Evaluation: a dataset classifier as feature extractor, FID / KID through torch-fidelity, class accuracy."""
