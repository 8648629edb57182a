"""fedsparse: federated on-device recommendation with sparse embedding tables."""

__version__ = "0.1.0"
