"""Recommenders behind one protocol: MF and LightGCN."""

from __future__ import annotations

import numpy as np
import torch

from fedsparse.config import ModelConfig
from fedsparse.data.dataset import InteractionData
from fedsparse.models.base import Recommender
from fedsparse.models.lightgcn import LightGCN
from fedsparse.models.mf import MF

__all__ = ["MF", "LightGCN", "Recommender", "build_model"]


def build_model(cfg: ModelConfig, data: InteractionData, *, l2: float,
                generator: torch.Generator,
                masks: tuple[np.ndarray, np.ndarray] | None = None) -> MF | LightGCN:
    """The model named by ``cfg.name`` for ``data``, initialised from ``generator``.

    ``masks`` (user, item) bool arrays make the tables sparse; None keeps them dense.
    """
    if cfg.name == "mf":
        return MF(data.n_users, data.n_items, cfg.dim, l2=l2, init_std=cfg.init_std,
                  generator=generator, masks=masks)
    return LightGCN(data.train, cfg.dim, layers=cfg.layers, l2=l2, init_std=cfg.init_std,
                    generator=generator, masks=masks)
