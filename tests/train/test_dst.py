"""Dynamic sparse training around the centralized trainer (fedsparse.train.dst)."""

import json

import numpy as np
import pytest
import torch

from fedsparse.config import SPARSE_METHODS, load_config
from fedsparse.errors import ConfigError
from fedsparse.models import MF
from fedsparse.models.base import bpr_loss, l2_penalty
from fedsparse.report.results import reevaluate_run, write_run
from fedsparse.seeding import generator_for
from fedsparse.sparse import SparseEmbeddingTable, mask_nnz, table_bytes
from fedsparse.sparse.budget import mixed_bytes
from fedsparse.sparse.mixed import MixedDimEmbeddingTable
from fedsparse.train import train_centralized
from fedsparse.train.dst import DynamicSparsity
from fedsparse.train.sampling import NegativeSampler

BASE = ["train.epochs=3", "train.batch_size=256", "train.lr=0.01", "model.dim=8",
        "sparse.density=0.25", "sparse.update_interval=2", "sparse.sample_rows=16",
        "sparse.nmf_iterations=5"]
DYNAMIC = {"set", "rigl", "sparserec", "sparserec_no_nmf", "sparserec_no_accumulation",
           "sparserec_no_sampling"}


def train(data, *overrides):
    cfg = load_config(None, [*BASE, *overrides])
    return cfg, train_centralized(cfg, data, progress=False)


@pytest.mark.parametrize("model", ["mf", "lightgcn"])
@pytest.mark.parametrize("method", SPARSE_METHODS)
def test_every_method_trains_at_constant_target_density(small_data, method, model):
    cfg, result = train(small_data, f"sparse.method={method}", f"model.name={model}")
    tables = (result.model.user_table, result.model.item_table)
    if method == "dense":
        assert result.history["density"].eq(1.0).all() and result.metrics["mask_updates"] == 0
        return
    if method == "mixed_dim":                # density: of each dense table's bytes
        assert all(isinstance(table, MixedDimEmbeddingTable) for table in tables)
        assert all(0.15 < table.density <= 0.25 for table in tables)
        assert result.metrics["mask_updates"] == 0
        return
    assert all(isinstance(table, SparseEmbeddingTable) for table in tables)
    for table in tables:
        assert table.nnz == mask_nnz(table.n_rows, 8, 0.25)
        assert int(table.mask().sum()) == table.nnz
    target = sum(table.nnz for table in tables) / sum(table.n_rows * 8 for table in tables)
    densities = result.history["density"].to_numpy()
    if method in ("magnitude", "pep"):    # dense for the first half of the 18 steps, pruned
        assert densities[0] == 1.0 and densities[-1] == target
        assert result.metrics["mask_updates"] == 1
    else:
        assert (densities == target).all()
    assert result.metrics["density"] == target
    assert np.isfinite(result.history["loss"]).all()
    # 18 steps (6 per epoch), updates every 2 steps up to step round(0.75 * 18) = 14.
    expected_updates = 7 if method in DYNAMIC else int(method in ("magnitude", "pep"))
    assert result.metrics["mask_updates"] == expected_updates


@pytest.mark.parametrize("method", ["static", "set", "rigl", "sparserec"])
def test_dynamic_methods_move_the_mask_and_static_does_not(small_data, method):
    cfg, result = train(small_data, f"sparse.method={method}")
    sparsity = DynamicSparsity(cfg.sparse, small_data, dim=8, seed=cfg.seed, total_steps=18,
                               sampled_backward=False)
    initial_user, initial_item = sparsity.initial_masks()
    moved = (int((result.model.user_table.mask().numpy() != initial_user).sum())
             + int((result.model.item_table.mask().numpy() != initial_item).sum()))
    assert (moved > 0) == (method != "static")


def test_sampled_backward_changes_nothing_for_mf(small_data):
    """MF's gradient touches only the batch's rows, so sparserec_no_sampling is sparserec there
    (the sparsity sweep runs it on LightGCN only); on LightGCN the two differ."""
    _, sampled = train(small_data, "sparse.method=sparserec")
    _, full = train(small_data, "sparse.method=sparserec_no_sampling")
    for name in ("user_table", "item_table"):
        torch.testing.assert_close(getattr(sampled.model, name).to_dense(),
                                   getattr(full.model, name).to_dense(), rtol=0, atol=0)
    _, sampled = train(small_data, "sparse.method=sparserec", "model.name=lightgcn")
    _, full = train(small_data, "sparse.method=sparserec_no_sampling", "model.name=lightgcn")
    assert not torch.equal(sampled.model.item_table.to_dense(), full.model.item_table.to_dense())


def test_evaluating_more_often_does_not_change_the_final_model(small_data):
    """The sweep may evaluate only after the last epoch: its results equal every-epoch runs'."""
    _, often = train(small_data, "sparse.method=sparserec", "train.eval_every=1")
    _, once = train(small_data, "sparse.method=sparserec", "train.eval_every=3")
    assert often.history["recall@20"].notna().sum() == 3
    assert once.history["recall@20"].notna().sum() == 1
    timing = {"seconds_per_epoch"}
    assert ({k: v for k, v in often.metrics.items() if k not in timing}
            == {k: v for k, v in once.metrics.items() if k not in timing})


@pytest.mark.parametrize("method", ["set", "magnitude"])
def test_budget_gives_a_model_within_it(small_data, method):
    dense_train_bytes = 3 * 4 * (small_data.n_users + small_data.n_items) * 8
    budget = dense_train_bytes // 4
    _, result = train(small_data, f"sparse.method={method}", f"sparse.budget_bytes={budget}")
    assert result.metrics["train_bytes"] <= budget
    assert result.metrics["train_bytes"] > 0.9 * budget          # the budget is used
    assert result.metrics["model_bytes"] < result.metrics["train_bytes"]
    assert result.metrics["dense_bytes"] == 4 * (small_data.n_users + small_data.n_items) * 8


def test_dense_with_a_budget_trains_the_widest_dimension_that_fits(small_data):
    budget = 3 * 4 * (small_data.n_users + small_data.n_items) * 8 // 3     # a third of d = 8
    _, result = train(small_data, "sparse.method=dense", f"sparse.budget_bytes={budget}")
    assert result.metrics["dim"] == 2 and result.metrics["density"] == 1.0
    assert result.metrics["train_bytes"] <= budget
    assert result.metrics["train_bytes"] * 3 // 2 > budget          # d = 3 would not fit
    assert result.model.user_table.values.shape == (small_data.n_users, 2)


def test_pep_prunes_to_the_budget_and_retrains_the_kept_entries_from_their_initial_values(
        small_data):
    budget = 3 * 4 * (small_data.n_users + small_data.n_items) * 8 // 4
    cfg, result = train(small_data, "sparse.method=pep", f"sparse.budget_bytes={budget}",
                        "sparse.dense_fraction=0.99")           # pruned at the last step
    assert result.metrics["train_bytes"] <= budget < result.metrics["peak_train_bytes"]
    assert result.metrics["peak_train_bytes"] >= 3 * 4 * (small_data.n_users
                                                           + small_data.n_items) * 8
    initial = MF(small_data.n_users, small_data.n_items, 8, init_std=cfg.model.init_std,
                 generator=generator_for(cfg.seed, 0, 0, "init"))
    for name in ("user", "item"):
        table = getattr(result.model, f"{name}_table")
        assert isinstance(table, SparseEmbeddingTable)
        kept = table.mask()
        start = getattr(initial, f"{name}_table").to_dense().detach()
        assert torch.equal(table.to_dense().detach()[kept], start[kept])
    _, thresholds_first = train(small_data, "sparse.method=pep", f"sparse.budget_bytes={budget}",
                                "sparse.pep_threshold_init=0")    # sigmoid(0) zeroes all
    assert thresholds_first.metrics["mask_updates"] == 1
    assert thresholds_first.history["density"].iloc[0] < 1.0     # pruned in the first epoch


def test_mixed_dim_trains_within_its_budget_with_popular_rows_wider(small_data):
    budget = 3 * 4 * (small_data.n_users + small_data.n_items) * 8 // 3
    _, result = train(small_data, "sparse.method=mixed_dim", f"sparse.budget_bytes={budget}",
                      "sparse.mixed_blocks=4", "sparse.mixed_temperature=0.5")
    assert budget * 0.8 < result.metrics["train_bytes"] <= budget
    for table in (result.model.user_table, result.model.item_table):
        assert isinstance(table, MixedDimEmbeddingTable)
        assert (np.diff(table.block_dims) <= 0).all() and table.block_dims[0] > 1
    assert result.metrics["recall@20"] > 0


@pytest.mark.parametrize("method, smallest", [
    ("static", lambda data: table_bytes(data.n_users, 8, data.n_users)
     * (data.n_users + data.n_items) // data.n_users),
    ("dense", lambda data: 3 * 4 * (data.n_users + data.n_items) + 8),
    ("mixed_dim", lambda data: max(
        mixed_bytes(np.ones(rows), 8, np.ones(8, np.int64)) * (data.n_users + data.n_items)
        // rows for rows in (data.n_users, data.n_items)))])
def test_too_small_budget_names_the_method_and_the_smallest_budget_that_works(
        small_data, method, smallest):
    with pytest.raises(ConfigError, match="sparse.budget_bytes: ") as info:
        train(small_data, f"sparse.method={method}", "sparse.budget_bytes=1000")
    message = str(info.value)
    assert "\n" not in message and method in message
    works = int(message.split("smallest budget that works is ")[1].split()[0])
    assert abs(works - smallest(small_data)) <= 2
    _, result = train(small_data, f"sparse.method={method}", f"sparse.budget_bytes={works}")
    assert result.metrics["train_bytes"] <= works
    with pytest.raises(ConfigError):
        train(small_data, f"sparse.method={method}", f"sparse.budget_bytes={works - 1}")


def test_results_hold_the_real_masks_and_reevaluate(small_data, tmp_path, monkeypatch):
    cfg, result = train(small_data, "sparse.method=sparserec", "model.name=lightgcn")
    assert not result.model.item_table._forward_hooks      # training removed its hooks
    metrics = write_run(tmp_path, cfg, small_data, result)
    with np.load(tmp_path / "model.npz") as npz:
        for name, table in (("user", result.model.user_table), ("item", result.model.item_table)):
            mask = table.mask().numpy()
            assert np.array_equal(npz[f"{name}_mask"], mask) and not mask.all()
            assert (npz[name][~mask] == 0).all()
        assert "user_final" in npz
    assert metrics["density"] == result.metrics["density"] < 0.3
    assert metrics["model_bytes"] == sum(t.memory_bytes() for t in (result.model.user_table,
                                                                     result.model.item_table))
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["method"] == "sparserec" and stored["train_bytes"] > stored["model_bytes"]
    monkeypatch.setattr("fedsparse.report.results.load_dataset", lambda *_: small_data)
    again = reevaluate_run(tmp_path)
    assert again["recall@20"] == pytest.approx(metrics["recall@20"], abs=1e-6)


@pytest.mark.parametrize("method", ["sparserec_no_sampling", "rigl"])
def test_growth_scores_are_the_sum_or_last_of_inactive_gradients(small_data, method):
    """Controller vs an independent dense-gradient computation, over 5 MF steps."""
    cfg = load_config(None, [f"sparse.method={method}", "sparse.density=0.3", "model.dim=8",
                             "sparse.update_interval=1000", "train.l2=0.01"])
    sparsity = DynamicSparsity(cfg.sparse, small_data, dim=8, seed=0, total_steps=100,
                               sampled_backward=False)
    model = MF(small_data.n_users, small_data.n_items, 8, l2=0.01,
               generator=torch.Generator().manual_seed(0), masks=sparsity.initial_masks())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    sparsity.attach(model, optimizer)
    sampler = NegativeSampler(small_data.train)
    user_mask, item_mask = model.user_table.mask(), model.item_table.mask()
    expected = {"user": torch.zeros(user_mask.shape), "item": torch.zeros(item_mask.shape)}
    for step in range(1, 6):
        users = torch.randint(small_data.n_users, (64,), generator=generator_for(0, step, 0, "u"))
        pos = torch.tensor([small_data.train[u].indices[0] for u in users.tolist()])
        neg = sampler.sample(users, 2, generator_for(0, step, 0, "n"))
        # Independent: the dense gradient of the same loss with respect to the dense views.
        user_view = model.user_table.to_dense().detach().requires_grad_()
        item_view = model.item_table.to_dense().detach().requires_grad_()
        u, p, n = user_view[users], item_view[pos], item_view[neg]
        (bpr_loss(u, p, n) + 0.01 * l2_penalty(u, p, n)).backward()
        for name, view, mask in (("user", user_view, user_mask), ("item", item_view, item_mask)):
            step_scores = view.grad.abs() * ~mask
            expected[name] = step_scores if method == "rigl" else expected[name] + step_scores
        loss = model.loss(users, pos, neg)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sparsity.after_step(step)
    for name in ("user", "item"):
        scores = sparsity.grow_scores(name, 5)
        if method == "rigl":      # the last batch's |grad| covers active entries too
            scores = scores * ~(user_mask if name == "user" else item_mask)
        assert expected[name].gt(0).sum() > 50
        torch.testing.assert_close(scores, expected[name], rtol=1e-5, atol=1e-8)


def test_mask_update_resets_the_accumulator_and_zeroes_grown_values(small_data, monkeypatch):
    cfg = load_config(None, ["sparse.method=sparserec_no_sampling", "sparse.density=0.3",
                             "model.dim=8", "sparse.update_interval=3",
                             "sparse.initial_fraction=0.5"])
    sparsity = DynamicSparsity(cfg.sparse, small_data, dim=8, seed=0, total_steps=100,
                               sampled_backward=False)
    model = MF(small_data.n_users, small_data.n_items, 8,
               generator=torch.Generator().manual_seed(0), masks=sparsity.initial_masks())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    sparsity.attach(model, optimizer)
    users, pos = torch.arange(60), torch.tensor([small_data.train[u].indices[0] for u in range(60)])
    neg = torch.arange(60).reshape(60, 1) % small_data.n_items
    used = {}
    grow_scores = sparsity.grow_scores

    def spy(name, step):
        used[name] = grow_scores(name, step)
        return used[name]

    monkeypatch.setattr(sparsity, "grow_scores", spy)
    before = model.item_table.mask()
    for step in range(1, 4):
        optimizer.zero_grad()
        model.loss(users, pos, neg).backward()
        optimizer.step()
        sparsity.after_step(step)
    after = model.item_table.mask()
    grown = after & ~before
    assert sparsity.updates == 1 and grown.any() and after.sum() == before.sum()
    assert (model.item_table.to_dense()[grown] == 0).all()
    assert (optimizer.state[model.item_table.values]["exp_avg"][
        grown[model.item_table.active_coordinates()]] == 0).all()
    # Grown entries are the best-scoring inactive ones.
    assert used["item"][grown].min() >= used["item"][~before & ~after].max()
    assert sparsity.grow_scores("item", 4).eq(0).all()


@pytest.mark.parametrize(("schedule", "expected"), [("constant", [0.3, 0.3, 0.3, 0.0]),
                                                    ("cosine", [0.3, 0.225, 0.0, 0.0])])
def test_update_fraction_follows_the_schedule(small_data, schedule, expected):
    cfg = load_config(None, [*BASE, "sparse.method=set", f"sparse.schedule={schedule}"])
    sparsity = DynamicSparsity(cfg.sparse, small_data, dim=8, seed=0, total_steps=100,
                               sampled_backward=False)
    assert sparsity.end_step == 75
    got = [sparsity.update_fraction(step) for step in (0, 25, 75, 90)]
    assert got == pytest.approx(expected)
