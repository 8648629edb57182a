import numpy as np
import torch

from fedsparse.config import load_config
from fedsparse.seeding import generator_for
from fedsparse.train import train_centralized
from fedsparse.train.sampling import NegativeSampler


def test_negative_sampler_avoids_positives_and_is_seeded(small_data):
    sampler = NegativeSampler(small_data.train)
    users = torch.arange(small_data.n_users).repeat(5)
    negatives = sampler.sample(users, 6, generator_for(0, 1, 0, "negatives"))
    assert negatives.shape == (len(users), 6)
    dense = small_data.train.toarray() > 0
    assert not dense[users.unsqueeze(1).expand(-1, 6).numpy(), negatives.numpy()].any()
    again = sampler.sample(users, 6, generator_for(0, 1, 0, "negatives"))
    assert torch.equal(negatives, again)


def test_generator_for_separates_purposes_and_rounds():
    draw = lambda *key: torch.rand(4, generator=generator_for(*key))  # noqa: E731
    assert torch.equal(draw(1, 2, 3, "a"), draw(1, 2, 3, "a"))
    assert not torch.equal(draw(1, 2, 3, "a"), draw(1, 2, 3, "b"))
    assert not torch.equal(draw(1, 2, 3, "a"), draw(1, 3, 3, "a"))
    assert not torch.equal(draw(1, 2, 3, "a"), draw(1, 2, 4, "a"))


def run(small_data, *overrides):
    cfg = load_config(None, ["train.epochs=20", "train.batch_size=256", "train.lr=0.01",
                             "model.dim=16", *overrides])
    return train_centralized(cfg, small_data, progress=False)


def test_training_learns_the_taste_groups(small_data):
    result = run(small_data)
    history = result.history
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    # Random ranking would give about K / n_items = 20 / 150 recall; taste groups give more.
    assert result.metrics["recall@20"] > 2 * 20 / 150
    assert len(history) == 20 and history["recall@20"].notna().all()


def test_same_seed_same_result_and_other_seed_differs(small_data):
    a, b = run(small_data, "seed=4"), run(small_data, "seed=4")
    c = run(small_data, "seed=5")
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    assert a.metrics["recall@20"] == b.metrics["recall@20"]
    assert not np.array_equal(a.history["loss"], c.history["loss"])


def test_lightgcn_trains_with_several_negatives_and_cosine_schedule(small_data):
    result = run(small_data, "model.name=lightgcn", "train.negatives=4",
                 "train.lr_schedule=cosine", "train.eval_every=10")
    assert result.metrics["recall@20"] > 2 * 20 / 150
    assert result.history["lr"].iloc[-1] < result.history["lr"].iloc[0]
    assert result.history["recall@20"].notna().sum() == 2
