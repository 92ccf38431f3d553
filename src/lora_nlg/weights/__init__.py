"""Weights: safe file reading, GPT-2 backbones, our adapter file, the checkpoint folder, upstream, PEFT, merged, Hub."""
