"""Post-training on the pretrained core: LoRA adapters (lora.py, lora_io.py)."""
