"""Analyses beyond FID (ELM.md): token randomness (token_randomness.py), attention locality (attention.py)."""
