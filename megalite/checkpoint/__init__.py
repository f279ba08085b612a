"""Checkpoints in Megatron's layout: where files go and how they are read (layout), writing
them (save), reading them in another parallel layout (reshard), rewriting them for one
(rewrite), restoring a run (load) and the random states they carry (rng). The package knows
no model variant: a weight adapter (a reward model's fresh head, LoRA's adapters-only model)
is given by the caller."""
