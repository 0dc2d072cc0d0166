"""Evaluation: feature extractors (the dataset classifier; the standard FID Inception-v3, offline), FID / KID via
torch-fidelity, precision / recall, Inception Score, class accuracy, the protocol record, reference files and the
reference stage's artifact (reference.py), reconstruction FID of tokenizers (reconstruction.py) and evaluations
during generator training (intermediate.py)."""
