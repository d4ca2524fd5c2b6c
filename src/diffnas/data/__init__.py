"""Data: datasets (CIFAR-10 from a data root, torchvision or the embedded sample; synthetic) and
the device-resident loader that shuffles, augments and normalises batches where the model runs."""

from .loader import DeviceLoader
from .root import data_root

__all__ = ["DeviceLoader", "data_root"]
