import pytest

from fedsparse.config import load_config
from fedsparse.data import synthetic_dataset, write_dataset


@pytest.fixture(scope="session")
def small_data():
    """A seeded synthetic dataset with learnable taste groups (120 users, 150 items)."""
    return synthetic_dataset(n_users=120, n_items=150, per_user=16, test_per_user=4, seed=3)


@pytest.fixture(scope="session")
def fleet_data():
    """A small fleet: 24 users (devices), 40 items."""
    return synthetic_dataset(n_users=24, n_items=40, per_user=10, test_per_user=3, seed=1)


@pytest.fixture(scope="session")
def fleet_data_dir(tmp_path_factory, fleet_data):
    return write_dataset(fleet_data, tmp_path_factory.mktemp("fleet") / "data")


FLEET = ["sparse.method=sparserec", "model.dim=8", "fl.rounds=2", "fl.nmf_rounds=2",
         "fl.privacy.min_aggregate=4", "fl.privacy.mask_neighbours=4",
         "fl.mask_interval=1",
         "fl.local_epochs=2", "fl.batch_size=4", "fl.negatives=2", "fl.growth_topk=2",
         "fl.tiers.small.budget_bytes=3000", "fl.tiers.small.share=0.5",
         "fl.tiers.large.budget_bytes=5000", "fl.tiers.large.share=0.5", "fl.num_cpus=2"]


@pytest.fixture()
def fleet_config(fleet_data_dir):
    def make(*overrides):
        return load_config(None, [f"data.name={fleet_data_dir}", *FLEET, *overrides])
    return make
