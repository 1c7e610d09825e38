"""Sentence(-pair) classification and regression (GLUE): TSV/hub readers, tokenisation with an on-disk cache,
the datamodule, the LightningModule and the metrics."""
