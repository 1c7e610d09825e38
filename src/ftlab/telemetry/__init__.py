"""Measurements a run records about itself (saved-for-backward tensors)."""
