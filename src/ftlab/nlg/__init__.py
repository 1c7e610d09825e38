"""Data-to-text generation: decoding on unique inputs, faithful NLG metrics, and the generation LightningModule."""
