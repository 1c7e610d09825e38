"""Fine-tuning methods. Each is one file (or package) here and one YAML in conf/method/; the training module knows none
by name, and a method sees the run only through its hooks' MethodContext (base.py, context.py)."""
from .base import Method

__all__ = ["Method"]
