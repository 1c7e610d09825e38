"""Low-rank adapters: LoRA (lora) and DSEE (dsee) with its GreBsmo sparse residual (grebsmo), structured head
pruning (head_pruning) and efficiency accounting (efficiency)."""
