import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fedsparse.models import MF, LightGCN
from fedsparse.models.base import bpr_loss, l2_penalty
from fedsparse.models.lightgcn import normalized_adjacency


def tiny_graph() -> sp.csr_matrix:
    return sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 0]], dtype=np.float32))


def test_bpr_loss_matches_formula():
    u = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[2.0, 0.0]])
    n = torch.tensor([[[0.5, 0.0], [3.0, 1.0]]])
    expected = (np.log1p(np.exp(0.5 - 2.0)) + np.log1p(np.exp(3.0 - 2.0))) / 2
    assert bpr_loss(u, p, n).item() == pytest.approx(expected, rel=1e-6)
    assert l2_penalty(u, p, n).item() == pytest.approx(0.5 * (1 + 4 + (0.25 + 10) / 2))


def test_normalized_adjacency_is_symmetric_degree_normalised():
    adjacency = normalized_adjacency(tiny_graph()).to_dense().numpy()
    # Nodes: users 0, 1, then items 2, 3, 4. Degrees: u0=2, u1=1, i0=1, i1=2, i2=0.
    expected = np.zeros((5, 5), dtype=np.float32)
    for u, i, du, di in [(0, 2, 2, 1), (0, 3, 2, 2), (1, 3, 1, 2)]:
        expected[u, i] = expected[i, u] = 1 / np.sqrt(du * di)
    np.testing.assert_allclose(adjacency, expected, rtol=1e-6)


def test_lightgcn_propagation_is_layer_mean():
    model = LightGCN(tiny_graph(), 4, layers=2, generator=torch.Generator().manual_seed(0))
    dense = model.graph.to_dense()
    e0 = torch.cat(list(model.tables().values())).detach()
    expected = (e0 + dense @ e0 + dense @ dense @ e0) / 3
    users, items = model.propagate()
    torch.testing.assert_close(torch.cat([users, items]).detach(), expected)


@pytest.mark.parametrize("make", [
    lambda data, g: MF(data.n_users, data.n_items, 8, generator=g),
    lambda data, g: LightGCN(data.train, 8, generator=g),
])
def test_protocol_shapes_and_a_step_lowers_the_loss(small_data, make):
    model = make(small_data, torch.Generator().manual_seed(0))
    users = torch.arange(10)
    assert model.score_all(users).shape == (10, small_data.n_items)
    assert set(model.tables()) == {"user", "item"}
    user_final, item_final = model.final_embeddings()
    assert user_final.shape == (small_data.n_users, 8) and item_final.shape == (small_data.n_items, 8)
    torch.testing.assert_close(model.score_all(users), user_final[users] @ item_final.T)
    pos = torch.arange(10)
    neg = torch.arange(10, 40).reshape(10, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = model.loss(users, pos, neg)
    for _ in range(5):
        optimizer.zero_grad()
        model.loss(users, pos, neg).backward()
        optimizer.step()
    assert model.loss(users, pos, neg).item() < before.item()


def test_same_generator_same_initialisation(small_data):
    a = MF(small_data.n_users, small_data.n_items, 8, generator=torch.Generator().manual_seed(5))
    b = MF(small_data.n_users, small_data.n_items, 8, generator=torch.Generator().manual_seed(5))
    for name in ("user", "item"):
        torch.testing.assert_close(a.tables()[name], b.tables()[name])
