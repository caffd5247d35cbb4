"""The architectures of the SWAT paper, written without torchvision.

torchvision's wheels cannot be installed next to the CPU torch used here, so the ImageNet models are
re-declared with torchvision's module names, layer order and shapes: a torchvision checkpoint's
state_dict loads into them unchanged. The CIFAR variants (ResNet with a 3x3 stem, WRN-16-8, WRN-28-10,
VGG-16-BN with a single linear head) follow the reference implementations the paper trained. Every
model has a static forward (no data-dependent control flow, `torch.flatten` rather than `.view`), so
`torch.fx.symbolic_trace` captures it whole.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MODELS",
    "VGG",
    "BasicBlock",
    "Bottleneck",
    "DenseNet",
    "ResNet",
    "WideBasicBlock",
    "WideResNet",
    "build",
    "default_input_shape",
    "densenet121",
    "mlp",
    "resnet18",
    "resnet34",
    "resnet50",
    "small_cnn",
    "vgg16_bn",
    "wide_resnet50_2",
    "wrn16_8",
    "wrn28_10",
]

STEMS = ("imagenet", "cifar")


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def _init_conv_bn(model: nn.Module, conv_mode: str = "fan_out") -> None:
    """torchvision's initialisation: Kaiming-normal convs (zero bias), BatchNorm as the identity."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------- ResNet


class BasicBlock(nn.Module):
    """torchvision's two-3x3 residual block (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if base_width != 64:
            raise ValueError("BasicBlock only supports base_width=64")
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's 1x1-3x3-1x1 block, stride on the 3x3 conv (ResNet v1.5); `base_width` widens it."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0))
        self.conv1 = _conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet; `stem="cifar"` swaps the 7x7/2 conv + maxpool for a 3x3/1 conv (kuangliu).

    The CIFAR stem keeps the attribute `maxpool` (as `nn.Identity`) so both stems share state_dict keys
    apart from the shape of `conv1.weight`.
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        stem: str = "imagenet",
        in_channels: int = 3,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; expected one of {STEMS}")
        self.inplanes = 64
        self.base_width = base_width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = _conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        if stem == "imagenet":
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.maxpool = nn.Identity()
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        _init_conv_bn(self)

    def _make_layer(
        self, block: type[BasicBlock | Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, base_width=self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, base_width=self.base_width) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(num_classes: int = 1000, stem: str = "imagenet", in_channels: int = 3) -> ResNet:
    """ResNet-18 (11.7M parameters at 1000 classes)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, stem, in_channels)


def resnet34(num_classes: int = 1000, stem: str = "imagenet", in_channels: int = 3) -> ResNet:
    """ResNet-34 (21.8M parameters at 1000 classes)."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, stem, in_channels)


def resnet50(num_classes: int = 1000, stem: str = "imagenet", in_channels: int = 3) -> ResNet:
    """ResNet-50 v1.5 (25.6M parameters at 1000 classes)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, stem, in_channels)


def wide_resnet50_2(num_classes: int = 1000, stem: str = "imagenet", in_channels: int = 3) -> ResNet:
    """torchvision's Wide ResNet-50-2: ResNet-50 with bottleneck width doubled (width_per_group=128)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, stem, in_channels, base_width=128)


# ------------------------------------------------------------------------------------------------ VGG

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class VGG(nn.Module):
    """torchvision's VGG with batch norm; `image_size <= 32` selects the CIFAR head.

    At 224 the head is torchvision's: AdaptiveAvgPool2d((7, 7)) then Linear(25088, 4096)-ReLU-Dropout,
    Linear(4096, 4096)-ReLU-Dropout, Linear(4096, num_classes). At CIFAR resolution the five maxpools
    already reduce the map to 1x1, so the head is AdaptiveAvgPool2d(1) and a single
    Linear(512, num_classes) (the usual CIFAR VGG), dropping ~119M parameters that would only see a
    replicated 1x1 map.
    """

    def __init__(
        self,
        cfg: tuple[int | str, ...] = VGG16_CFG,
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                assert isinstance(v, int)
                conv = nn.Conv2d(channels, v, kernel_size=3, padding=1)
                layers += [conv, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.classifier: nn.Module
        if image_size <= 32:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(channels, num_classes)
        else:
            self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(channels * 7 * 7, 4096),
                nn.ReLU(True),
                nn.Dropout(p=dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
                nn.Dropout(p=dropout),
                nn.Linear(4096, num_classes),
            )
        _init_conv_bn(self)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def vgg16_bn(num_classes: int = 1000, in_channels: int = 3, image_size: int = 224) -> VGG:
    """VGG-16-BN: torchvision's (138.4M parameters) at 224, one linear head for 32x32 (see `VGG`)."""
    return VGG(VGG16_CFG, num_classes, in_channels, image_size)


# ------------------------------------------------------------------------------------------- DenseNet


class _DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv-BN-ReLU-3x3 conv on the concatenation of all earlier feature maps."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = _conv1x1(num_input_features, bn_size * growth_rate)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(bn_size * growth_rate, growth_rate)
        self.drop_rate = float(drop_rate)

    def forward(self, features: list[Tensor]) -> Tensor:
        out = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        out = self.conv2(self.relu2(self.norm2(out)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class _DenseBlock(nn.ModuleDict):
    """`num_layers` dense layers named denselayer1..N, each fed every earlier output (torchvision)."""

    def __init__(
        self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int, drop_rate: float
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-1x1 conv-2x2 avgpool between dense blocks, halving channels and resolution."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = _conv1x1(num_input_features, num_output_features)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """torchvision's DenseNet-BC without memory-efficient checkpointing (so torch.fx can trace it).

    Convs use torchvision's DenseNet initialisation, Kaiming-normal with fan_in (not fan_out).
    """

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv0", nn.Conv2d(in_channels, num_init_features, 7, stride=2, padding=3, bias=False)),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        _init_conv_bn(self, conv_mode="fan_in")
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.features(x), inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


def densenet121(num_classes: int = 1000, in_channels: int = 3) -> DenseNet:
    """DenseNet-121 (growth 32, blocks 6-12-24-16; 8.0M parameters at 1000 classes)."""
    return DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes, in_channels=in_channels)


# ------------------------------------------------------------------------------------- CIFAR WRN


class WideBasicBlock(nn.Module):
    """Pre-activation block of Zagoruyko & Komodakis: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3.

    Where the shape changes the shortcut is a 1x1 conv applied to the pre-activated input (as in the
    authors' code); otherwise it is the raw input.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(p=dropout)
        self.conv2 = _conv3x3(out_planes, out_planes)
        self.shortcut = (
            None if in_planes == out_planes and stride == 1 else _conv1x1(in_planes, out_planes, stride)
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu1(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu2(self.bn2(out))))
        identity = x if self.shortcut is None else self.shortcut(pre)
        return out + identity


class WideResNet(nn.Module):
    """CIFAR WRN-depth-k: a 3x3 stem of 16 channels, three groups of widths 16k, 32k, 64k."""

    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int = 10,
        dropout: float = 0.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = _conv3x3(in_channels, widths[0])
        self.block1 = self._make_group(widths[0], widths[1], n, 1, dropout)
        self.block2 = self._make_group(widths[1], widths[2], n, 2, dropout)
        self.block3 = self._make_group(widths[2], widths[3], n, 2, dropout)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)
        _init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    @staticmethod
    def _make_group(in_planes: int, out_planes: int, n: int, stride: int, dropout: float) -> nn.Sequential:
        blocks = [WideBasicBlock(in_planes, out_planes, stride, dropout)]
        blocks += [WideBasicBlock(out_planes, out_planes, 1, dropout) for _ in range(1, n)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.avgpool(self.relu(self.bn1(x)))
        return self.fc(torch.flatten(x, 1))


def wrn16_8(num_classes: int = 10, dropout: float = 0.0, in_channels: int = 3) -> WideResNet:
    """WRN-16-8 for CIFAR (11.0M parameters at 10 classes)."""
    return WideResNet(16, 8, num_classes, dropout, in_channels)


def wrn28_10(num_classes: int = 10, dropout: float = 0.0, in_channels: int = 3) -> WideResNet:
    """WRN-28-10 for CIFAR (36.5M parameters at 10 classes)."""
    return WideResNet(28, 10, num_classes, dropout, in_channels)


# ------------------------------------------------------------------------------------- small models


def small_cnn(num_classes: int = 10, in_channels: int = 1) -> nn.Sequential:
    """A ~24k-parameter CNN for 8x8 digits (sklearn load_digits): real data, trains in seconds on CPU."""
    model = nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(in_channels, 16, kernel_size=3, padding=1)),
        ("bn1", nn.BatchNorm2d(16)),
        ("relu1", nn.ReLU(inplace=True)),
        ("conv2", nn.Conv2d(16, 32, kernel_size=3, padding=1)),
        ("bn2", nn.BatchNorm2d(32)),
        ("relu2", nn.ReLU(inplace=True)),
        ("pool", nn.MaxPool2d(2)),
        ("conv3", nn.Conv2d(32, 64, kernel_size=3, padding=1)),
        ("bn3", nn.BatchNorm2d(64)),
        ("relu3", nn.ReLU(inplace=True)),
        ("avgpool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(64, num_classes)),
    ]))
    _init_conv_bn(model)
    return model


def mlp(in_features: int = 64, hidden: tuple[int, ...] = (256, 256), num_classes: int = 10) -> nn.Sequential:
    """Flatten then Linear-ReLU per hidden width then a Linear head: the simplest SWAT linear target."""
    layers: list[nn.Module] = [nn.Flatten()]
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------ registry

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet18_cifar": partial(resnet18, num_classes=10, stem="cifar"),
    "resnet34": resnet34,
    "resnet34_cifar": partial(resnet34, num_classes=10, stem="cifar"),
    "resnet50": resnet50,
    "resnet50_cifar": partial(resnet50, num_classes=10, stem="cifar"),
    "vgg16_bn": vgg16_bn,
    "densenet121": densenet121,
    "wrn16_8": wrn16_8,
    "wrn28_10": wrn28_10,
    "wide_resnet50_2": wide_resnet50_2,
    "small_cnn": small_cnn,
    "mlp": mlp,
}

_IMAGENET_SHAPE = (1, 3, 224, 224)
_CIFAR_SHAPE = (1, 3, 32, 32)
_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "resnet18": _IMAGENET_SHAPE,
    "resnet18_cifar": _CIFAR_SHAPE,
    "resnet34": _IMAGENET_SHAPE,
    "resnet34_cifar": _CIFAR_SHAPE,
    "resnet50": _IMAGENET_SHAPE,
    "resnet50_cifar": _CIFAR_SHAPE,
    "vgg16_bn": _IMAGENET_SHAPE,
    "densenet121": _IMAGENET_SHAPE,
    "wrn16_8": _CIFAR_SHAPE,
    "wrn28_10": _CIFAR_SHAPE,
    "wide_resnet50_2": _IMAGENET_SHAPE,
    "small_cnn": (1, 1, 8, 8),
    "mlp": (1, 64),
}


def _check_name(name: str) -> None:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(sorted(MODELS))}")


def build(name: str, **kwargs: object) -> nn.Module:
    """Construct a registered model by name, passing `kwargs` to its constructor (CLI and benchmarks)."""
    _check_name(name)
    return MODELS[name](**kwargs)


def default_input_shape(name: str) -> tuple[int, ...]:
    """A batch-1 input shape the default-constructed model accepts, so callers need no per-model table."""
    _check_name(name)
    return _INPUT_SHAPES[name]
