"""The Flower glue, the only package that imports ``flwr``: records <-> the engine-neutral
protocol (:mod:`fedsparse.federated`), the strategy around its server half, the ClientApp
around its device half, the round trips of secure summation (``secure_rounds``), the ServerApp
entry, the simulation and deployment launchers. Import
its modules directly; this package file imports nothing."""
