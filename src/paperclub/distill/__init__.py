"""Drafter training by distillation on the target's own generations; `data/` holds the prompt sets."""
