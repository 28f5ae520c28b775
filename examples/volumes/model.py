"""The two small networks of the example: one reads a volume, one reads a clip.

Three convolutions with batch normalization, then global average pooling and one
linear layer, so a map at the last convolution's ReLU (``features.relu``) can be read
voxel by voxel. The volume network pools all three axes; the clip network pools
height and width only, so it keeps all 8 frames and its maps change from frame to frame.
"""

from __future__ import annotations

from torch import Tensor, nn

CLASSES = 10
CHANNELS = (8, 16, 32)


class _Net(nn.Module):
    def __init__(self, pool: tuple[int, int, int], last: tuple[int, int, int]) -> None:
        super().__init__()
        self.features = nn.Sequential()
        sizes = (1, *CHANNELS)
        for i in (1, 2, 3):
            kernel = last if i == 3 else (3, 3, 3)
            padding = tuple(k // 2 for k in kernel)
            suffix = "" if i == 3 else str(i)
            self.features.add_module(
                f"conv{i}", nn.Conv3d(sizes[i - 1], sizes[i], kernel, padding=padding)
            )
            self.features.add_module(f"bn{i}", nn.BatchNorm3d(sizes[i]))
            self.features.add_module(f"relu{suffix}", nn.ReLU())
            if i < 3:
                self.features.add_module(f"pool{i}", nn.MaxPool3d(pool))
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(CHANNELS[-1], CLASSES)
        )

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.classifier(self.features(x))
        return logits


class VolumeNet(_Net):
    """``(N, 1, 16, 32, 32)`` volumes to 10 logits; ``features.relu`` is ``(N, 32, 4, 8, 8)``."""

    def __init__(self) -> None:
        super().__init__(pool=(2, 2, 2), last=(3, 3, 3))


class ClipNet(_Net):
    """``(N, 1, 8, 32, 32)`` clips to 10 logits; ``features.relu`` is ``(N, 32, 8, 8, 8)``:
    every frame kept."""

    def __init__(self) -> None:
        super().__init__(pool=(1, 2, 2), last=(1, 3, 3))
