"""WTA-CRS: winner-take-all column-row sampling of the activations linear layers save for backward (method), its
row sampling (sampling), norm cache (cache), sampled linear ops (ops) and sampled attention products (attention)."""
