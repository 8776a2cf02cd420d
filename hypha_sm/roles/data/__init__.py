"""The data-node role: serves verified datasets as slices to the workers schedulers granted them to."""
