"""Task data: reading (local folder or hub), tokenisation with an on-disk cache, and batching."""
