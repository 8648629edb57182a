"""The fleet: which user each device is, its memory tier, and each tier's item-table density.

Plain Python/NumPy (no Flower), so a config is checked completely before any simulation starts.
Device ``i`` is the ``i``-th user (ascending id) with at least one training interaction.
Tiers are ordered by budget, smallest first; a tier's density is the largest whose measured
item-slice memory (values, index, Adam state) fits its budget minus the reserve every device
needs besides the slice (user row with Adam state, growth buffer of its touched rows); for
``nested_dims``, d_t / d with d_t the most leading dimensions of every item row that fit.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedsparse.config import ExperimentConfig
from fedsparse.data.dataset import InteractionData
from fedsparse.errors import ConfigError
from fedsparse.federated.methods import fleet_method
from fedsparse.seeding import numpy_rng_for
from fedsparse.sparse.budget import density_for_budget, prefix_width_for_budget
from fedsparse.train.device import ITEM_OPTIMIZERS, device_reserve_bytes, touched_rows_bound

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Tier:
    """One memory tier, resolved."""

    name: str
    budget_bytes: int
    density: float
    growth_topk: int
    steps_per_second: float
    item_optimizer: str
    item_lr: float

    def prefix_width(self, dim: int) -> int:
        """The leading dimensions of each item row the tier holds at this density
        (``nested_dims``)."""
        return round(self.density * dim)


@dataclass(frozen=True)
class FleetPlan:
    """Devices, their tiers and the tiers' densities.

    Attributes
    ----------
    users : np.ndarray
        (n_devices,) user id of each device.
    device_tier : np.ndarray
        (n_devices,) index into ``tiers`` of each device.
    tiers : tuple of Tier
        Smallest budget first.
    reserve_bytes : int
        Bytes of every budget that are not item slice.
    """

    users: np.ndarray
    device_tier: np.ndarray
    tiers: tuple[Tier, ...]
    reserve_bytes: int

    @property
    def n_devices(self) -> int:
        return len(self.users)


def resolve_devices_per_node(setting: int, n_devices: int, workers: int) -> int:
    """Devices each SuperNode simulates: ``setting`` (``fl.devices_per_node``), or for 0 (auto)
    the fleet spread evenly over ``workers`` (the client actors Flower runs at once; 1 in a
    deployment, where a SuperNode is one device)."""
    if setting > 0:
        return setting
    return max(1, -(-n_devices // max(1, workers)))


def supernode_count(n_devices: int, devices_per_node: int) -> int:
    """SuperNodes a fleet of ``n_devices`` needs at ``devices_per_node`` (the last may hold
    fewer)."""
    return -(-n_devices // devices_per_node)


def cohort_of(partition: int, devices_per_node: int, n_devices: int) -> range:
    """The devices SuperNode ``partition`` (its ``partition-id``) simulates.

    Raises
    ------
    ValueError
        ``partition`` holds no device of the fleet.
    """
    devices = range(partition * devices_per_node,
                    min(n_devices, (partition + 1) * devices_per_node))
    if partition < 0 or not devices:
        raise ValueError(f"partition-id {partition} holds no device: the fleet has {n_devices} "
                         f"devices, {devices_per_node} per SuperNode")
    return devices


def fleet_users(data: InteractionData, max_devices: int = 0, seed: int = 0) -> np.ndarray:
    """The fleet's users, ascending (device i is user ``[i]``): those with at least one
    training interaction, or a seeded sample of ``max_devices`` of them."""
    users = np.flatnonzero(np.diff(data.train.indptr) > 0)
    if 0 < max_devices < len(users):
        sample = numpy_rng_for(seed, 0, 0, "fleet-sample").choice(users, size=max_devices,
                                                                  replace=False)
        users = np.sort(sample)
    return users


def fleet_identity(cfg: ExperimentConfig) -> dict[str, int | str]:
    """What a device needs to find its user from its partition id (sent in every message)."""
    return {"dataset": cfg.data.name, "split": cfg.data.split, "max-items": cfg.data.max_items,
            "seed": cfg.seed, "max-devices": cfg.fl.max_devices}


def shares_to_tiers(n_devices: int, shares: list[float], seed: int) -> np.ndarray:
    """Tier index of each device: tier counts by largest remainder of ``share * n_devices``,
    devices dealt to tiers in a seeded random order."""
    quotas = np.asarray(shares) * n_devices
    counts = np.floor(quotas).astype(int)
    remainders = np.argsort(-(quotas - counts), kind="stable")
    counts[remainders[:n_devices - counts.sum()]] += 1
    tiers = np.repeat(np.arange(len(shares)), counts)
    return tiers[numpy_rng_for(seed, 0, 0, "tier-assignment").permutation(n_devices)]


def read_tier_file(path: Path, n_devices: int, names: list[str]) -> np.ndarray:
    """Tier index of each device from a CSV with columns ``device_id,tier``.

    Raises
    ------
    ConfigError
        Missing file or columns, an unknown tier, or devices missing or repeated.
    """
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"fl.tier_file: {path} not found") from None
    if list(table.columns) != ["device_id", "tier"]:
        raise ConfigError(f"fl.tier_file: {path}: columns must be device_id,tier")
    unknown = sorted(set(table["tier"].astype(str)) - set(names))
    if unknown:
        raise ConfigError(f"fl.tier_file: {path}: unknown tier {unknown[0]!r}")
    ids = table["device_id"].to_numpy()
    if len(ids) != n_devices or not np.array_equal(np.sort(ids), np.arange(n_devices)):
        raise ConfigError(f"fl.tier_file: {path}: needs each device id 0..{n_devices - 1} once")
    tiers = np.empty(n_devices, dtype=int)
    tiers[ids] = [names.index(str(name)) for name in table["tier"]]
    return tiers


#: The ``model.*``, ``sparse.*`` and ``train.*`` keys a fleet reads (its local training is set
#: by ``fl.*``).
FLEET_READS = {"model": ("name", "dim", "init_std"),
               "sparse": ("method", "initial_fraction", "end_fraction"), "train": ("topk",)}


def check_fleet_keys(cfg: ExperimentConfig) -> None:
    """A ``model.*``, ``sparse.*`` or ``train.*`` key set away from its default that a fleet
    ignores is an error naming it (a fleet trains with ``fl.*``).

    Raises
    ------
    ConfigError
        Naming the first such key.
    """
    for section, read in FLEET_READS.items():
        values = getattr(cfg, section)
        for option in dataclasses.fields(values):
            if option.name not in read and getattr(values, option.name) != option.default:
                reads = ", ".join(f"{section}.{key}" for key in read)
                raise ConfigError(f"{section}.{option.name}: a fleet ignores it (set fl.* keys; "
                                  f"a fleet reads only {reads} of [{section}])")


def plan_fleet(cfg: ExperimentConfig, data: InteractionData) -> FleetPlan:
    """Resolve ``cfg.fl`` against ``data``: devices, tiers, densities.

    Raises
    ------
    ConfigError
        One line naming the key: no tiers, an unsupported method or model, a tier file that
        does not fit, or a budget too small for one active entry per item row.
    """
    fl, dim = cfg.fl, cfg.model.dim
    if not fl.tiers:
        raise ConfigError("fl.tiers: a fleet needs at least one tier ([fl.tiers.<name>])")
    method = fleet_method(cfg.sparse.method)
    check_fleet_keys(cfg)
    if cfg.model.name != "mf":
        raise ConfigError(f"model.name: fleets train mf; got {cfg.model.name!r}")
    users = fleet_users(data, fl.max_devices, cfg.seed)
    if fl.clients_per_round > len(users):
        raise ConfigError(f"fl.clients_per_round: {fl.clients_per_round} is more than the "
                          f"{len(users)} devices")
    if fl.devices_per_node > len(users):
        raise ConfigError(f"fl.devices_per_node: {fl.devices_per_node} is more than the "
                          f"{len(users)} devices")
    ordered = sorted(fl.tiers.items(), key=lambda item: (item[1].budget_bytes, item[0]))
    names = [name for name, _ in ordered]
    if fl.tier_file:
        device_tier = read_tier_file(Path(fl.tier_file), len(users), names)
    else:
        device_tier = shares_to_tiers(len(users), [tier.share for _, tier in ordered], cfg.seed)
    most_positives = int(np.diff(data.train.indptr)[users].max())
    reserve = device_reserve_bytes(dim, touched_rows_bound(most_positives, fl.negatives,
                                                           data.n_items))
    tiers = []
    for name, tier in ordered:
        step = tier.item_optimizer or fl.item_optimizer
        item_optimizer = ITEM_OPTIMIZERS[step]                 # its state is slice memory too
        try:                                # every method: at least the sparsest model
            if method.initial_mask == "prefix":          # the widest dense prefix that fits
                density = prefix_width_for_budget(data.n_items, dim, tier.budget_bytes - reserve,
                                                  item_optimizer) / dim
            else:
                density = density_for_budget(data.n_items, dim, tier.budget_bytes - reserve,
                                             item_optimizer)
        except ConfigError as exc:
            raise ConfigError(f"fl.tiers.{name}.budget_bytes: too small for {cfg.sparse.method} "
                              f"({reserve} bytes go to the user row and growth buffer; "
                              f"{exc})") from None
        if not method.enforces_budget:
            density = 1.0
        tiers.append(Tier(name=name, budget_bytes=tier.budget_bytes, density=density,
                          growth_topk=fl.growth_topk if tier.growth_topk < 0 else tier.growth_topk,
                          steps_per_second=tier.steps_per_second, item_optimizer=step,
                          item_lr=tier.item_lr or fl.item_lr))
        logger.info("tier %s: budget %d bytes -> item density %.4f, %d devices", name,
                    tier.budget_bytes, density, int((device_tier == len(tiers) - 1).sum()))
    if method.initial_mask == "nmf" and fl.privacy.min_aggregate > len(users):
        raise ConfigError(f"fl.privacy.min_aggregate: {fl.privacy.min_aggregate} is more than "
                          f"the {len(users)} devices whose NMF statistics are summed")
    if fl.privacy.training == "secure_sum":
        for index, tier in enumerate(tiers):
            members = int((device_tier == index).sum())
            if 0 < members < fl.privacy.min_aggregate:
                raise ConfigError(f"fl.privacy.min_aggregate: {fl.privacy.min_aggregate} is more "
                                  f"than the {members} devices of tier {tier.name}, whose summed "
                                  f"updates the server could never open (secure_sum)")
    return FleetPlan(users=users, device_tier=device_tier, tiers=tuple(tiers),
                     reserve_bytes=reserve)
