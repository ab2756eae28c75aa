"""Adversarial training: the per-epoch loop, optimisers and schedules, and the RoLI two-stage pipeline."""
