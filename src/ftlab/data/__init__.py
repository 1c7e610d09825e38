"""Data helpers both task kinds share: text-file checks, the resumable shuffle and the data fingerprint of a run."""
