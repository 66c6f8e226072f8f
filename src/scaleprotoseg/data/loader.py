"""Torch datasets and loaders over a prepared dataset.

Training batches are a pure function of (seed, step): step s draws its images from a seeded permutation
of the current epoch and augments each with an RNG seeded by (seed, s, j). Resuming at step s therefore
reproduces exactly the batches an uninterrupted run would have seen, without storing RNG states.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataConfig
from ..errors import ConfigError
from .prepared import PreparedDataset
from .transforms import eval_transform, train_transform


class TrainCrops(Dataset):
    """Indexed by (image index, augmentation seed) pairs that `StepBatchSampler` produces."""

    def __init__(self, source: PreparedDataset, cfg: DataConfig):
        self.source, self.cfg = source, cfg

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]):
        index, aug_seed = key
        image, label = self.source.sample(index)
        rng = np.random.default_rng(aug_seed)
        c = self.cfg
        return train_transform(image, label, rng, c.crop, c.scale_range, c.flip, c.mean, c.std)


class StepBatchSampler(Sampler):
    """Yields, for steps start..steps-1, a list of (image index, augmentation seed) pairs."""

    def __init__(self, n_images: int, batch_size: int, steps: int, seed: int, start: int = 0):
        self.n, self.bs, self.steps, self.seed, self.start = n_images, batch_size, steps, seed, start

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)

    def batch(self, step: int) -> list[tuple[int, int]]:
        per_epoch = max(self.n // self.bs, 1)
        epoch, offset = divmod(step, per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        idx = np.resize(perm, (offset + 1) * self.bs)[offset * self.bs : (offset + 1) * self.bs]
        return [(int(i), int(np.random.SeedSequence([self.seed, step, j]).generate_state(1)[0])) for j, i in enumerate(idx)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.steps):
            yield self.batch(step)


def train_loader(root, split: str, cfg: DataConfig, batch_size: int, steps: int, seed: int, start: int = 0,
                 num_workers: int = 0):
    """A loader of `steps - start` augmented batches; check that the crop fits the images first."""
    source = PreparedDataset(root, split)
    image = source.image(0)
    hi = cfg.scale_range[1]
    if cfg.crop > max(image.shape[:2]) * hi:
        raise ConfigError(
            f"data.crop ({cfg.crop}) is larger than images allow: {source.ids[0]} is "
            f"{image.shape[0]}×{image.shape[1]} and at most ×{hi} after rescaling; lower data.crop."
        )
    sampler = StepBatchSampler(len(source), batch_size, steps, seed, start)
    return DataLoader(
        TrainCrops(source, cfg),
        batch_sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


class EvalImages(Dataset):
    """Whole images without augmentation: (normalised input, native label, index)."""

    def __init__(self, source: PreparedDataset, cfg: DataConfig, max_images: int = 0):
        self.source, self.cfg = source, cfg
        self.n = len(source) if max_images <= 0 else min(max_images, len(source))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        image, label = self.source.sample(i)
        c = self.cfg
        return eval_transform(image, c.eval_size, c.eval_short_side, c.mean, c.std), torch.from_numpy(label).long(), i


def _collate_same_size(batch):
    xs, ys, idx = zip(*batch)
    if len({x.shape for x in xs}) == 1 and len({y.shape for y in ys}) == 1:
        return torch.stack(xs), torch.stack(ys), torch.tensor(idx)
    return list(xs), list(ys), torch.tensor(idx)


def eval_loader(root, split: str, cfg: DataConfig, batch_size: int, max_images: int = 0, num_workers: int = 0) -> DataLoader:
    """Whole-image batches; images of different sizes come as lists and are run one by one."""
    ds = EvalImages(PreparedDataset(root, split), cfg, max_images)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=_collate_same_size)
