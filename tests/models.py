"""Small random-weight models for the tests, in 1-D, 2-D and 3-D."""

from __future__ import annotations

from torch import nn

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
