"""The engine-neutral federated algorithm (no Flower, no Ray; DESIGN section 2)."""
