"""TinyNet: a small CNN in plain torch, the backbone family of this plugin."""

from __future__ import annotations

import itertools

import torch
from torch import nn


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyNet(nn.Module):
    """A stem, one stage per extra width (each halves the resolution), a linear head.

    ``num_classes=0`` replaces the head by ``nn.Identity``: the model returns its pooled
    features (``widths[-1]`` of them).
    """

    def __init__(self, widths: tuple[int, ...], num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.widths = tuple(widths)
        self.stem = conv_bn_relu(in_chans, widths[0])
        self.stages = nn.Sequential(
            *(
                nn.Sequential(conv_bn_relu(cin, cout, stride=2), conv_bn_relu(cout, cout))
                for cin, cout in itertools.pairwise(widths)
            )
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(widths[-1], num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(self.pool(x), 1))
