"""LUSNet-S: a small depthwise-separable CNN for grayscale LUS frames.

Outputs per frame: class probabilities (covid / other pneumonia / normal), severity
probabilities (Soldati 0-3), an uncertainty (normalised class entropy) and a class
activation map. The class head is a 1x1 convolution followed by global average pooling,
which is the same function as GAP + linear, so the CAM is the pre-pooling map itself.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .preprocess import INPUT_SIZE

WIDTHS = [(24, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1), (128, 192, 2), (192, 192, 1)]


def dwsep(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False),
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class LusNet(nn.Module):
    def __init__(self, dropout: float = 0.3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*[dwsep(a, b, s) for a, b, s in WIDTHS])
        c = WIDTHS[-1][1]
        self.drop = nn.Dropout2d(dropout)
        self.cls_head = nn.Conv2d(c, 3, 1)
        self.sev_head = nn.Conv2d(c, 4, 1)

    @staticmethod
    def normalise(x: torch.Tensor) -> torch.Tensor:
        # Per-frame standardisation: removes device gain and video-range (16-235) differences.
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        v = ((x - m) ** 2).mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) / torch.sqrt(v + 1.0)

    def forward_logits(self, x: torch.Tensor):
        f = self.drop(self.blocks(self.stem(self.normalise(x))))
        cam = self.cls_head(f)
        cls_logits = cam.mean(dim=(2, 3))
        sev_logits = self.sev_head(f).mean(dim=(2, 3))
        return cls_logits, sev_logits, cam

    def forward(self, x: torch.Tensor):
        cls_logits, sev_logits, cam = self.forward_logits(x)
        p = torch.softmax(cls_logits, dim=1)
        unc = -(p * torch.log(p.clamp_min(1e-8))).sum(dim=1) / math.log(3.0)
        return p, torch.softmax(sev_logits, dim=1), unc, cam


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: int = INPUT_SIZE) -> int:
    """Multiply-accumulates of convolutions for one frame (the rest is negligible)."""
    macs = 0

    def hook(mod, inp, out):
        nonlocal macs
        k = mod.kernel_size[0] * mod.kernel_size[1] * (mod.in_channels // mod.groups)
        macs += out.numel() // out.shape[0] * k

    hs = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, size, size))
    for h in hs:
        h.remove()
    return macs


def export_onnx(model: nn.Module, path: str) -> None:
    model.eval()
    dummy = torch.rand(2, 1, INPUT_SIZE, INPUT_SIZE) * 255
    torch.onnx.export(
        model,
        (dummy,),
        path,
        input_names=["frames"],
        output_names=["class_probs", "severity_probs", "uncertainty", "cam"],
        dynamic_axes={k: {0: "n"} for k in ["frames", "class_probs", "severity_probs", "uncertainty", "cam"]},
        opset_version=17,
        dynamo=False,
    )
