"""The ``stripes`` dataset: noisy horizontal (class 0) and vertical (class 1) stripes, seeded."""

from __future__ import annotations

import attrs
import torch

from diffnas.core.config import help_field, non_negative, positive
from diffnas.core.protocols import DataBundle, Dataset, Split


def stripes(n: int, size: int, noise: float, generator: torch.Generator) -> Split:
    """``n`` RGB images of stripes with period 2, half of them vertical, plus Gaussian noise."""
    y = torch.arange(n) % 2
    pattern = (torch.arange(size) % 2).float()
    horizontal = pattern.view(size, 1).expand(size, size)
    img = torch.where(y.view(n, 1, 1).bool(), horizontal.t(), horizontal)  # [n, H, W]
    img = img.unsqueeze(-1).expand(n, size, size, 3) + noise * torch.randn(n, size, size, 3, generator=generator)
    return Split(x=(img.clamp(0, 1) * 255).round().to(torch.uint8), y=y.long())


class Stripes(Dataset):
    """Noisy horizontal versus vertical stripes: a two-class task any small supernet can learn."""

    @attrs.frozen
    class Params:  # what `data.params` may hold; checked when the recipe is validated
        num_train: int = help_field(128, "training images (split in halves by data.train_portion)", validator=positive)
        num_test: int = help_field(32, "test images", validator=positive)
        image_size: int = help_field(8, "height and width", validator=positive)
        noise: float = help_field(0.3, "standard deviation of the added noise", validator=non_negative)

    def load(self, data_config, seed):
        from diffnas.core.config import structure
        from diffnas.core.errors import RecipeError

        p, problems = structure(dict(data_config.params), self.Params, "recipe.data.params")
        if problems:
            raise RecipeError(problems)
        gen = torch.Generator().manual_seed(data_config.split_seed)
        train = stripes(p.num_train, p.image_size, p.noise, gen)
        order = torch.randperm(p.num_train, generator=gen)
        cut = int(p.num_train * data_config.train_portion)
        halves = [Split(train.x[idx], train.y[idx]) for idx in (order[:cut], order[cut:])]
        test = stripes(p.num_test, p.image_size, p.noise, gen)
        return DataBundle(halves[0], halves[1], test, num_classes=2, mean=(0.5,) * 3, std=(0.5,) * 3, source="stripes")
