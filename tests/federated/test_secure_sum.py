"""Secure summation (pairwise masks) and federated NMF under it."""

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from scipy import stats

from fedsparse.data import synthetic_dataset
from fedsparse.federated.faults import FaultModel
from fedsparse.federated.nmf import (MaskedStep, contribution_size, masked_nmf_sum,
                                     nmf_contribution, nmf_row_steps, nmf_server_step,
                                     plan_unmasking, reveal_secrets)
from fedsparse.federated.secure_sum import (KEYSTREAM_BLOCK, KeyPair, add_masks,
                                            dangling_masks, decode_fixed, encode_fixed,
                                            encode_fixed_sparse, mask_contribution,
                                            mask_for_peers, mask_graph, masked_cohort_sum,
                                            pair_secret, peers_outside, summed_components)
from fedsparse.sparse.federated import initial_nmf_items, initial_nmf_row, nmf_multiplicative

BITS = 40


def seeded_keys(devices, seed=0):
    rng = np.random.default_rng(seed)
    return {device: KeyPair.from_private(rng.bytes(32)) for device in devices}


def secrets_of(keys, peers, device):
    return {peer: pair_secret(keys[device].private, keys[peer].public) for peer in peers[device]}


def masked_vectors(vectors, keys, peers, step=1):
    return {device: mask_contribution(encode_fixed(vector, BITS), device,
                                      secrets_of(keys, peers, device), step)
            for device, vector in vectors.items()}


def open_sum(masked, keys, peers, min_aggregate, step=1):
    """What the server does: add what was sent, take back left-out devices, remove the masks of
    dropped peers from the secrets their neighbours reveal."""
    plan = plan_unmasking(peers, set(masked), min_aggregate)
    total = np.zeros_like(next(iter(masked.values())))
    for device in (d for group in plan.components for d in group):
        total += masked[device]
    revealed = {}
    for device, dropped in plan.reveal.items():
        secrets = reveal_secrets(keys, device, {peer: keys[peer].public for peer in dropped},
                                 plan.component_size(device), min_aggregate)
        revealed.update({(device, peer): secret for peer, secret in secrets.items()})
    return decode_fixed(total - dangling_masks(revealed, step, total.size), BITS), plan


def test_fixed_point_round_trips_within_half_a_step_and_rejects_what_does_not_fit():
    values = np.random.default_rng(0).normal(scale=100.0, size=1000)
    decoded = decode_fixed(encode_fixed(values, BITS), BITS)
    assert np.max(np.abs(decoded - values)) <= 2.0 ** -(BITS + 1)
    with pytest.raises(ValueError, match="not finite or exceeds"):
        encode_fixed(np.array([np.nan]), BITS)
    with pytest.raises(ValueError, match="not finite or exceeds"):
        encode_fixed(np.array([2.0 ** 40]), BITS)


@pytest.mark.parametrize("size", [5, KEYSTREAM_BLOCK, 2 * KEYSTREAM_BLOCK + 3])
def test_masks_made_block_by_block_are_the_whole_aes_ctr_keystreams(size):
    """Each pair's mask is its secret's AES-CTR keystream, added or subtracted mod 2^64,
    whatever the blocks; one pair alone or three interleaved block by block."""
    step = 7
    secrets = [bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34))]
    streams = [np.frombuffer(Cipher(algorithms.AES(secret), modes.CTR(
        step.to_bytes(16, "little"))).encryptor().update(bytes(8 * size)), np.uint64)
        for secret in secrets]
    start = np.arange(size, dtype=np.uint64) * np.uint64(2 ** 61)      # wraps mod 2^64 below
    added, subtracted, several = start.copy(), start.copy(), start.copy()
    add_masks(added, [(secrets[0], False)], step)
    add_masks(subtracted, [(secrets[0], True)], step)
    add_masks(several, [(secrets[0], False), (secrets[1], True), (secrets[2], False)], step)
    np.testing.assert_array_equal(added, start + streams[0])
    np.testing.assert_array_equal(subtracted, start - streams[0])
    np.testing.assert_array_equal(several, start + streams[0] - streams[1] + streams[2])


def test_mask_graph_is_symmetric_connected_and_survives_dropouts():
    devices = list(range(500))
    peers = mask_graph(devices, 6, np.random.default_rng(3))
    degrees = [len(peers[device]) for device in devices]
    assert max(degrees) == 6 and min(degrees) >= 2 and np.mean(degrees) > 5.9
    assert all(device in peers[peer] for device in devices for peer in peers[device])
    assert all(device not in peers[device] for device in devices)
    assert mask_graph(devices, 6, np.random.default_rng(3)) == peers
    assert len(summed_components(peers, set(devices), 500)) == 1          # connected
    survivors = set(np.flatnonzero(np.random.default_rng(4).random(500) > 0.3).tolist())
    kept = summed_components(mask_graph(devices, 4, np.random.default_rng(5)), survivors, 100)
    assert sum(map(len, kept)) > 0.95 * len(survivors)        # 30% dropped: still one sum
    small = mask_graph([0, 1, 2], 8, np.random.default_rng(0))   # fewer than the degree
    assert small == {0: [1, 2], 1: [0, 2], 2: [0, 1]}


def test_secure_sum_equals_the_plain_sum():
    rng = np.random.default_rng(1)
    devices = list(range(30))
    vectors = {device: rng.normal(size=200) for device in devices}
    keys = seeded_keys(devices)
    peers = mask_graph(devices, 4, np.random.default_rng(0))
    opened, plan = open_sum(masked_vectors(vectors, keys, peers), keys, peers, min_aggregate=10)
    assert plan.excluded == [] and plan.reveal == {}
    np.testing.assert_allclose(opened, sum(vectors.values()), atol=30 * 2.0 ** -BITS)


def test_a_cohort_that_skips_its_inner_pairs_sends_the_same_sum():
    rng = np.random.default_rng(4)
    devices = list(range(12))
    vectors = {device: encode_fixed(rng.normal(size=64), BITS) for device in devices}
    keys = seeded_keys(devices)
    peers = mask_graph(devices, 4, np.random.default_rng(1))
    public = {device: {peer: keys[peer].public for peer in peers[device]} for device in devices}
    cohort = {0, 1, 2, 3, 4, 5}
    every_pair, outer_pairs = np.zeros(64, np.uint64), np.zeros(64, np.uint64)
    for device in sorted(cohort):
        every_pair += mask_for_peers(vectors[device], device, keys[device], public[device], 7)
        outer = peers_outside(public[device], cohort)
        assert set(outer) == set(peers[device]) - cohort
        outer_pairs += mask_for_peers(vectors[device], device, keys[device], outer, 7)
    assert np.array_equal(every_pair, outer_pairs)
    assert not np.array_equal(outer_pairs, sum(vectors[d] for d in cohort))   # still masked


def test_a_cohorts_masked_sum_of_sparse_vectors_is_the_sum_of_their_masked_vectors():
    """Devices 2 and 3 summed by one party: the sum of their masked vectors, each from its
    sparse contribution; the pair between them cancels, so it need not be made."""
    rng = np.random.default_rng(5)
    keys = seeded_keys(range(6))
    peers = {2: {3: keys[3].public, 5: keys[5].public},
             3: {1: keys[1].public, 2: keys[2].public, 4: keys[4].public}}
    contributions = {device: (np.array([0, 7, 30 + device]), rng.normal(size=3))
                     for device in peers}
    total = masked_cohort_sum(40, contributions, keys, peers, 9, BITS)
    expected = sum(mask_for_peers(encode_fixed_sparse(*contributions[device], 40, BITS), device,
                                  keys[device], peers[device], 9) for device in peers)
    assert np.array_equal(total, expected)
    assert not np.array_equal(total, sum(encode_fixed_sparse(*contributions[device], 40, BITS)
                                         for device in peers))         # pairs outside: masked


def test_a_single_masked_contribution_is_indistinguishable_from_uniform_noise():
    """A device's NMF contribution (zero but at its few items) masked: its 64-bit words pass a
    KS test against uniform, its bytes a chi-square test, and nothing marks its items."""
    n_items, rank, items = 500, 8, np.array([3, 17, 256, 400])
    devices = list(range(12))
    keys = seeded_keys(devices, seed=5)
    peers = mask_graph(devices, 4, np.random.default_rng(1))
    encoded = encode_fixed_sparse(*nmf_contribution(np.linspace(0.5, 2.0, rank), items, n_items),
                                  contribution_size(rank, n_items), BITS)
    masked = mask_contribution(encoded, 4, secrets_of(keys, peers, 4), step=1)
    words = masked.astype(np.float64) / 2.0 ** 64
    assert stats.kstest(words, "uniform").pvalue > 1e-3
    counts = np.bincount(masked.view(np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-3
    at_items = masked[:rank * n_items].reshape(rank, n_items)[:, items].astype(np.float64)
    elsewhere = np.delete(masked[:rank * n_items].reshape(rank, n_items), items, axis=1)
    assert stats.ks_2samp(at_items.ravel() / 2.0 ** 64,
                          elsewhere.astype(np.float64).ravel() / 2.0 ** 64).pvalue > 1e-3
    again = mask_contribution(encoded, 4, secrets_of(keys, peers, 4), step=2)
    assert np.mean(again == masked) < 1e-3                   # a fresh mask every step


def test_devices_that_drop_after_their_keys_went_out_do_not_break_the_sum():
    rng = np.random.default_rng(2)
    devices = list(range(40))
    vectors = {device: rng.normal(size=64) for device in devices}
    keys = seeded_keys(devices, seed=1)
    peers = mask_graph(devices, 4, np.random.default_rng(2))
    dropped = {7, 8, 21}
    masked = {d: m for d, m in masked_vectors(vectors, keys, peers).items() if d not in dropped}
    opened, plan = open_sum(masked, keys, peers, min_aggregate=10)
    assert plan.excluded == []
    assert set(plan.reveal) == {d for d in devices if d not in dropped
                                and set(peers[d]) & dropped}
    assert all(set(peers_dropped) <= dropped for peers_dropped in plan.reveal.values())
    expected = sum(vectors[d] for d in devices if d not in dropped)
    np.testing.assert_allclose(opened, expected, atol=40 * 2.0 ** -BITS)


def test_a_survivor_cut_off_by_dropouts_is_left_out_not_unmasked():
    devices = list(range(20))
    keys = seeded_keys(devices, seed=2)
    peers = mask_graph(devices, 2, np.random.default_rng(4))
    lonely = 5
    dropped = set(peers[lonely])                            # both its ring neighbours
    plan = plan_unmasking(peers, set(devices) - dropped, min_aggregate=3)
    assert plan.excluded == [lonely] and lonely not in plan.reveal
    assert [len(group) for group in plan.components] == [17]
    assert plan_unmasking(peers, set(), min_aggregate=3).components == []      # nobody sent
    with pytest.raises(ValueError, match="fewer than fl.privacy.min_aggregate = 3"):
        reveal_secrets(keys, lonely, {peer: keys[peer].public for peer in dropped}, 1, 3)


def test_federated_nmf_under_secure_sum_equals_centralized_nmf():
    """Three masked iterations, the devices in two cohorts that each send one sum, with
    dropouts of no one: H equals Lee-Seung on the same R."""
    data = synthetic_dataset(n_users=30, n_items=25, per_user=6, test_per_user=2, seed=4)
    users, rank, seed = np.arange(30), 4, 7
    keys = seeded_keys(list(range(30)), seed=3)
    peers = mask_graph(list(range(30)), 4, np.random.default_rng(seed))
    public = {device: {peer: keys[peer].public for peer in peers[device]} for device in peers}
    rows, h = {}, initial_nmf_items(seed, rank, data.n_items)
    for step in (1, 2, 3):
        task = MaskedStep(step=step, h=None if step == 1 else h, peers=public,
                          fraction_bits=BITS)
        total = np.zeros(contribution_size(rank, data.n_items), np.uint64)
        for cohort in (list(range(15)), list(range(15, 30))):
            sent = nmf_row_steps(data, users, rows, cohort, seed, rank, task, FaultModel())
            assert sent == cohort
            total += masked_nmf_sum(data, users, rows, keys, sent, rank, task)
        h, _ = nmf_server_step(h, decode_fixed(total, BITS))
    w0 = np.stack([initial_nmf_row(seed, device, rank) for device in range(30)])
    _, expected = nmf_multiplicative(data.train[users], w0,
                                     initial_nmf_items(seed, rank, data.n_items), 3)
    np.testing.assert_allclose(h, expected, rtol=1e-5, atol=1e-7)


def test_a_cohorts_nmf_sum_is_the_sum_of_its_devices_fully_masked_vectors():
    """Skipping the masks of pairs inside the cohort changes nothing in what it sends; a resend
    from the same rows is the same sum."""
    data = synthetic_dataset(n_users=8, n_items=10, per_user=3, test_per_user=1, seed=0)
    users, rank = np.arange(8), 3
    keys = seeded_keys(range(8))
    peers = mask_graph(list(range(8)), 4, np.random.default_rng(0))
    public = {d: {p: keys[p].public for p in peers[d]} for d in peers}
    task = MaskedStep(step=1, h=None, peers=public, fraction_bits=BITS)
    rows = {}
    cohort = nmf_row_steps(data, users, rows, [0, 1, 2, 3, 4], 0, rank, task, FaultModel())
    size = contribution_size(rank, data.n_items)
    expected = np.zeros(size, np.uint64)
    for device in cohort:
        encoded = encode_fixed_sparse(*nmf_contribution(
            rows[device], data.train[device].indices, data.n_items), size, BITS)
        expected += mask_for_peers(encoded, device, keys[device], public[device], 1)
    summed = masked_nmf_sum(data, users, rows, keys, cohort, rank, task)
    assert np.array_equal(summed, expected)
    assert np.array_equal(masked_nmf_sum(data, users, dict(rows), keys, cohort, rank, task),
                          summed)
