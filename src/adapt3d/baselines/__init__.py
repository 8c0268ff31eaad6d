"""Baselines the main methods are measured against (e.g. per-prompt SDS optimisation vs a distilled generator)."""
