"""The worked example's network: a 4,010-parameter MNIST ConvNet."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

CLASSES = 10


class MnistNet(nn.Module):
    """``Conv(1,12,5) → ReLU → MaxPool(2) → Conv(12,8,5) → ReLU → MaxPool(2) → Linear(128,10)``.

    Sizes: 28 → 24 → 12 → 8 → 4, and 8·4·4 = 128 features. The network
    returns logits; apply softmax outside. The last convolution's ReLU is
    ``features.relu``, the layer the worked example explains.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(1, 12, 5),
                relu1=nn.ReLU(),
                pool1=nn.MaxPool2d(2),
                conv2=nn.Conv2d(12, 8, 5),
                relu=nn.ReLU(),
                pool2=nn.MaxPool2d(2),
            )
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(128, CLASSES))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]
