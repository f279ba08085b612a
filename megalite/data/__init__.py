"""Token data: indexed .bin/.idx files, tokenizers, preprocessing and the GPT sample index."""
