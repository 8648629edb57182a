"""The Flower adapter: the only package that imports ``flwr`` (records, strategy, ClientApp,
ServerApp, fleet plan, simulation launcher). Import its modules directly; this package file
imports nothing, so ``fedsparse.federated.fleet`` stays usable without starting Flower."""
