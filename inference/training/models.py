"""MIML network architectures in torch, registered by architecture name.

Every model takes ``image`` float32[N, C, H, W] and ``features`` float32[N, F] — already preprocessed
exactly as :mod:`inference.preprocess` does at run time — and returns class probabilities
float32[N, K] (softmax inside, so the exported ONNX graph outputs probabilities). Training uses
:meth:`MimlNet.logits` for a numerically stable cross-entropy.

Architectures (see Islam et al., "MIML", the paper this project implements):

* ``miml-resnet18``: the paper's model. A ResNet-18 image branch (written out here: torchvision is
  not a dependency) with its classifier replaced by identity (512-d embedding), the feature MLP
  F→32→16 (the paper's ablation winner M7), and the fusion head
  concat → Linear 128 → BN → ReLU → Linear 16 → BN → ReLU → Linear K → softmax.
* ``miml-mini``: a two-stage CNN (~0.1 M parameters with the head) for ~0.1 ms CPU
  inference on 48×48 crops, with the same feature MLP and head.
* ``image-only`` / ``feature-only``: ablation baselines (mini CNN branch + head; MLP + head). They
  still accept both inputs so every model has the same ONNX signature; the unused input is
  multiplied by zero rather than dropped, because exporters prune unused graph inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mimlsort.errors import BackendUnavailable, ModelError

try:
    import torch
    from torch import nn
except ImportError as err:  # torch is the optional extra `train`; inference never needs it
    raise BackendUnavailable("training MIML models needs torch: install mimlsort[train]") from err

__all__ = [
    "ARCHITECTURES",
    "ArchInfo",
    "MimlNet",
    "build_model",
    "count_parameters",
]


# ---------------------------------------------------------------------------------------------
# branches


class BasicBlock(nn.Module):
    """ResNet basic block (two 3×3 convolutions with an identity or 1×1 projection shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18Branch(nn.Module):
    """ResNet-18 (He et al. 2016) with ``fc`` replaced by identity: a 512-d image embedding.

    Module names follow torchvision's, so a torchvision state dict (minus ``fc``) loads into it.
    """

    out_dim = 512

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64, 1), BasicBlock(64, 64, 1))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128, 1))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256, 1))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # zero-init the last BN of each block: every block starts as identity (torchvision's
        # zero_init_residual), which trains more stably from scratch on small data sets
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class MiniBranch(nn.Module):
    """Two conv stages for 48×48 crops, then a 3×3 pooled grid projected to a 192-d embedding.

    Stage 1 is a single stride-2 5×5 convolution and a pool, so no 3×3 convolution runs above
    12×12; stage 2 is two 3×3 convolutions at 12×12. ``widths`` are the three convolutions' output
    channels. The default (24, 32, 32) — ~2.5 M multiply-adds per two-channel input — runs the
    whole model in ~0.10 ms per cell on one core of this machine's CPU (ONNX Runtime, batch 1);
    the first release's (32, 64, 64) took ~0.24 ms for no better held-out accuracy on simulated
    cells, and the model's call is most of a sort decision's time. (A 3×3 convolution at 24×24
    cost 50 % more again.) The pooled grid (rather than a global average) keeps coarse position —
    where a cell bulges or trails matters.
    """

    out_dim = 192
    DEFAULT_WIDTHS = (24, 32, 32)

    def __init__(self, in_channels: int, widths: tuple[int, int, int] = DEFAULT_WIDTHS):
        super().__init__()
        c1, c2, c3 = (int(w) for w in widths)
        self.widths = (c1, c2, c3)
        self.stage1 = nn.Sequential(*_conv_bn(in_channels, c1, 5, 2), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(*_conv_bn(c1, c2), *_conv_bn(c2, c3), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(3)
        self.proj = nn.Sequential(nn.Linear(c3 * 9, self.out_dim), nn.ReLU(inplace=True))

    @staticmethod
    def widths_in(state_dict) -> tuple[int, int, int] | None:
        """The widths a saved mini branch was built with (from its weights' shapes), if it has one."""
        keys = ("image_branch.stage1.0.weight", "image_branch.stage2.0.weight", "image_branch.stage2.3.weight")
        if not all(k in state_dict for k in keys):
            return None
        return tuple(int(state_dict[k].shape[0]) for k in keys)

    def forward(self, x):
        return self.proj(torch.flatten(self.pool(self.stage2(self.stage1(x))), 1))


class FeatureMLP(nn.Module):
    """The paper's M7 feature branch: F → 32 → 16 with ReLU."""

    out_dim = 16

    def __init__(self, n_features: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_features, 32), nn.ReLU(inplace=True), nn.Linear(32, 16), nn.ReLU(inplace=True))

    def forward(self, x):
        return self.net(x)


class FusionHead(nn.Module):
    """concat → Linear 128 → BN → ReLU → Linear 16 → BN → ReLU → Linear K (logits)."""

    def __init__(self, in_dim: int, n_classes: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, 128), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
            nn.Linear(128, 16), nn.BatchNorm1d(16), nn.ReLU(inplace=True),
        )
        self.out = nn.Linear(16, n_classes)

    def forward(self, x):
        return self.out(self.net(x))


# ---------------------------------------------------------------------------------------------
# the model


class MimlNet(nn.Module):
    """Image branch and/or feature branch, fused by :class:`FusionHead`; outputs probabilities."""

    def __init__(
        self, arch: str, image_branch: nn.Module | None, feature_branch: nn.Module | None,
        in_channels: int, n_features: int, n_classes: int,
    ):
        super().__init__()
        if image_branch is None and feature_branch is None:
            raise ModelError(f"architecture {arch!r}: needs an image or a feature branch")
        self.arch = arch
        self.in_channels = in_channels
        self.n_features = n_features
        self.n_classes = n_classes
        self.image_branch = image_branch
        self.feature_branch = feature_branch
        dim = (image_branch.out_dim if image_branch is not None else 0) + (
            feature_branch.out_dim if feature_branch is not None else 0
        )
        self.head = FusionHead(dim, n_classes)

    def logits(self, image, features):
        parts = []
        if self.image_branch is not None:
            parts.append(self.image_branch(image))
        if self.feature_branch is not None:
            parts.append(self.feature_branch(features))
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        out = self.head(x)
        # a baseline ignores one input; keep it in the graph (×0) so the ONNX signature is the same
        if self.image_branch is None:
            out = out + 0.0 * image.mean(dim=(1, 2, 3)).unsqueeze(1)
        if self.feature_branch is None:
            out = out + 0.0 * features.mean(dim=1, keepdim=True)
        return out

    def forward(self, image, features):
        return torch.softmax(self.logits(image, features), dim=1)

    def replace_output(self, n_classes: int) -> None:
        """A fresh last layer for ``n_classes`` (transfer learning to a new set of classes)."""
        self.head.out = nn.Linear(self.head.out.in_features, n_classes)
        self.n_classes = n_classes


@dataclass(frozen=True, slots=True)
class ArchInfo:
    name: str
    description: str
    default_image_size: int  # square input side, pixels
    uses_image: bool
    uses_features: bool
    build: Callable[[int, int, int], MimlNet]  # (in_channels, n_features, n_classes) -> model


def _resnet18(c: int, f: int, k: int) -> MimlNet:
    return MimlNet("miml-resnet18", ResNet18Branch(c), FeatureMLP(f), c, f, k)


def _mini(c: int, f: int, k: int, widths: tuple[int, int, int] = MiniBranch.DEFAULT_WIDTHS) -> MimlNet:
    return MimlNet("miml-mini", MiniBranch(c, widths), FeatureMLP(f), c, f, k)


def _image_only(c: int, f: int, k: int, widths: tuple[int, int, int] = MiniBranch.DEFAULT_WIDTHS) -> MimlNet:
    return MimlNet("image-only", MiniBranch(c, widths), None, c, f, k)


def _feature_only(c: int, f: int, k: int) -> MimlNet:
    return MimlNet("feature-only", None, FeatureMLP(f), c, f, k)


#: architecture name -> how to build it
ARCHITECTURES: dict[str, ArchInfo] = {
    a.name: a
    for a in (
        ArchInfo("miml-resnet18", "paper model: ResNet-18 image branch + feature MLP F-32-16 + fusion head", 100, True, True, _resnet18),
        ArchInfo("miml-mini", "small two-stage CNN (48x48) + feature MLP F-32-16 + fusion head; ~0.1 ms on CPU", 48, True, True, _mini),
        ArchInfo("image-only", "baseline: the mini CNN branch + fusion head (ignores features)", 48, True, False, _image_only),
        ArchInfo("feature-only", "baseline: feature MLP F-32-16 + fusion head (ignores images)", 48, False, True, _feature_only),
    )
}


def arch_info(arch: str) -> ArchInfo:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise ModelError(f"unknown architecture {arch!r} (known: {', '.join(ARCHITECTURES)})") from None


def build_model(arch: str, *, in_channels: int, n_features: int, n_classes: int,
                widths: tuple[int, int, int] | None = None) -> MimlNet:
    """A freshly initialised model of architecture ``arch``; ``widths`` sets the mini CNN branch's
    channels (``miml-mini``, ``image-only``; default :attr:`MiniBranch.DEFAULT_WIDTHS`)."""
    info = arch_info(arch)
    if in_channels < 1 or n_features < 1 or n_classes < 2:
        raise ModelError(
            f"architecture {arch!r}: needs in_channels >= 1, n_features >= 1 and n_classes >= 2, "
            f"got {in_channels}, {n_features}, {n_classes}"
        )
    if widths is None:
        return info.build(in_channels, n_features, n_classes)
    if info.build not in (_mini, _image_only):
        raise ModelError(f"architecture {arch!r} has no mini CNN branch whose widths could be set")
    if len(widths) != 3 or min(widths) < 1:
        raise ModelError(f"architecture {arch!r}: widths must be three positive channel counts, got {widths}")
    return info.build(in_channels, n_features, n_classes, tuple(widths))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
