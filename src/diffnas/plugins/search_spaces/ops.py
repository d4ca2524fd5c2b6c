"""Candidate operations of the bundled search spaces.

NAS-Bench-201 ops follow AutoDL's ``cell_operations.py`` (METHODS.md §9): ``nor_conv_kxk`` is
ReLU → Conv(k, pad k//2, no bias) → BN; ``avg_pool_3x3`` uses ``count_include_pad=False``.
DARTS ops follow ``quark0/darts: cnn/operations.py``: separable convs are (ReLU → depthwise →
pointwise → BN) twice, dilated convs once with dilation 2, pooling is followed by BN in the
search network, and ``skip_connect`` is a FactorizedReduce when the stride is 2.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def divide_channels(channels: int, divisor: int) -> int:
    """``channels // divisor``; a ``ValueError`` when ``divisor`` does not divide ``channels`` (the
    ``channel_divisor`` of a space's ``make_op``, used by partial-channel modifiers such as PC-DARTS)."""
    if divisor < 1 or channels % divisor:
        raise ValueError(f"{channels} channels cannot be split into {divisor} equal parts")
    return channels // divisor


def bn(c: int, affine: bool, track: bool) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, affine=affine, track_running_stats=track)


class ReLUConvBN(nn.Sequential):
    """ReLU → Conv2d (no bias) → BatchNorm."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, padding: int, dilation: int = 1,
                 affine: bool = True, track: bool = True):
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, dilation=dilation, bias=False),
                         bn(c_out, affine, track))


class Zero(nn.Module):
    """The ``none`` op: zeros of the output's shape (the supernet cell never computes it)."""

    is_zero = True

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.c_out, self.stride = c_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and x.shape[1] == self.c_out:
            return x.mul(0.0)
        n, _, h, w = x.shape
        return x.new_zeros(n, self.c_out, (h + self.stride - 1) // self.stride, (w + self.stride - 1) // self.stride)


class Noise(nn.Module):
    """RobustDARTS S4's ``noise`` op: N(0, 1) of the input's shape, parameter-free."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        if c_in != c_out:
            raise ValueError("noise needs c_in == c_out")
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return torch.randn_like(x)


class FactorizedReduce(nn.Module):
    """Two stride-2 1x1 convs on offset grids, concatenated (DARTS's stride-2 skip)."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True, track: bool = True):
        super().__init__()
        assert c_out % 2 == 0
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = bn(c_out, affine, track)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        y = x[:, :, 1:, 1:]
        if y.shape[-1] != x.shape[-1] or y.shape[-2] != x.shape[-2]:
            y = nn.functional.pad(y, (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(y)], dim=1))


class Pooling(nn.Module):
    """3x3 pooling, with a 1x1 ReLU-Conv-BN first if the width changes and an optional BN after."""

    def __init__(self, mode: str, c_in: int, c_out: int, stride: int, affine: bool, track: bool, bn_after: bool):
        super().__init__()
        self.pre = None if c_in == c_out else ReLUConvBN(c_in, c_out, 1, 1, 0, affine=affine, track=track)
        self.pool = (nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False) if mode == "avg"
                     else nn.MaxPool2d(3, stride=stride, padding=1))
        self.post = bn(c_out, False, track) if bn_after else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            x = self.pre(x)
        x = self.pool(x)
        return self.post(x) if self.post is not None else x


class DilConv(nn.Sequential):
    """ReLU → depthwise k×k (dilation d) → pointwise 1×1 → BN."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, padding: int, dilation: int, affine: bool, track: bool):
        super().__init__(nn.ReLU(inplace=False),
                         nn.Conv2d(c_in, c_in, k, stride, padding, dilation=dilation, groups=c_in, bias=False),
                         nn.Conv2d(c_in, c_out, 1, bias=False),
                         bn(c_out, affine, track))


class SepConv(nn.Sequential):
    """Two stacked DilConv(dilation 1): the first carries the stride."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, padding: int, affine: bool, track: bool):
        super().__init__(DilConv(c_in, c_in, k, stride, padding, 1, affine, track),
                         DilConv(c_in, c_out, k, 1, padding, 1, affine, track))


def identity_or_reduce(c_in: int, c_out: int, stride: int, affine: bool, track: bool) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    if stride == 2:
        return FactorizedReduce(c_in, c_out, affine, track)
    return ReLUConvBN(c_in, c_out, 1, 1, 0, affine=affine, track=track)


OpBuilder = Callable[[int, int, int, bool, bool], nn.Module]  # (c_in, c_out, stride, affine, track)

NB201_OPS: dict[str, OpBuilder] = {
    "none": lambda ci, co, s, a, t: Zero(ci, co, s),
    "skip_connect": lambda ci, co, s, a, t: identity_or_reduce(ci, co, s, a, t),
    "nor_conv_1x1": lambda ci, co, s, a, t: ReLUConvBN(ci, co, 1, s, 0, affine=a, track=t),
    "nor_conv_3x3": lambda ci, co, s, a, t: ReLUConvBN(ci, co, 3, s, 1, affine=a, track=t),
    "avg_pool_3x3": lambda ci, co, s, a, t: Pooling("avg", ci, co, s, a, t, bn_after=False),
}

DARTS_OPS: dict[str, OpBuilder] = {
    "none": lambda ci, co, s, a, t: Zero(ci, co, s),
    "noise": lambda ci, co, s, a, t: Noise(ci, co, s),
    "skip_connect": lambda ci, co, s, a, t: identity_or_reduce(ci, co, s, a, t),
    "max_pool_3x3": lambda ci, co, s, a, t: Pooling("max", ci, co, s, a, t, bn_after=not a),
    "avg_pool_3x3": lambda ci, co, s, a, t: Pooling("avg", ci, co, s, a, t, bn_after=not a),
    "sep_conv_3x3": lambda ci, co, s, a, t: SepConv(ci, co, 3, s, 1, a, t),
    "sep_conv_5x5": lambda ci, co, s, a, t: SepConv(ci, co, 5, s, 2, a, t),
    "dil_conv_3x3": lambda ci, co, s, a, t: DilConv(ci, co, 3, s, 2, 2, a, t),
    "dil_conv_5x5": lambda ci, co, s, a, t: DilConv(ci, co, 5, s, 4, 2, a, t),
}
