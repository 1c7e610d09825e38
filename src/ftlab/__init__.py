"""ftlab: sparse and efficient fine-tuning of pre-trained language models (Hydra + PyTorch Lightning)."""

__version__ = "0.1.0"
