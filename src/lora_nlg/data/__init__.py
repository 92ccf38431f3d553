"""Data: raw files in (sources, readers), GPT-2 tokenizer, prepared files out (files.py), training batches."""
