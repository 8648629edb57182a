import pytest

from fedsparse.config import SparseConfig, dump_config, load_config
from fedsparse.errors import ConfigError


def test_sparse_defaults_are_dense_and_round_trip(tmp_path):
    cfg = load_config(None)
    assert cfg.sparse == SparseConfig() and cfg.sparse.method == "dense"
    changed = load_config(None, ["sparse.method=sparserec", "sparse.density=0.2",
                                 "sparse.budget_bytes=100000", "sparse.dense_fraction=0.4"])
    dump_config(changed, tmp_path / "c.toml")
    assert load_config(tmp_path / "c.toml") == changed


@pytest.mark.parametrize(("override", "message"), [
    ("sparse.desnity=0.1", "sparse.desnity: unknown key"),
    ("sparse.method=lottery", "sparse.method: must be one of dense, static"),
    ("sparse.density=0", r"sparse.density: must be > 0.0"),
    ("sparse.density=1.5", r"sparse.density: must be <= 1.0"),
    ("sparse.budget_bytes=-1", r"sparse.budget_bytes: must be >= 0"),
    ("sparse.budget_bytes=1.5", "sparse.budget_bytes: expected an integer"),
    ("sparse.update_interval=0", r"sparse.update_interval: must be >= 1"),
    ("sparse.initial_fraction=1.2", r"sparse.initial_fraction: must be <= 1.0"),
    ("sparse.end_fraction=0", r"sparse.end_fraction: must be > 0.0"),
    ("sparse.nmf_iterations=0", r"sparse.nmf_iterations: must be >= 1"),
    ("sparse.sample_rows=-3", r"sparse.sample_rows: must be >= 0"),
    ("sparse.dense_fraction=1", r"sparse.dense_fraction: must be < 1.0"),
    ("sparse.dense_fraction=0", r"sparse.dense_fraction: must be > 0.0"),
])
def test_bad_sparse_keys_name_the_key_in_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)
