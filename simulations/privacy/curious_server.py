"""An honest-but-curious server: it follows the protocol, keeps every reply a device sends and
what it sent down, and tries to name each device's training items (its positives).

Attacks, each scored per (device, message) by ROC AUC of the device's positives against the
other candidates and by precision at |P| (the fraction of positives among the |P| best-scored
candidates), beside what a random guess gets (|P| / candidates):

* ``touched``: the rows a plain training reply names, over all items (a touched row scores 1);
* ``direction``: among the touched rows of a plain reply, the rows whose change best aligns
  with the dominant direction of the device's update (its first singular vector; positives
  are pulled toward the user's vector, negatives pushed away). The server knows the protocol's
  settings, so it takes the sign that puts on top the share of rows it expects to move like
  positives: (1 + pseudo-items) / (1 + pseudo-items + negatives) per positive;
  ``direction_best`` takes, reply by reply, whichever sign ranks better (an upper bound);
* ``masked``: a secure training reply or federated NMF reply read as if it were plain (each
  item's weight or W_u^T R_u column, decoded from the masked sum of the device's SuperNode),
  over all items.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from flwr.app import Message, MessageType
from sklearn.metrics import roc_auc_score

from fedsparse.data import InteractionData
from fedsparse.federated.devices import items_of
from fedsparse.fl.records import record_arrays, slice_from_record


def attack_scores(scores: np.ndarray, positives: np.ndarray) -> tuple[float, float, float]:
    """(AUC, precision at |P|, random precision) of ``scores`` (one per candidate) against
    the boolean ``positives`` among the candidates."""
    count = int(positives.sum())
    top = np.argsort(-scores, kind="stable")[:count]
    return (float(roc_auc_score(positives, scores)), float(positives[top].mean()),
            count / len(scores))


def direction_scores(delta: np.ndarray, positive_share: float) -> np.ndarray:
    """Each touched row's projection on the update's dominant direction, signed so that the
    share of rows scoring above 0 is the closer to ``positive_share``. ``delta`` (T, d) is the
    rows' change."""
    _, _, vt = np.linalg.svd(delta, full_matrices=False)
    projection = delta @ vt[0]                                           # (T,)
    share = float((projection > 0).mean())
    return projection if abs(share - positive_share) <= abs(1 - share - positive_share) \
        else -projection


class CuriousServer:
    """Collects attack results from every (sent, reply) pair of a run (an ``observer``)."""

    def __init__(self, data: InteractionData, users: np.ndarray, dim: int, fraction_bits: int,
                 negatives: int, pseudo_items: float) -> None:
        self.data, self.users, self.dim, self.bits = data, users, dim, fraction_bits
        self.positive_share = (1 + pseudo_items) / (1 + pseudo_items + negatives)
        self.results: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        self.message_kinds: set[str] = set()

    def positives(self, device: int) -> np.ndarray:
        """(n_items,) bool: the device's training items."""
        mask = np.zeros(self.data.n_items, dtype=bool)
        mask[items_of(self.data, "train", int(self.users[device]))] = True
        return mask

    def observe(self, sent: Message, reply: Message) -> None:
        """Attack one reply, given the message it answers."""
        if reply.has_error():
            return
        content = reply.content
        self.message_kinds.update(key.split(".")[0] for key in content)
        if reply.metadata.message_type == MessageType.TRAIN and "updates" in content:
            self._plain_training(sent, record_arrays(content["updates"]),
                                 dict(content["replies"]))
        for key in content.array_records:
            kind = key.split(".")[0]
            if kind == "secure":
                self._masked(record_arrays(content[key]), tier_slice=sent.content[
                    "item." + key.split(".")[1]])
            elif kind == "nmf":
                self._masked(record_arrays(content[key]), tier_slice=None)

    def _plain_training(self, sent: Message, arrays: dict[str, np.ndarray],
                        metrics: dict[str, list]) -> None:
        n_items, dim = self.data.n_items, self.dim
        tables = {int(key.split(".")[1]): slice_from_record(sent.content[key], n_items, dim)
                  for key in sent.content.array_records if key.startswith("item.")}
        before = {tier: table.to_dense().detach().numpy() for tier, table in tables.items()}
        masks = {tier: table.mask().numpy() for tier, table in tables.items()}
        row_end, value_end = np.cumsum(arrays["n_rows"]), np.cumsum(arrays["n_values"])
        for i, device in enumerate(arrays["devices"].tolist()):
            tier = int(metrics["tier-index"][i])
            rows = arrays["rows"][row_end[i] - arrays["n_rows"][i]:row_end[i]].astype(np.int64)
            values = arrays["values"][value_end[i] - arrays["n_values"][i]:value_end[i]]
            after = before[tier][rows].copy()                                   # (T, d)
            after[masks[tier][rows]] = values
            positives = self.positives(device)
            touched = np.zeros(n_items)
            touched[rows] = 1.0
            self.results["touched"].append(attack_scores(touched, positives))
            if 0 < positives[rows].sum() < len(rows):
                scores = direction_scores(after - before[tier][rows], self.positive_share)
                informed = attack_scores(scores, positives[rows])
                flipped = attack_scores(-scores, positives[rows])
                self.results["direction"].append(informed)
                self.results["direction_best"].append(max(informed, flipped))

    def _masked(self, arrays: dict[str, np.ndarray], tier_slice) -> None:
        n_items = self.data.n_items
        decoded = arrays["masked"].view(np.int64) / 2.0 ** self.bits      # read as if plain
        if tier_slice is None:                              # NMF: the W_u^T R_u columns
            scores = decoded[:self.dim * n_items].reshape(self.dim, n_items).sum(axis=0)
        else:                                               # training: the rows' weights
            nnz = int(record_arrays(tier_slice)["values"].size)
            scores = decoded[nnz:nnz + n_items]
        for device in arrays["devices"].tolist():
            self.results["masked"].append(attack_scores(scores, self.positives(device)))

    def summary(self) -> dict[str, dict[str, float]]:
        """Per attack: mean AUC, precision at |P| and random precision over its replies."""
        return {attack: {"replies": len(rows), "auc": float(np.mean([r[0] for r in rows])),
                         "precision_at_p": float(np.mean([r[1] for r in rows])),
                         "random_precision": float(np.mean([r[2] for r in rows]))}
                for attack, rows in sorted(self.results.items())}
