import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import NMF

from fedsparse.seeding import generator_for
from fedsparse.sparse import mask_nnz, nmf_masks, nmf_scores, random_mask, top_fraction_mask

shapes = st.tuples(st.integers(1, 40), st.integers(1, 20), st.floats(0.01, 1.0))


def test_mask_nnz_rounds_and_keeps_one_per_row():
    assert mask_nnz(10, 8, 0.25) == 20
    assert mask_nnz(10, 8, 0.26) == 21             # 20.8 rounds up
    assert mask_nnz(10, 8, 0.01) == 10             # 0.8 -> at least one per row
    assert mask_nnz(10, 8, 1.0) == 80
    assert mask_nnz(7, 9, 37 / 63) == 37           # a density solved from an nnz gives it back
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            mask_nnz(10, 8, bad)


@settings(max_examples=80, deadline=None)
@given(shapes, st.integers(0, 2**20))
def test_random_mask_has_exact_nnz_and_every_row(shape, seed):
    n_rows, dim, density = shape
    mask = random_mask(n_rows, dim, density, generator_for(seed, 0, 0, "mask"))
    assert mask.dtype == np.bool_ and mask.shape == (n_rows, dim)
    assert mask.sum() == mask_nnz(n_rows, dim, density)
    assert mask.any(axis=1).all()
    again = random_mask(n_rows, dim, density, generator_for(seed, 0, 0, "mask"))
    np.testing.assert_array_equal(mask, again)


def test_random_mask_depends_on_seed_and_is_uniform():
    draws = np.stack([random_mask(5, 4, 0.5, generator_for(seed, 0, 0, "mask"))
                      for seed in range(3000)])                         # (3000, 5, 4)
    assert len({draw.tobytes() for draw in draws}) > 2500
    # One entry per row, then 5 of the other 15: every entry is active with probability 1/2.
    np.testing.assert_allclose(draws.mean(axis=0), 0.5, atol=0.04)


def test_top_fraction_mask_gives_each_row_its_best_then_the_global_top():
    scores = np.array([[9.0, 8.0, 7.0, 6.0],
                       [0.1, 0.3, 0.2, 0.0],     # weak row: keeps only its best entry
                       [5.0, 0.0, 4.0, 3.5]])
    mask = top_fraction_mask(scores, 6 / 12)
    expected = np.array([[1, 1, 1, 1],
                         [0, 1, 0, 0],
                         [1, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(mask, expected)


def test_top_fraction_mask_breaks_ties_by_position_or_by_key():
    scores = np.zeros((3, 4))
    mask = top_fraction_mask(scores, 5 / 12)
    expected = np.zeros((3, 4), dtype=bool)
    expected[:, 0] = True                        # each row's first entry
    expected[0, 1:3] = True                      # then the first two of the rest
    np.testing.assert_array_equal(mask, expected)
    tie_break = np.arange(12.0).reshape(3, 4)    # later entries win ties
    mask = top_fraction_mask(scores, 5 / 12, tie_break=tie_break)
    expected = np.zeros((3, 4), dtype=bool)
    expected[:, 3] = True
    expected[2, 1:3] = True
    np.testing.assert_array_equal(mask, expected)
    scores[1, 1] = 1.0                           # a higher score beats any tie-break key
    expected[1] = [False, True, False, False]
    np.testing.assert_array_equal(top_fraction_mask(scores, 5 / 12, tie_break=tie_break),
                                  expected)


@settings(max_examples=80, deadline=None)
@given(shapes, st.integers(0, 2**20), st.booleans())
def test_top_fraction_mask_keeps_the_top(shape, seed, integer_scores):
    n_rows, dim, density = shape
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, (n_rows, dim)) if integer_scores else rng.random((n_rows, dim))
    scores = scores.astype(np.float64)
    mask = top_fraction_mask(scores, density)
    assert mask.sum() == mask_nnz(n_rows, dim, density)
    assert mask.any(axis=1).all()
    kept = np.where(mask, scores, -np.inf)
    np.testing.assert_array_equal(kept.max(axis=1), scores.max(axis=1))   # each row's best
    # Entries beyond a row's first were chosen globally: none scores below a dropped entry.
    chosen = mask & (mask.sum(axis=1, keepdims=True) >= 2)
    if chosen.any() and (~mask).any():
        assert scores[chosen].min() >= scores[~mask].max()
    np.testing.assert_array_equal(mask, top_fraction_mask(scores.copy(), density))


def test_top_fraction_mask_rejects_bad_scores():
    for bad in (np.array([[1.0, -1.0]]), np.array([[np.nan, 1.0]]), np.ones(3)):
        with pytest.raises(ValueError):
            top_fraction_mask(bad, 0.5)
    with pytest.raises(ValueError):
        top_fraction_mask(np.ones((2, 2)), 0.5, tie_break=np.ones((2, 3)))


def heavy_tailed_matrix(seed: int, n_users: int = 150, n_items: int = 120) -> sp.csr_matrix:
    """Binary interactions whose probability grows with user activity and item popularity
    (both rising with the id), inside four taste groups."""
    rng = np.random.default_rng(seed)
    activity = np.linspace(0.05, 1.0, n_users) ** 2
    popularity = np.linspace(0.05, 1.0, n_items) ** 2
    same_group = rng.integers(4, size=(n_users, 1)) == rng.integers(4, size=(1, n_items))
    p = 0.8 * np.outer(activity, popularity) * np.where(same_group, 2.0, 0.5)
    return sp.csr_matrix((rng.random(p.shape) < p).astype(np.float32))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_nmf_scores_are_balanced_and_keep_the_product():
    train = heavy_tailed_matrix(0)
    users, items = nmf_scores(train, 8, iterations=30, seed=4)
    assert users.shape == (150, 8) and items.shape == (120, 8)
    assert users.dtype == items.dtype == np.float32
    assert (users >= 0).all() and (items >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(users, axis=0), np.linalg.norm(items, axis=0),
                               rtol=1e-4)
    model = NMF(n_components=8, solver="cd", init="nndsvd", max_iter=30, random_state=4)
    w = model.fit_transform(sp.csr_matrix(train, dtype=np.float32))
    np.testing.assert_allclose(users @ items.T, w @ model.components_, atol=1e-4)
    again = nmf_scores(train, 8, iterations=30, seed=4)
    np.testing.assert_array_equal(users, again[0])
    np.testing.assert_array_equal(items, again[1])


def test_nmf_scores_with_rank_above_the_matrix_size():
    train = heavy_tailed_matrix(1, n_users=6, n_items=40)
    users, items = nmf_scores(train, 16, iterations=10, seed=0)    # 16 > 6: random init
    assert users.shape == (6, 16) and items.shape == (40, 16)
    assert np.isfinite(users).all() and np.isfinite(items).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmf_masks_have_exact_nnz_and_favour_heavy_rows(seed):
    train = heavy_tailed_matrix(seed)
    user_mask, item_mask = nmf_masks(train, 8, 0.25, 0.2, seed=seed)
    assert user_mask.shape == (150, 8) and item_mask.shape == (120, 8)
    assert user_mask.sum() == mask_nnz(150, 8, 0.25) and item_mask.sum() == mask_nnz(120, 8, 0.2)
    assert user_mask.any(axis=1).all() and item_mask.any(axis=1).all()
    for mask, degree in ((user_mask, train.sum(axis=1)), (item_mask, train.sum(axis=0))):
        by_degree = np.argsort(np.asarray(degree).ravel(), kind="stable")
        quarter = len(by_degree) // 4
        light = mask[by_degree[:quarter]].sum(axis=1).mean()
        heavy = mask[by_degree[-quarter:]].sum(axis=1).mean()
        assert heavy > 2 * light, (light, heavy)
    again = nmf_masks(train, 8, 0.25, 0.2, seed=seed)
    np.testing.assert_array_equal(user_mask, again[0])
    np.testing.assert_array_equal(item_mask, again[1])


def test_nmf_mask_ties_at_zero_do_not_favour_early_rows():
    train = heavy_tailed_matrix(3)
    users, _ = nmf_scores(train, 8, iterations=20, seed=3)
    zero = users == 0
    assert zero.mean() > 0.3                      # enough ties for the check to mean something
    user_mask, _ = nmf_masks(train, 8, 0.8, 0.5, seed=3)
    assert user_mask[~zero].all()                 # every positive score is kept first
    # Position order would fill the zero-score entries of the first rows and none of the last.
    half = len(users) // 2
    shares = [(user_mask & zero)[rows].sum() / zero[rows].sum()
              for rows in (slice(None, half), slice(half, None))]
    assert 0.2 < shares[0] < 0.9 and abs(shares[0] - shares[1]) < 0.15, shares
