"""What a run measures about itself: saved activations (saved_tensors) and the Lightning callbacks whose results the
run record takes (callbacks)."""
