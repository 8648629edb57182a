import pytest

from fedsparse.data import synthetic_dataset


@pytest.fixture(scope="session")
def small_data():
    """A seeded synthetic dataset with learnable taste groups (120 users, 150 items)."""
    return synthetic_dataset(n_users=120, n_items=150, per_user=16, test_per_user=4, seed=3)
