"""The images NAD reads: a data set's raw images one at a time, upstream's training augmentation drawn
from a class's own generator, and the tiles the maps and mosaics are made of.

`ImageSource` is what `method.search` and `method.make_mosaics` read; `Images` implements it for a
data set (`netanatomy.data.raw_image`, normalised as the data set normalises) or for tensors.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import numpy as np
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.functional import resize, resized_crop

from ..data import raw_image

#: tools/dataloader.py of hujiecpp/NAD: RandomResizedCrop(224, scale=(0.08, 1.25)) + RandomHorizontalFlip.
UPSTREAM_CROP_SCALE = (0.08, 1.25)


class ImageSource(Protocol):
    """How the search and the maps read images: `targets` (every image's class); `tile(i, size)`: image i
    resized and normalised; `batch(indices, gen, size, crop_scale, flip)`: images with upstream's training
    augmentation drawn from `gen`, normalised."""

    targets: np.ndarray

    def __len__(self) -> int: ...
    def indices_of(self, c: int) -> np.ndarray: ...
    def tile(self, i: int, size: int) -> torch.Tensor: ...
    def batch(self, indices: np.ndarray, gen: torch.Generator, size: int, crop_scale, flip: bool) -> torch.Tensor: ...


@dataclasses.dataclass
class Images:
    """A data set's images as NAD reads them one at a time (an `ImageSource`).

    `load(i)` gives image i as a uint8 (3, H, W) tensor of raw pixels, normalised here with `mean` and
    `std`, or as a float tensor taken as already normalised; `targets` holds every image's class.
    """

    targets: np.ndarray
    load: Callable[[int], torch.Tensor]
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of_dataset(cls, ds, mean_std: tuple | None) -> "Images":
        """The raw images of `ds` (`netanatomy.data.raw_image`), normalised with `mean_std` (None: not at all)."""
        mean, std = mean_std if mean_std is not None else ((0.0,) * 3, (1.0,) * 3)
        load = lambda i: torch.from_numpy(np.ascontiguousarray(raw_image(ds, i).transpose(2, 0, 1)))  # noqa: E731
        return cls(_targets(ds), load, torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))

    @classmethod
    def of_tensors(cls, x: torch.Tensor, y: torch.Tensor) -> "Images":
        """Already normalised float images x (N, 3, H, W) with labels y."""
        return cls(y.cpu().numpy().astype(np.int64), lambda i: x[i], torch.zeros(3), torch.ones(3))

    def __len__(self) -> int:
        return len(self.targets)

    def indices_of(self, c: int) -> np.ndarray:
        return np.flatnonzero(self.targets == c)

    def finish(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 -> normalised float; float images are taken as already normalised."""
        if img.dtype == torch.uint8:
            return (img.float().div_(255) - self.mean.view(3, 1, 1)) / self.std.view(3, 1, 1)
        return img.float()

    def tile(self, i: int, size: int) -> torch.Tensor:
        """Image i resized to size x size (antialiased) and normalised."""
        img = self.load(i)
        if tuple(img.shape[-2:]) != (size, size):
            img = resize(img, [size, size], antialias=True)
        return self.finish(img)

    def batch(self, indices: np.ndarray, gen: torch.Generator, size: int, crop_scale=UPSTREAM_CROP_SCALE,
              flip: bool = True) -> torch.Tensor:
        """Images `indices`, each augmented as upstream's training loader does (`augment`) and normalised."""
        imgs = [augment(self.load(int(i)), gen, size, crop_scale, flip) for i in indices]
        return torch.stack([self.finish(im) for im in imgs])

    def display(self, x: torch.Tensor) -> torch.Tensor:
        """A normalised (3, H, W) image back in [0, 1] for display."""
        return (x * self.std.view(3, 1, 1) + self.mean.view(3, 1, 1)).clamp(0, 1)


def _targets(ds) -> np.ndarray:
    """Class index of every item of a dataset (targets / labels attribute, Subsets resolved)."""
    if isinstance(ds, torch.utils.data.Subset):
        return _targets(ds.dataset)[np.asarray(ds.indices)]
    for attr in ("targets", "labels"):
        if hasattr(ds, attr):
            return np.asarray(getattr(ds, attr), dtype=np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)


def augment(img: torch.Tensor, gen: torch.Generator, size: int, scale=UPSTREAM_CROP_SCALE,
            flip: bool = True) -> torch.Tensor:
    """RandomResizedCrop(size, scale) + RandomHorizontalFlip on one (3, H, W) image, drawn from `gen`
    (upstream tools/dataloader.py, with a per-class generator instead of the global one: torchvision's
    own crop sampler runs on `gen`'s state)."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(gen.get_state())
        i, j, h, w = RandomResizedCrop.get_params(img, list(scale), [3 / 4, 4 / 3])
        gen.set_state(torch.get_rng_state())
    out = resized_crop(img, i, j, h, w, [size, size], antialias=True)
    if flip and torch.rand(1, generator=gen).item() < 0.5:
        out = out.flip(-1)
    return out
