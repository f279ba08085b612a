"""Post-training on the pretraining core: supervised fine-tuning, LoRA, preference losses."""
