"""Small random-weight models for the tests, in 1-D, 2-D and 3-D."""

from __future__ import annotations

import torch
from torch import Tensor, nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
_MAXPOOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}


def conv_net(dims: int, in_channels: int = 2, classes: int = 5) -> nn.Sequential:
    """conv -> BN -> ReLU -> maxpool -> conv -> ReLU(inplace) -> conv -> GAP -> linear.

    Layers by name: "0" conv, "1" BN, "2" ReLU, "3" maxpool, "4" conv,
    "5" in-place ReLU, "6" conv, "7" global pool. Inputs need spatial size >= 6.
    """
    conv = _CONV[dims]
    return nn.Sequential(
        conv(in_channels, 6, 3, padding=1),
        _BN[dims](6),
        nn.ReLU(),
        _MAXPOOL[dims](2),
        conv(6, 5, 3, padding=1),
        nn.ReLU(inplace=True),
        conv(5, 4, 1),
        _POOL[dims](1),
        nn.Flatten(),
        nn.Linear(4, classes),
    ).eval()


def cam_net(dims: int, in_channels: int = 2, classes: int = 5) -> nn.Sequential:
    """conv -> ReLU -> global average pool -> linear: the architecture CAM needs."""
    return nn.Sequential(
        _CONV[dims](in_channels, 6, 3),
        nn.ReLU(),
        _POOL[dims](1),
        nn.Flatten(),
        nn.Linear(6, classes),
    ).eval()


class Permute(nn.Module):
    def __init__(self, *order: int) -> None:
        super().__init__()
        self.order = order

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(*self.order)


def channels_last_net(classes: int = 5) -> nn.Sequential:
    """conv -> to (N, H, W, C) -> Linear over channels ("2") -> back ("3") -> GAP -> linear."""
    return nn.Sequential(
        nn.Conv2d(2, 6, 3),
        Permute(0, 2, 3, 1),
        nn.Linear(6, 6),
        Permute(0, 3, 1, 2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, classes),
    ).eval()


class TokenNet(nn.Module):
    """Patchify to a 3x3 grid of tokens after a learned CLS token, mix, pool, classify."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.patch = nn.Conv2d(2, 6, 3, stride=3)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, classes)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (N, 9, C)
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
        mixed = torch.relu(self.mix(tokens))
        return self.head(mixed[:, 0] + mixed[:, 1:].mean(1))
