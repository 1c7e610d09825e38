"""Sparsity: N:M and unstructured masks (masks), ASP one-shot pruning (asp) and ADMM pruning during fine-tuning
(admm: NxMTransformer and its unstructured variant)."""
