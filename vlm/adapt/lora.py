"""`vlm.adapt.lora.merge_lora_checkpoint`, where earlier docs named it: LoRA now lives with the model it changes,
in vlm/models/lora.py (injection, rebuilding from a checkpoint, merging)."""

from vlm.models.lora import merge_lora_checkpoint

__all__ = ["merge_lora_checkpoint"]
