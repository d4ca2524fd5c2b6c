"""A loader that keeps a whole split on the device and does shuffling and augmentation there.

No DataLoader, no worker processes and no host→device copy per step: the uint8 images are moved
once; each batch is gathered by index, randomly cropped (4-pixel zero padding, as torchvision's
``RandomCrop(32, padding=4)``), flipped horizontally with probability 1/2, and normalised.

Reproducibility: the order of epoch ``e`` is a permutation drawn from a CPU generator seeded with
``(seed, e)``; augmentation draws from a generator on the device whose state is checkpointed, so a
resumed run sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..core.protocols import Split


#: torch seeds are 64-bit: derived seeds wrap around (unchanged below 2**64, so small seeds keep their streams)
_SEED_MASK = (1 << 64) - 1

class DeviceLoader:
    """Batches ``(x float [B, C, H, W] normalised, y int64 [B])`` of one split, on ``device``."""

    def __init__(self, split: Split, batch_size: int, device: torch.device, mean: tuple[float, ...],
                 std: tuple[float, ...], augment: bool, seed: int, stream: int = 0, pad: int = 4,
                 channels_last: bool = False, rank: int = 0, world_size: int = 1):
        if len(split) == 0:
            raise ValueError("empty split")
        self.x = split.x.permute(0, 3, 1, 2).contiguous().to(device)  # uint8 NCHW
        self.y = split.y.to(device)
        self.n = len(split)
        self.batch_size = min(batch_size, self.n)
        self.device = device
        c = self.x.shape[1]
        self.mean = torch.tensor(mean, device=device).view(1, c, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, c, 1, 1) * 255.0
        self.augment, self.pad = augment, pad
        self.seed, self.stream = seed, stream
        self.channels_last = channels_last
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed((seed * 1000003 + stream) & _SEED_MASK)
        self.rank, self.world_size = rank, world_size
        self._perm_key: tuple[int, int] | None = None
        self._perm = torch.empty(0)

    def __len__(self) -> int:
        """Full batches per epoch (the last partial batch is dropped, as in AutoDL)."""
        return max(1, self.n // self.batch_size)

    def order(self, epoch: int, cycle: int = 0) -> torch.Tensor:
        """The permutation of pass ``cycle`` of epoch ``epoch`` (a pure function of the seeds)."""
        key = (epoch, cycle)
        if self._perm_key != key:
            g = torch.Generator().manual_seed((((self.seed * 1000003 + self.stream) * 7919 + epoch) * 104729 + cycle) & _SEED_MASK)
            self._perm = torch.randperm(self.n, generator=g).to(self.device)
            self._perm_key = key
        return self._perm

    def batch(self, epoch: int, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i`` of epoch ``epoch``; past the end of the split it starts a new shuffled pass
        (the validation half feeds one α step per training batch, however many that is)."""
        perm = self.order(epoch, i // len(self))
        j = i % len(self)
        idx = perm[j * self.batch_size: (j + 1) * self.batch_size]
        if self.world_size > 1:  # each rank takes its share of the global batch
            idx = idx[self.rank:: self.world_size]
        return self.make_batch(idx)

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(start, len(self)):
            yield self.batch(epoch, i)

    def make_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x.index_select(0, idx)
        if self.augment:
            x = self._augment(x)
        x = (x.to(self.mean.dtype) - self.mean) / self.std  # the default dtype (float64 in exactness tests)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.y.index_select(0, idx)

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.pad
        xp = torch.nn.functional.pad(x, (p, p, p, p))
        r = torch.randint(0, 2 * p + 1, (2, b), generator=self.gen, device=self.device)
        flip = torch.rand(b, generator=self.gen, device=self.device) < 0.5
        rows = (r[0].view(b, 1) + torch.arange(h, device=self.device)).view(b, 1, h, 1)
        cols = torch.arange(w, device=self.device).view(1, w)
        cols = torch.where(flip.view(b, 1), (w - 1) - cols, cols) + r[1].view(b, 1)
        bi = torch.arange(b, device=self.device).view(b, 1, 1, 1)
        ci = torch.arange(c, device=self.device).view(1, c, 1, 1)
        return xp[bi, ci, rows, cols.view(b, 1, 1, w)]

    def set_batch_size(self, batch_size: int) -> None:
        """Batches of ``batch_size`` images (at most the split) from now on; the epochs' orders are unchanged."""
        self.batch_size = min(int(batch_size), self.n)

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        if "batch_size" in state:  # checkpoints before set_batch_size existed kept the recipe's
            self.set_batch_size(int(state["batch_size"]))
