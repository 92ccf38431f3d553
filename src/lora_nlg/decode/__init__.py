"""Decoding: beam-search predictions (gpt2_beam.py) and the official scorers' input files (gpt2_decode.py)."""
