"""A stage's random state, from its seed (initialisation, data order, augmentation)."""

from __future__ import annotations

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
