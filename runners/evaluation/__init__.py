"""Evaluation: feature extractors (the dataset classifier; the standard FID Inception-v3, offline), FID / KID via
torch-fidelity, precision / recall, Inception Score, class accuracy, the protocol record and reference files."""
