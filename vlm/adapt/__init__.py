"""Adapting a trained model to a new domain, above training: WiSE-FT, the adaptation report, and the `vlm lora merge`,
`vlm wise-ft`, `vlm adapt-report` commands. LoRA itself is vlm/models/lora.py; LoRA / LiT / freezing in a run,
vlm/train/trainable.py."""
