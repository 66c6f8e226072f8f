"""Torch datasets and loaders over a prepared dataset.

Training batches are a pure function of (seed, step): step s draws its images from a seeded permutation
of the current epoch and augments each with an RNG seeded by (seed, s, j). Resuming at step s therefore
reproduces exactly the batches an uninterrupted run would have seen, without storing RNG states.
Evaluation batches whole images whose network input and label have the same shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from ..config import DataConfig
from ..errors import ConfigError
from .prepared import PreparedDataset
from .transforms import eval_input_size, eval_transform, present_classes, train_transform


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
    """Yields, for steps start..steps-1, a list of (image index, augmentation seed) pairs: the step's whole
    batch of `batch_size` images, or with `world` > 1 the `rank`-th of `world` equal shards of it (so the
    images of a step do not depend on how many processes train)."""

    def __init__(self, n_images: int, batch_size: int, steps: int, seed: int, start: int = 0, rank: int = 0,
                 world: int = 1):
        if batch_size % world:
            raise ConfigError(f"the batch_size ({batch_size}) must be divisible by the number of training processes ({world}).")
        self.n, self.bs, self.rank, self.world = n_images, batch_size, rank, world
        self.set_phase(steps, seed, start)

    def set_phase(self, steps: int, seed: int, start: int = 0) -> None:
        self.steps, self.seed, self.start = steps, seed, start

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)

    def batch(self, step: int) -> list[tuple[int, int]]:
        per_epoch = max(self.n // self.bs, 1)
        epoch, offset = divmod(step, per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        idx = np.resize(perm, (offset + 1) * self.bs)[offset * self.bs : (offset + 1) * self.bs]
        return [(int(i), int(np.random.SeedSequence([self.seed, step, j]).generate_state(1)[0])) for j, i in enumerate(idx)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.bs // self.world
        for step in range(self.start, self.steps):
            yield self.batch(step)[self.rank * share : (self.rank + 1) * share]


def collate_train(batch, num_classes: int):
    """Stack crops; labels stay uint8; add each image's classes (`present_classes`) for the diversity loss."""
    images = torch.stack([b[0] for b in batch])
    labels = torch.stack([b[1] for b in batch])
    return images, labels, present_classes(labels, num_classes)


class TrainStream:
    """One training loader for every phase of a run: its worker processes (and pinned-memory thread) persist
    across phases; each phase points the batch sampler at its own steps and seed (`__call__`). The sampler
    runs in the main process, so changing it between phases reaches the persistent workers."""

    def __init__(self, root, split: str, cfg: DataConfig, batch_size: int, num_workers: int = 0,
                 pin_memory: bool = False, rank: int = 0, world: int = 1):
        source = PreparedDataset(root, split)
        image = source.image(0)
        hi = cfg.scale_range[1]
        if cfg.crop > max(image.shape[:2]) * hi:
            raise ConfigError(
                f"data.crop ({cfg.crop}) is larger than images allow: {source.ids[0]} is "
                f"{image.shape[0]}×{image.shape[1]} and at most ×{hi} after rescaling; lower data.crop."
            )
        self.sampler = StepBatchSampler(len(source), batch_size, 0, 0, 0, rank, world)
        self.loader = DataLoader(
            TrainCrops(source, cfg),
            batch_sampler=self.sampler,
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            pin_memory=pin_memory,
            collate_fn=partial(collate_train, num_classes=len(source.meta.classes)),
        )

    def __call__(self, steps: int, seed: int, start: int = 0) -> DataLoader:
        self.sampler.set_phase(steps, seed, start)
        return self.loader


def train_loader(root, split: str, cfg: DataConfig, batch_size: int, steps: int, seed: int, start: int = 0,
                 num_workers: int = 0, pin_memory: bool = False, rank: int = 0, world: int = 1):
    """A loader of `steps - start` augmented batches (images, uint8 labels, present classes); check that the
    crop fits the images first."""
    return TrainStream(root, split, cfg, batch_size, num_workers, pin_memory, rank, world)(steps, seed, start)


def val_subset(n_images: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of `size` of `n_images` images drawn without replacement with `seed`; all when `size` is 0
    or at least `n_images` (training's validation subset: the same images at every validation)."""
    if size <= 0 or size >= n_images:
        return np.arange(n_images)
    return np.sort(np.random.default_rng(seed).choice(n_images, size=size, replace=False))


class EvalImages(Dataset):
    """Whole images without augmentation: (normalised input, native label, index in the split). `indices`: the
    split's images to use (default: the first `max_images`, 0 = all)."""

    def __init__(self, source: PreparedDataset, cfg: DataConfig, max_images: int = 0, indices=None):
        self.source, self.cfg = source, cfg
        n = len(source) if max_images <= 0 else min(max_images, len(source))
        self.indices = [int(i) for i in (range(n) if indices is None else indices)]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int):
        i = self.indices[k]
        image, label = self.source.sample(i)
        c = self.cfg
        return eval_transform(image, c.eval_size, c.eval_short_side, c.mean, c.std), torch.from_numpy(label).long(), i

    def shapes(self) -> list[tuple]:
        """Per item, (network input (H, W), label (H, W)), from the image files' headers (nothing decoded)."""
        c, out = self.cfg, []
        for i in self.indices:
            path = self.source.root / "images" / f"{self.source.ids[i]}.jpg"
            try:
                with Image.open(path if path.is_file() else path.with_suffix(".png")) as img:
                    w, h = img.size
            except (OSError, UnidentifiedImageError, SyntaxError):
                h, w = self.source.image(i).shape[:2]  # raises the dataset's error, which names the file
            out.append((eval_input_size(h, w, c.eval_size, c.eval_short_side), (h, w)))  # label: the image's size
        return out


class SameShapeBatchSampler(Sampler):
    """Batches of up to `batch_size` items of one shape key, in a fixed order: each key's items in index order,
    batches ordered by their first item (with `batch_size` 1, exactly the dataset's order)."""

    def __init__(self, keys: list, batch_size: int):
        groups: dict = {}
        for k, key in enumerate(keys):
            groups.setdefault(key, []).append(k)
        bs = max(batch_size, 1)
        chunks = (g[j : j + bs] for g in groups.values() for j in range(0, len(g), bs))
        self.batches = sorted(chunks, key=lambda b: b[0])

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


def _collate_same_size(batch):
    """Stacked tensors; lists when shapes differ (evaluation then runs the images one by one)."""
    xs, ys, idx = zip(*batch)
    if len({x.shape for x in xs}) == 1 and len({y.shape for y in ys}) == 1:
        return torch.stack(xs), torch.stack(ys), torch.tensor(idx)
    return list(xs), list(ys), torch.tensor(idx)


def eval_loader(root, split: str, cfg: DataConfig, batch_size: int, max_images: int = 0, num_workers: int = 0,
                indices=None) -> DataLoader:
    """Whole-image batches of images whose network input and label have one shape (sizes read from the image
    headers; with `batch_size` 1 nothing is read). `indices`: a subset of the split (see `val_subset`)."""
    ds = EvalImages(PreparedDataset(root, split), cfg, max_images, indices)
    keys = ds.shapes() if batch_size > 1 else [None] * len(ds)
    return DataLoader(ds, batch_sampler=SameShapeBatchSampler(keys, batch_size), num_workers=num_workers,
                      collate_fn=_collate_same_size)
