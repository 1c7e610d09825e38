"""Task kinds. A task YAML names its datamodule and LightningModule by `_target_`: classification (and regression)
in tasks.classification, data-to-text generation in tasks.generation; tasks.module holds the LightningModule they
share, which calls the method hooks."""
