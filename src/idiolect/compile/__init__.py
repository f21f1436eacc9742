"""Compile: one user's vault + one base + a recipe -> a LoRA adapter (PEFT folder + manifest)."""
