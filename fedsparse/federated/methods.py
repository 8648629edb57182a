"""What each ``sparse.method`` means in a fleet: the one table the federated code consults."""

from __future__ import annotations

from dataclasses import dataclass

from fedsparse.errors import ConfigError


@dataclass(frozen=True)
class FleetMethod:
    """The semantics of one fleet method.

    Attributes
    ----------
    description : str
        One line for users.
    initial_mask : str
        ``"full"`` (every entry: the dense table), ``"nmf"`` (federated NMF scores),
        ``"random"``, or ``"prefix"`` (each tier the first d_t columns of every row, d_t the
        widest that fits its budget: nested dimensions).
    grows : bool
        Whether the server prunes and regrows the masks every ``fl.mask_interval`` rounds
        (devices then send growth scores).
    accumulates : bool
        Whether growth scores are summed over the rounds since the last mask update (else only
        the last round's count).
    """

    description: str
    initial_mask: str
    grows: bool
    accumulates: bool

    @property
    def enforces_budget(self) -> bool:
        """Whether a device's tier budget bounds what it holds (every sparse method)."""
        return self.initial_mask != "full"


FLEET_METHODS = {
    "sparserec": FleetMethod("federated NMF masks, growth by gradients accumulated over rounds",
                             "nmf", grows=True, accumulates=True),
    "sparserec_no_nmf": FleetMethod("random-init federated DST: random masks, accumulated growth",
                                    "random", grows=True, accumulates=True),
    "sparserec_no_accumulation": FleetMethod("federated NMF masks, growth by the last round's "
                                             "gradients", "nmf", grows=True, accumulates=False),
    "static": FleetMethod("fixed random tier masks", "random", grows=False, accumulates=False),
    "dense": FleetMethod("dense FedAvg: every device holds the full item table", "full",
                         grows=False, accumulates=False),
    "nested_dims": FleetMethod("nested dimensions: each tier trains the first d_t dimensions of "
                               "one dense item table", "prefix", grows=False, accumulates=False),
}


def fleet_method(name: str) -> FleetMethod:
    """The semantics of ``sparse.method`` ``name`` in a fleet.

    Raises
    ------
    ConfigError
        ``name`` is not a fleet method.
    """
    if name not in FLEET_METHODS:
        raise ConfigError(f"sparse.method: a fleet runs one of {', '.join(FLEET_METHODS)}; got "
                          f"{name!r}")
    return FLEET_METHODS[name]
