import math

import numpy as np
import pytest
import scipy.sparse as sp

from fedsparse.metrics import evaluate_embeddings, ndcg_at_k, recall_at_k
from fedsparse.metrics.ranking import hits_in

# Four users, five items; scores are the rows below (items get one-hot embeddings).
SCORES = np.array([
    [0.9, 0.8, 0.7, 0.1, 0.0],   # train {0}, test {1, 3}
    [0.1, 0.2, 0.3, 0.4, 0.5],   # train {},  test {0}: no hits
    [0.3, 0.2, 0.1, 0.0, 0.9],   # no test items: skipped
    [0.5, 0.1, 0.4, 0.3, 0.2],   # train {0, 2}, test {1, 3, 4}: more test items than K=2
], dtype=np.float32)
TRAIN = {0: [0], 3: [0, 2]}
TEST = {0: [1, 3], 1: [0], 3: [1, 3, 4]}


def as_csr(rows: dict[int, list[int]]) -> sp.csr_matrix:
    r = [u for u, items in rows.items() for _ in items]
    c = [i for items in rows.values() for i in items]
    return sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(4, 5))


def test_hand_computed_values():
    log3 = math.log2(3)
    got = evaluate_embeddings(SCORES, np.eye(5, dtype=np.float32), as_csr(TRAIN), as_csr(TEST),
                              ks=(2, 3), batch_size=2)
    # K=2: user0 ranks [1, 2] (1 hit of 2), user1 none, user3 ranks [3, 4] (2 hits of 3).
    assert got["recall@2"] == pytest.approx((1 / 2 + 0 + 2 / 3) / 3)
    assert got["ndcg@2"] == pytest.approx((1 / (1 + 1 / log3) + 0 + 1) / 3)
    # K=3: user0 ranks [1, 2, 3]: DCG 1 + 1/2, IDCG over min(2, 3) = 2 items.
    assert got["recall@3"] == pytest.approx((1 + 0 + 1) / 3)
    assert got["ndcg@3"] == pytest.approx(((1 + 0.5) / (1 + 1 / log3) + 0 + 1) / 3)


def test_batch_size_does_not_change_result():
    train, test = as_csr(TRAIN), as_csr(TEST)
    whole = evaluate_embeddings(SCORES, np.eye(5), train, test, ks=(2,), batch_size=100)
    one_by_one = evaluate_embeddings(SCORES, np.eye(5), train, test, ks=(2,), batch_size=1)
    assert whole == pytest.approx(one_by_one)


def test_per_user_functions():
    hits = np.array([[True, False, True], [False, False, False], [True, True, True]])
    n_relevant = np.array([2, 1, 5])
    np.testing.assert_allclose(recall_at_k(hits, n_relevant), [1.0, 0.0, 3 / 5])
    idcg_2 = 1 + 1 / math.log2(3)
    np.testing.assert_allclose(ndcg_at_k(hits, n_relevant), [1.5 / idcg_2, 0.0, 1.0])


def test_training_positives_are_never_recommended():
    # Without masking, user 0 would rank item 0 first and miss a hit at K=1.
    scores = np.array([[1.0, 0.5, 0.1]], dtype=np.float32)
    train = sp.csr_matrix(np.array([[1, 0, 0]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 1, 0]], dtype=np.float32))
    got = evaluate_embeddings(scores, np.eye(3), train, test, ks=(1,))
    assert got == {"recall@1": 1.0, "ndcg@1": 1.0}


def test_matches_a_dense_reference_on_random_data():
    # The brute-force protocol on dense arrays: mask the training positives, rank, look up.
    rng = np.random.default_rng(0)
    n_users, n_items, k = 40, 30, 5
    users, items = rng.normal(size=(n_users, 4)), rng.normal(size=(n_items, 4))
    train = sp.csr_matrix((rng.random((n_users, n_items)) < 0.2).astype(np.float32))
    test_dense = (rng.random((n_users, n_items)) < 0.15) & (train.toarray() == 0)
    test = sp.csr_matrix(test_dense.astype(np.float32))
    scores = users @ items.T
    scores[train.toarray() > 0] = -np.inf
    recalls, ndcgs = [], []
    for u in np.flatnonzero(test_dense.any(axis=1)):
        hits = test_dense[u, np.argsort(-scores[u], kind="stable")[:k]][None, :]
        n_relevant = np.array([test_dense[u].sum()])
        recalls.append(recall_at_k(hits, n_relevant)[0])
        ndcgs.append(ndcg_at_k(hits, n_relevant)[0])
    got = evaluate_embeddings(users, items, train, test, ks=(k,), batch_size=7)
    assert got[f"recall@{k}"] == pytest.approx(np.mean(recalls))
    assert got[f"ndcg@{k}"] == pytest.approx(np.mean(ndcgs))


def test_hits_ignore_stored_zeros_and_other_rows():
    relevant = sp.csr_matrix((np.array([1.0, 0.0, 1.0]), np.array([2, 0, 1]), np.array([0, 2, 3])),
                             shape=(2, 4))                  # row 0: item 2, stored zero at 0
    top = np.array([[0, 2, 1], [2, 1, 3]])
    np.testing.assert_array_equal(hits_in(top, relevant),
                                  [[False, True, False], [False, True, False]])
