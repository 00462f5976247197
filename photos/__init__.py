"""Photos: the content-addressed image store, decoding and model preprocessing (one function for the
catalog and for queries), and the one DataLoader builder. Used by crawlers, tasks and serving."""
