"""Adapting a trained model to a new domain: LoRA, locked-image tuning, freezing, WiSE-FT, and their report."""
