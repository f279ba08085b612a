"""Online RL (rl_gpt.py): GRPO, RLOO and PPO on the training core, generating with our own KV cache."""
