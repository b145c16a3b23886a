"""Optimisers and learning-rate schedules: name → constructor registries (registry.py) and Muon."""
