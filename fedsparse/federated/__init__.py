"""The engine-neutral federated algorithm (no Flower, no Ray; DESIGN section 2): the fleet
plan and tiers (``fleet``), what each method means (``methods``), faults, the wire protocol
(``protocol``), the device half (``devices``, with the vectorised ``cohort`` trainer), the
server half (``server``), the round loop (``rounds``), checkpoints, secure summation
(``secure_sum``) and what goes through it: federated NMF (``nmf``) and training updates
(``secure_training``)."""
