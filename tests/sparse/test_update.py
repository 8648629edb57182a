import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsparse.seeding import generator_for
from fedsparse.sparse import (GradientAccumulator, SparseEmbeddingTable, apply_update,
                              constant_update_fraction, cosine_update_fraction, gradient_scores,
                              is_update_step, magnitude_scores, random_scores, update_count,
                              update_mask)


def test_cosine_fraction_at_start_middle_end_and_after():
    schedule = {"initial_fraction": 0.3, "end_step": 100}
    assert cosine_update_fraction(0, **schedule) == pytest.approx(0.3)
    assert cosine_update_fraction(50, **schedule) == pytest.approx(0.15)
    assert cosine_update_fraction(25, **schedule) == pytest.approx(0.15 * (1 + math.sqrt(0.5)))
    assert cosine_update_fraction(100, **schedule) == pytest.approx(0.0, abs=1e-12)
    assert cosine_update_fraction(101, **schedule) == 0.0
    assert cosine_update_fraction(10_000, **schedule) == 0.0
    values = [cosine_update_fraction(step, **schedule) for step in range(101)]
    assert all(later <= earlier for earlier, later in zip(values, values[1:]))


def test_constant_fraction_and_bad_arguments():
    assert constant_update_fraction(0, initial_fraction=0.2, end_step=10) == 0.2
    assert constant_update_fraction(10, initial_fraction=0.2, end_step=10) == 0.2
    assert constant_update_fraction(11, initial_fraction=0.2, end_step=10) == 0.0
    for schedule in (cosine_update_fraction, constant_update_fraction):
        for step, fraction, end in ((-1, 0.2, 10), (0, 1.5, 10), (0, 0.2, 0)):
            with pytest.raises(ValueError):
                schedule(step, initial_fraction=fraction, end_step=end)


def test_is_update_step():
    updates = [step for step in range(40) if is_update_step(step, 5, 22)]
    assert updates == [5, 10, 15, 20]
    assert is_update_step(20, 5, 20) and not is_update_step(25, 5, 20)
    assert [step for step in range(4) if is_update_step(step, 1, 10)] == [1, 2, 3]
    for bad in ((-1, 5, 10), (3, 0, 10)):
        with pytest.raises(ValueError):
            is_update_step(*bad)


def test_update_count():
    assert update_count(100, 0.3) == 30
    assert update_count(7, 0.5) == 4            # round(3.5): to even
    assert update_count(10, 0.0) == 0
    with pytest.raises(ValueError):
        update_count(10, 1.2)


def test_scorers():
    weights = torch.tensor([[-3.0, 0.5], [0.0, 2.0]], requires_grad=True)
    torch.testing.assert_close(magnitude_scores(weights), torch.tensor([[3.0, 0.5], [0.0, 2.0]]))
    assert not magnitude_scores(weights).requires_grad
    grad = torch.tensor([[1.0, -4.0], [-0.25, 0.0]], dtype=torch.float64)
    scores = gradient_scores(grad)
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores, torch.tensor([[1.0, 4.0], [0.25, 0.0]]))
    first = random_scores((6, 5), generator_for(1, 0, 0, "grow"))
    assert first.shape == (6, 5) and ((first >= 0) & (first < 1)).all()
    torch.testing.assert_close(first, random_scores((6, 5), generator_for(1, 0, 0, "grow")))
    assert not torch.equal(first, random_scores((6, 5), generator_for(2, 0, 0, "grow")))


def test_accumulator_sums_inactive_gradients_and_resets():
    generator = torch.Generator().manual_seed(0)
    accumulator = GradientAccumulator(7, 5)
    expected = torch.zeros(7, 5)
    mask = torch.rand(7, 5, generator=generator) < 0.4
    mask[:, 0] = True
    for _ in range(6):
        grad = torch.randn(7, 5, generator=generator)
        accumulator.add_rows(torch.arange(7), grad)
        expected += grad.abs() * ~mask
    scores = accumulator.scores(mask)
    torch.testing.assert_close(scores, expected)
    assert (scores[:, 0] == 0).all() and (scores[:, 1:] > 0).any()
    scores.fill_(99.0)                                   # a copy: the sums are untouched
    torch.testing.assert_close(accumulator.scores(mask), expected)
    accumulator.reset()
    assert (accumulator.scores(mask) == 0).all()
    accumulator.add_rows(torch.arange(7), torch.ones(7, 5))
    assert accumulator.scores(mask).sum() == (~mask).sum()
    with pytest.raises(ValueError):
        accumulator.add_rows(torch.arange(7), torch.ones(5, 7))


def test_update_mask_by_hand():
    mask = torch.tensor([[1, 1, 0, 0],
                         [1, 0, 0, 0],
                         [1, 1, 1, 0]], dtype=torch.bool)
    drop = torch.tensor([[0.5, 0.1, 0.0, 0.0],
                         [0.0, 0.0, 0.0, 0.0],       # row 1's only entry: never dropped
                         [0.2, 0.3, 0.9, 0.0]])
    grow = torch.tensor([[0.0, 9.0, 0.7, 0.1],       # (0, 1) is dropped: cannot come back
                         [0.0, 0.2, 0.8, 0.1],
                         [9.0, 9.0, 9.0, 0.6]])
    update = update_mask(mask, drop, grow, 2)
    assert update.dropped.tolist() == [1, 8]         # (0, 1) 0.1 and (2, 0) 0.2
    assert update.grown.tolist() == [2, 6]           # (1, 2) 0.8 and (0, 2) 0.7
    expected = torch.tensor([[1, 0, 1, 0],
                             [1, 0, 1, 0],
                             [0, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(update.new_mask, expected)
    assert torch.equal(mask.sum(), update.new_mask.sum())


def test_update_mask_ties_and_shortfall():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    zeros = torch.zeros(2, 3)
    update = update_mask(mask, zeros, zeros, 10)
    # Row 0 may lose two of three (it keeps its last in order), row 1 none; 2 inactive entries.
    assert update.dropped.tolist() == [0, 1] and update.grown.tolist() == [4, 5]
    assert torch.equal(update.new_mask, torch.tensor([[0, 0, 1], [1, 1, 1]], dtype=torch.bool))
    full = torch.ones(2, 3, dtype=torch.bool)
    update = update_mask(full, zeros, zeros, 3)
    assert update.dropped.numel() == 0 and torch.equal(update.new_mask, full)
    update = update_mask(mask, zeros, zeros, 0)
    assert update.grown.numel() == 0 and torch.equal(update.new_mask, mask)


def test_update_mask_rejects_bad_input():
    mask = torch.ones(2, 3, dtype=torch.bool)
    scores = torch.zeros(2, 3)
    with pytest.raises(ValueError):
        update_mask(mask.float(), scores, scores, 1)
    with pytest.raises(ValueError):
        update_mask(mask, torch.zeros(3, 2), scores, 1)
    with pytest.raises(ValueError):
        update_mask(mask, scores, torch.full((2, 3), float("nan")), 1)
    with pytest.raises(ValueError):
        update_mask(mask, scores, scores, -1)


def random_case(n_rows: int, dim: int, density: float, seed: int, tied: bool):
    """A random mask (some rows may be empty) and drop/grow scores, optionally with many ties."""
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_rows, dim, generator=generator) < density
    if tied:
        drop = torch.randint(0, 3, (n_rows, dim), generator=generator).float()
        grow = torch.randint(0, 3, (n_rows, dim), generator=generator).float()
    else:
        drop = torch.randn(n_rows, dim, generator=generator)
        grow = torch.rand(n_rows, dim, generator=generator)
    return mask, drop, grow


case = st.tuples(st.integers(1, 30), st.integers(1, 16), st.floats(0.0, 1.0),
                 st.integers(0, 2**31 - 1), st.booleans(), st.integers(0, 500))


@settings(max_examples=300, deadline=None)
@given(case)
def test_update_mask_invariants(params):
    n_rows, dim, density, seed, tied, n_update = params
    mask, drop, grow = random_case(n_rows, dim, density, seed, tied)
    update = update_mask(mask, drop, grow, n_update)
    new, old = update.new_mask, mask
    dropped, grown = update.dropped, update.grown
    assert new.dtype == torch.bool and new.shape == old.shape
    assert new.sum() == old.sum()
    assert dropped.numel() == grown.numel()
    assert not set(dropped.tolist()) & set(grown.tolist())
    assert old.reshape(-1)[dropped].all() and not old.reshape(-1)[grown].any()
    flipped = (old ^ new).reshape(-1).nonzero().squeeze(1)
    assert flipped.tolist() == sorted(dropped.tolist() + grown.tolist())
    assert (new.sum(1) >= 1)[old.sum(1) >= 1].all()           # no row loses its last entry
    droppable = int(old.sum() - (old.sum(1) >= 1).sum())
    assert dropped.numel() == min(n_update, droppable, int((~old).sum()))
    if grown.numel() and grown.numel() < (~old).sum():        # grown: the strongest inactive
        left = (~old & ~new).reshape(-1)
        assert grow.reshape(-1)[grown].min() >= grow.reshape(-1)[left].max()
    if dropped.numel():                                       # dropped: the weakest allowed
        kept = old & new
        weaker = kept & (drop < drop.reshape(-1)[dropped].max())
        assert (kept.sum(1) == 1)[weaker.any(1)].all()        # only a row's last one is spared
    again = update_mask(mask.clone(), drop.clone(), grow.clone(), n_update)
    assert torch.equal(again.dropped, dropped) and torch.equal(again.grown, grown)


def dense_state(table: SparseEmbeddingTable, state: torch.Tensor) -> torch.Tensor:
    """(nnz,) per-value state laid out as (n_rows, dim), zero at inactive entries."""
    out = torch.zeros(table.n_rows, table.dim)
    out[table.active_coordinates()] = state
    return out


OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=0.01),
    "amsgrad": lambda params: torch.optim.Adam(params, lr=0.01, amsgrad=True),
    "sgd-momentum": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
}


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 25), st.integers(1, 12), st.floats(0.1, 0.9), st.integers(0, 2**31 - 1),
       st.sampled_from(sorted(OPTIMIZERS)), st.floats(0.0, 1.0))
def test_apply_update_moves_values_and_optimizer_state(n_rows, dim, density, seed, name,
                                                       fraction):
    generator = generator_for(seed, 0, 0, "test")
    mask = torch.rand(n_rows, dim, generator=generator) < density
    mask[torch.arange(n_rows), torch.randint(dim, (n_rows,), generator=generator)] = True
    table = SparseEmbeddingTable.from_dense(torch.randn(n_rows, dim, generator=generator), mask)
    optimizer = OPTIMIZERS[name]([table.values])
    for _ in range(3):
        optimizer.zero_grad()
        (table.to_dense() ** 2 * torch.randn(n_rows, dim, generator=generator)).sum().backward()
        optimizer.step()
    before_values = table.to_dense().detach()
    state = optimizer.state[table.values]
    before_state = {key: dense_state(table, value) if value.ndim else value.clone()
                    for key, value in state.items()}
    n_update = update_count(table.nnz, fraction)
    update = update_mask(mask, magnitude_scores(before_values),
                         random_scores((n_rows, dim), generator), n_update)
    previous = apply_update(table, update, optimizer)

    new = update.new_mask
    assert torch.equal(table.mask(), new) and table.nnz == int(mask.sum())
    assert int((previous < 0).sum()) == update.grown.numel()
    after_values = table.to_dense().detach()
    grown = new & ~mask
    kept = new & mask
    assert (after_values[grown] == 0).all()
    torch.testing.assert_close(after_values[kept], before_values[kept], rtol=0, atol=0)
    assert set(state) == set(before_state)
    for key, value in state.items():
        if value.ndim == 0:
            assert torch.equal(value, before_state[key])          # Adam's step is kept
            continue
        assert value.shape == (table.nnz,)
        after = dense_state(table, value)
        assert (after[grown] == 0).all(), key
        torch.testing.assert_close(after[kept], before_state[key][kept], rtol=0, atol=0)
    optimizer.zero_grad()
    table.to_dense().sum().backward()
    optimizer.step()                                              # state fits the new values
    assert torch.isfinite(table.values).all()


def test_apply_update_without_optimizer_and_with_a_stale_update():
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]], dtype=torch.bool)
    table = SparseEmbeddingTable.from_dense(torch.arange(1.0, 7.0).reshape(2, 3), mask)
    update = update_mask(mask, magnitude_scores(table.to_dense().detach()),
                         torch.tensor([[0.0, 0.0, 5.0], [0.0, 0.0, 0.0]]), 1)
    assert update.dropped.tolist() == [0] and update.grown.tolist() == [2]
    previous = apply_update(table, update)
    assert previous.tolist() == [1, -1, 2]
    torch.testing.assert_close(table.to_dense().detach(),
                               torch.tensor([[0.0, 2.0, 0.0], [0.0, 5.0, 0.0]]))
    with pytest.raises(ValueError):
        apply_update(table, update)                   # the mask has moved on


def test_apply_update_rejects_foreign_optimizer_state():
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    table = SparseEmbeddingTable.from_mask(mask)
    optimizer = torch.optim.Adam([table.values])
    optimizer.state[table.values]["exp_avg"] = torch.zeros(3)
    update = update_mask(mask, torch.zeros(2, 3), torch.ones(2, 3), 1)
    with pytest.raises(ValueError):
        apply_update(table, update, optimizer)
