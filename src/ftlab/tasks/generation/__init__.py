"""Data-to-text generation (E2E, WebNLG, DART): readers, linearisation, the datamodule, decoding on unique inputs,
faithful NLG metrics and the generation LightningModule."""
