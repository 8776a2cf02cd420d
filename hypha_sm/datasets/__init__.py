"""Datasets as slices: the manifest format, preparing slices from real data, and checking them."""
