"""Fine-tuning methods. Each is one file here and one YAML in conf/method/; the training module knows none by name."""
from .base import Method

__all__ = ["Method"]
