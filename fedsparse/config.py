"""Experiment configuration: TOML -> frozen, validated dataclasses.

Every key has a type and (where it matters) an allowed range or set of choices, declared next
to its default. Unknown keys, wrong types and out-of-range values raise :class:`ConfigError`
with one line that names the key.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import tomli_w

from fedsparse.errors import ConfigError


def _option(default: Any, *, low: float | None = None, high: float | None = None,
            open_low: bool = False, open_high: bool = False,
            choices: tuple[str, ...] | None = None, doc: str = "") -> Any:
    """A dataclass field with validation metadata (inclusive ``low``/``high`` unless
    ``open_low``/``open_high``)."""
    return field(default=default, metadata={"low": low, "high": high, "open_low": open_low,
                                            "open_high": open_high, "choices": choices,
                                            "doc": doc})


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which interactions to train on and how to evaluate."""

    name: str = _option("lastfm", doc="bundled dataset name (lastfm, gowalla) or a directory path")
    split: str = _option("test", choices=("test", "val"),
                         doc="test: train on train, evaluate on test; val: train on train minus "
                             "val, evaluate on val (for tuning; without a validation file, a "
                             "fixed seeded 10% of each user's training interactions)")
    max_items: int = _option(0, low=0, doc="keep only this many items, those with the most "
                                           "training interactions, renumbered in ascending id "
                                           "(0: all items)")


#: Precisions of ``model.value_dtype``, widest first (``fedsparse.sparse.precision`` codes them).
VALUE_DTYPES = ("float32", "float16", "int8", "int4", "int2")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The recommender and its embedding tables."""

    name: str = _option("mf", choices=("mf", "lightgcn"))
    dim: int = _option(64, low=1, high=4096, doc="embedding dimension")
    layers: int = _option(3, low=1, high=8, doc="LightGCN propagation layers")
    init_std: float = _option(0.1, low=0.0, open_low=True, doc="std of the normal initialisation")
    value_dtype: str = _option("float32", choices=VALUE_DTYPES,
                               doc="precision of the stored model's values, applied after "
                                   "training: float32, float16, or int8 / int4 / int2 codes "
                                   "with one float16 scale per row (metrics.json has every "
                                   "precision's scores and bytes)")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation of the BPR objective."""

    epochs: int = _option(20, low=1)
    batch_size: int = _option(2048, low=1)
    lr: float = _option(1e-3, low=0.0, open_low=True)
    lr_schedule: str = _option("constant", choices=("constant", "cosine"))
    l2: float = _option(1e-4, low=0.0, doc="L2 weight on the batch's embeddings (LightGCN style)")
    negatives: int = _option(1, low=1, high=1024, doc="negatives sampled per positive")
    eval_every: int = _option(1, low=1, doc="evaluate every this many epochs (and at the end)")
    eval_batch_size: int = _option(1024, low=1, doc="users scored at once during evaluation")
    topk: int = _option(20, low=1, doc="K of Recall@K and NDCG@K")
    threads: int = _option(0, low=0, doc="torch CPU threads; 0 keeps torch's default")


#: Methods of ``sparse.method`` (DESIGN section 3; ``fedsparse.train.dst`` implements them).
SPARSE_METHODS = ("dense", "static", "set", "rigl", "magnitude", "sparserec", "sparserec_no_nmf",
                  "sparserec_no_accumulation", "sparserec_no_sampling", "mixed_dim", "pep")
#: Methods of ``sparse.method`` only a fleet runs (``fedsparse.federated.methods``).
FLEET_ONLY_METHODS = ("nested_dims",)
#: The server's steps on a fleet's aggregated deltas (``fl.server_optimizer``).
SERVER_OPTIMIZERS = ("sgd", "adam")
#: The devices' steps on their item slice (``fl.item_optimizer``).
ITEM_OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True, kw_only=True)
class SparseConfig:
    """Sparse embedding tables and the dynamic sparse training method that trains them."""

    method: str = _option("dense", choices=SPARSE_METHODS + FLEET_ONLY_METHODS,
                          doc="dense: ordinary tables; static: fixed random mask; set: random "
                              "init, drop smallest |w|, grow random; rigl: random init, grow by "
                              "the last batch's |grad|; magnitude: train dense, prune by |w| "
                              "after dense_fraction of the steps, fine-tune; sparserec: NMF "
                              "init, grow by accumulated |grad|, sampled backward (LightGCN); "
                              "sparserec_no_{nmf,accumulation,sampling}: one idea switched "
                              "off; mixed_dim: dense blocks of rows by popularity, block "
                              "dimensions from a power law, projected to model.dim (Ginart et "
                              "al. 2019); pep: learnable per-row soft thresholds, pruned to "
                              "the budget, kept entries retrained from their initial values "
                              "(Liu et al. 2021); nested_dims (fleets only): each tier trains the first d_t "
                              "dimensions of one dense item table")
    density: float = _option(0.1, low=0.0, open_low=True, high=1.0,
                             doc="fraction of each table's entries kept (not used by dense; "
                                 "mixed_dim: of each dense table's bytes with Adam state)")
    budget_bytes: int = _option(0, low=0,
                                doc="> 0 overrides density: bytes of both tables' values, index "
                                    "and Adam state, split in proportion to the table sizes "
                                    "(magnitude: of the pruned model; its dense phase is "
                                    "larger); for dense, the largest model.dim up to the "
                                    "configured one whose tables fit")
    update_interval: int = _option(100, low=1, doc="optimizer steps between mask updates (dT)")
    initial_fraction: float = _option(0.3, low=0.0, high=1.0,
                                      doc="fraction of active entries moved by the first update "
                                          "(zeta_0, cosine decay)")
    schedule: str = _option("cosine", choices=("cosine", "constant"),
                            doc="how the moved fraction changes over updates: RigL's cosine "
                                "decay from initial_fraction to 0, or constant")
    end_fraction: float = _option(0.75, low=0.0, open_low=True, high=1.0,
                                  doc="mask updates stop after this fraction of the steps")
    nmf_iterations: int = _option(20, low=1, doc="NMF iterations of the mask initialisation")
    sample_rows: int = _option(1024, low=0,
                               doc="rows sampled by importance per step, beyond the batch's, "
                                   "for the sampled backward (LightGCN)")
    mixed_blocks: int = _option(8, low=1, doc="mixed_dim: row blocks of each table, by "
                                              "training frequency")
    mixed_temperature: float = _option(0.3, low=0.0, high=1.0,
                                       doc="mixed_dim: alpha of the block dimensions "
                                           "d_b ~ popularity_b^alpha (0: all alike)")
    pep_threshold_init: float = _option(-5.0, doc="pep: initial s of every row's threshold "
                                                  "sigmoid(s)")
    dense_fraction: float = _option(0.5, low=0.0, open_low=True, high=1.0, open_high=True,
                                    doc="magnitude, pep: the most of the steps trained dense "
                                        "(pep prunes earlier once its thresholds have zeroed "
                                        "enough entries)")



@dataclass(frozen=True, kw_only=True)
class TierConfig:
    """One memory tier of a device fleet (``[fl.tiers.<name>]``)."""

    budget_bytes: int = _option(1, low=1, doc="memory a device of this tier may hold: item "
                                              "slice (values, index, Adam state), user row and "
                                              "training buffers")
    share: float = _option(0.0, low=0.0, high=1.0,
                           doc="fraction of the devices in this tier (ignored with fl.tier_file)")
    growth_topk: int = _option(-1, low=-1, doc="growth scores a device of this tier sends per "
                                               "touched row (-1: fl.growth_topk)")
    steps_per_second: float = _option(100.0, low=0.0, open_low=True,
                                      doc="simulated compute speed: local steps per second on "
                                          "the round clock (stragglers, fl.deadline_seconds)")
    item_optimizer: str = _option("", choices=("", *ITEM_OPTIMIZERS),
                                  doc="this tier's step on its item slice (\"\": "
                                      "fl.item_optimizer); its budget holds that step's state")
    item_lr: float = _option(0.0, low=0.0,
                             doc="this tier's SGD learning rate on its item slice (0: "
                                 "fl.item_lr)")


@dataclass(frozen=True, kw_only=True)
class PrivacyConfig:
    """What the server may learn (``[fl.privacy]``): secure summation of the federated NMF
    statistics and, with ``training = "secure_sum"``, of the training updates
    (:mod:`fedsparse.federated.secure_sum`)."""

    training: str = _option("secure_sum", choices=("secure_sum", "plain"),
                            doc="training replies: secure_sum (the server sees each tier's sum "
                                "only) or plain (each device's touched rows and values)")

    min_aggregate: int = _option(100, low=2, doc="fewest devices a sum the server opens may "
                                                 "cover (federated NMF)")
    mask_neighbours: int = _option(4, low=2, doc="mask peers per device (at most) in the "
                                                 "secure sum's graph, the union of "
                                                 "mask_neighbours / 2 random rings (even); a "
                                                 "device is exposed only if they all collude "
                                                 "with the server")
    fraction_bits: int = _option(40, low=16, high=48,
                                 doc="fixed-point fraction bits of the secure sum (mod 2^64): "
                                     "sums must stay below 2^(62 - bits)")

    pseudo_items: float = _option(0.0, low=0.0, high=64.0,
                                  doc="plain training only: rows a device did not train on that "
                                      "it reports with a positive's change, per positive row")
    export_user_rows: bool = _option(False, doc="under flwr run and deployments, devices send "
                                                "their user rows in the final evaluation, for "
                                                "model.npz (a simulation reads them from the "
                                                "simulated devices' state files instead)")

    def __post_init__(self) -> None:
        if self.mask_neighbours % 2:
            raise ConfigError(f"fl.privacy.mask_neighbours: must be even; got "
                              f"{self.mask_neighbours}")
        if self.pseudo_items > 0 and self.training != "plain":
            raise ConfigError("fl.privacy.pseudo_items: needs fl.privacy.training = \"plain\" "
                              "(secure replies name no rows)")


@dataclass(frozen=True, kw_only=True)
class FleetConfig:
    """A simulated device fleet (``fedsparse simulate``): tiers, rounds, device-local training."""

    rounds: int = _option(10, low=1, doc="federated rounds")
    max_devices: int = _option(0, low=0, doc="devices in the fleet: a seeded sample of this many "
                                             "users with training data (0: all of them)")
    clients_per_round: int = _option(0, low=0, doc="devices sampled per round (0: all)")
    local_epochs: int = _option(1, low=1,
                                doc="passes over its interactions a device makes per round")
    batch_size: int = _option(8, low=1, doc="positives per local step")
    lr: float = _option(0.05, low=0.0, open_low=True, doc="device Adam learning rate")
    lr_schedule: str = _option("constant", choices=("constant", "cosine"),
                               doc="the devices' learning rate over the rounds: fl.lr in every "
                                   "round, or cosine decay from fl.lr in round 1 towards 0 "
                                   "after the last (torch's CosineAnnealingLR over rounds); "
                                   "fl.item_lr follows it too")
    item_optimizer: str = _option("adam", choices=ITEM_OPTIMIZERS,
                                  doc="the devices' step on their item slice: Adam at fl.lr, "
                                      "its moments fresh each round, or plain SGD at "
                                      "fl.item_lr, which holds no state (more entries fit a "
                                      "budget); the user row steps by Adam either way")
    item_lr: float = _option(1.0, low=0.0, open_low=True,
                             doc="the item slice's SGD learning rate (fl.item_optimizer = "
                                 "\"sgd\")")
    l2: float = _option(1e-4, low=0.0, doc="L2 weight on the batch's embeddings")
    negatives: int = _option(4, low=1, high=1024,
                             doc="negatives per positive, drawn once per round")
    server_lr: float = _option(10.0, low=0.0, open_low=True,
                               doc="step of the server on the aggregated per-entry delta")
    server_optimizer: str = _option("sgd", choices=SERVER_OPTIMIZERS,
                                    doc="the server's step on each entry's mean delta: "
                                        "fl.server_lr times it (sgd), or per-entry Adam with "
                                        "the mean delta as its gradient (FedAdam: moments of "
                                        "the deltas, no bias correction, only the entries "
                                        "some device updated move)")
    server_eps: float = _option(1e-3, low=0.0, open_low=True,
                                doc="the server Adam's epsilon (its tau), added to the root "
                                    "of the second moment")
    mask_interval: int = _option(2, low=1, doc="rounds between server mask updates (dR)")
    growth_topk: int = _option(2, low=0, doc="growth scores a device sends per touched row")
    nmf_rounds: int = _option(5, low=1,
                              doc="federated NMF iterations (one query round trip each)")
    nmf_devices: int = _option(0, low=0, doc="devices sampled for each federated NMF "
                                             "iteration, a fresh seeded sample each time "
                                             "(0: all)")
    eval_every: int = _option(0, low=0, doc="evaluate every this many rounds (0: at the end only)")
    refit_steps: int = _option(0, low=0,
                               doc="before it ranks, a device refits a copy of its user row to "
                                   "its training interactions against its tier's slice (the "
                                   "slice frozen): this many full-batch Adam steps, fresh "
                                   "negatives each (0: it ranks with the row as trained; "
                                   "model.npz holds the rows as trained either way)")
    refit_lr: float = _option(0.01, low=0.0, open_low=True,
                              doc="learning rate of those steps (fl.refit_steps)")
    tier_file: str = _option("", doc="CSV with columns device_id,tier; empty: assign by share")
    num_cpus: int = _option(0, low=0, doc="CPUs of the Ray backend (0: all of this machine); "
                                          "with fl.ray_address, the cluster's CPUs, over which "
                                          "auto cohorts are spread")
    client_cpus: float = _option(1.0, low=0.0, open_low=True, doc="CPUs per client actor")
    devices_per_node: int = _option(0, low=0,
                                    doc="devices one SuperNode simulates, trained together (0: "
                                        "auto, the fleet spread over the client actors in a "
                                        "simulation and one per SuperNode in a deployment)")
    ray_address: str = _option("", doc="join this running Ray cluster (host:port of its GCS) "
                                       "instead of starting one (simulation only)")
    crash_prob: float = _option(0.0, low=0.0, high=1.0, open_high=True,
                                doc="probability a sampled device crashes during a round")
    offline_prob: float = _option(0.0, low=0.0, high=1.0, open_high=True,
                                  doc="probability an online device goes offline at a round start")
    offline_rounds: int = _option(3, low=1, doc="rounds an offline spell lasts")
    deadline_seconds: float = _option(0.0, low=0.0,
                                      doc="round deadline on the simulated clock: later replies "
                                          "are not counted (0: none)")
    speed_jitter: float = _option(0.0, low=0.0,
                                  doc="sigma of the log-normal factor on a device's round time")
    min_success: float = _option(0.2, low=0.0, high=1.0,
                                 doc="fraction of the sampled devices whose update must be "
                                     "accepted, or the round is skipped")
    max_skipped_rounds: int = _option(3, low=1,
                                      doc="the run stops after this many skipped rounds in a row")
    reference_config: str = _option("", doc="a centralized config (fedsparse train) trained "
                                            "after the run on the fleet's data, split and seed, "
                                            "into <out>/reference/, for the summary's "
                                            "comparison (empty: none)")
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    tiers: dict[str, TierConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.tiers:
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ConfigError(f"fl.tiers.{name}: tier names are letters, digits, - and _")
        if self.tiers and not self.tier_file:
            total = sum(tier.share for tier in self.tiers.values())
            if abs(total - 1.0) > 1e-6:
                raise ConfigError(f"fl.tiers: shares must sum to 1, got {total:g}")


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """A whole experiment: seed, data, model, training and sparsity."""

    name: str = _option("run", doc="run name, used in the default results directory")
    seed: int = _option(0, low=0)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    fl: FleetConfig = field(default_factory=FleetConfig)


def _type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[kind]


def _check_value(key: str, kind: type, value: Any, meta: dict[str, Any]) -> Any:
    """Return ``value`` converted to ``kind`` or raise a one-line :class:`ConfigError`."""
    is_bool = isinstance(value, bool)
    if kind is float and isinstance(value, int) and not is_bool:
        value = float(value)
    if not isinstance(value, kind) or (is_bool and kind is not bool):
        raise ConfigError(f"{key}: expected {_type_name(kind)}, got {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{key}: must be one of {', '.join(meta['choices'])}; got {value!r}")
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta.get("open_low") else value < low):
        bound = f"> {low}" if meta.get("open_low") else f">= {low}"
        raise ConfigError(f"{key}: must be {bound}; got {value!r}")
    if high is not None and (value >= high if meta.get("open_high") else value > high):
        bound = f"< {high}" if meta.get("open_high") else f"<= {high}"
        raise ConfigError(f"{key}: must be {bound}; got {value!r}")
    return value


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """Build dataclass ``cls`` from a nested dict, validating every key."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for name, fld in fields.items():
        kind, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, _table(key, raw.get(name, {})), f"{key}.")
        elif get_origin(kind) is dict:
            entry_kind = get_args(kind)[1]
            values[name] = {entry: _build(entry_kind, _table(f"{key}.{entry}", section),
                                          f"{key}.{entry}.")
                            for entry, section in _table(key, raw.get(name, {})).items()}
        elif name in raw:
            values[name] = _check_value(key, kind, raw[name], dict(fld.metadata))
    return cls(**values)


def _table(key: str, section: Any) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise ConfigError(f"{key}: expected a table, got {section!r}")
    return section


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """Parse ``key.sub=value`` (value as a TOML literal, else a bare string)."""
    key, sep, text = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``key=value`` override set (sections created as needed)."""
    merged = _deep_copy(raw)
    for assignment in overrides:
        path, value = parse_override(assignment)
        node = merged
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {assignment!r}: {part} is not a table")
            node = child
        node[path[-1]] = value
    return merged


def _deep_copy(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in raw.items()}


#: ``sparse.method`` of a fleet whose config names none: the project's own method (the
#: centralized default stays ``dense``).
DEFAULT_FLEET_METHOD = "sparserec"


def load_config(path: str | Path | None, overrides: list[str] | None = None, *,
                fleet: bool = False) -> ExperimentConfig:
    """Read a TOML config (or the defaults when ``path`` is None) and apply ``--set`` overrides.

    With ``fleet`` (a federated run), a config that names no ``sparse.method`` gets
    :data:`DEFAULT_FLEET_METHOD`.

    Raises
    ------
    ConfigError
        One line naming the file or key at fault.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        merged = apply_overrides(raw, overrides or [])
        if fleet and "method" not in merged.get("sparse", {}):
            merged.setdefault("sparse", {})["method"] = DEFAULT_FLEET_METHOD
        return _build(ExperimentConfig, merged, "")
    except ConfigError as exc:
        source = f"{path}: " if path is not None else ""
        raise ConfigError(f"{source}{exc}") from None


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The fully resolved config as a nested dict."""
    return dataclasses.asdict(cfg)


def config_toml(cfg: ExperimentConfig) -> str:
    """The fully resolved config as TOML text (loadable again by :func:`load_config`)."""
    return tomli_w.dumps(config_to_dict(cfg))


def dump_config(cfg: ExperimentConfig, path: Path) -> None:
    """Write the fully resolved config as TOML (loadable again by :func:`load_config`)."""
    path.write_text(config_toml(cfg))
