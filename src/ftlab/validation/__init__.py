"""Up-front validation of a run: the composed config's keys (validate_run_config) and its data files
(validate_data_files), both before any model or data load, both raising ftlab.errors errors with one-line messages."""
from .data_files import validate_data_files
from .run_config import validate_run_config

__all__ = ["validate_data_files", "validate_run_config"]
