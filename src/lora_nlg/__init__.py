"""lora-nlg: LoRA fine-tuning of GPT-2 for data-to-text generation (E2E, WebNLG 2017, DART)."""

__version__ = "0.1.0"
