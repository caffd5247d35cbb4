"""swat_fx.models: torchvision-identical shapes and names, paper parameter counts, fx-traceability."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pytest
import torch
import torch.fx
from torch import nn

from swat_fx import models

# Models are built once per session: the ImageNet ones take a second or more each to initialise.
_build = functools.cache(models.build)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# The numbers torchvision reports for its own definitions (num_classes=1000).
TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "vgg16_bn": 138_365_992,
    "densenet121": 7_978_856,
    "wide_resnet50_2": 68_883_240,
}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "expected"), sorted(TORCHVISION_PARAMS.items()))
def test_imagenet_parameter_counts_match_torchvision(name: str, expected: int) -> None:
    assert _num_params(_build(name)) == expected


# CIFAR WRN-d-k, counted by hand. Widths (16, 16k, 32k, 64k), n = (d-4)/6 blocks per group. A block
# from c_in to c_out has BN(c_in) 2c_in + conv 9c_in c_out + BN(c_out) 2c_out + conv 9c_out^2, plus a
# 1x1 shortcut c_in c_out where c_in != c_out (only the first block of each group). Add the stem
# 3*16*9 = 432, the final BN 2*64k and the head 64k*10 + 10.
#   WRN-28-10 (n=4; 16,160,320,640): stem 432; group1 256,352 + 3*461,440 = 1,640,672;
#     group2 1,434,560 + 3*1,844,480 = 6,968,000; group3 5,736,320 + 3*7,375,360 = 27,862,400;
#     BN 1,280; fc 6,410 -> 36,479,194 (the paper's 36.5M).
#   WRN-16-8 (n=2; 16,128,256,512): stem 432; group1 168,224 + 295,424 = 463,648;
#     group2 918,272 + 1,180,672 = 2,098,944; group3 3,671,552 + 4,720,640 = 8,392,192;
#     BN 1,024; fc 5,130 -> 10,961,370 (the paper's 11.0M).
# The CIFAR ResNet-18 and VGG-16-BN match kuangliu/pytorch-cifar's 11,173,962 and 14,728,266.
CIFAR_PARAMS = {
    "wrn28_10": 36_479_194,
    "wrn16_8": 10_961_370,
    "resnet18_cifar": 11_173_962,
}


@pytest.mark.parametrize(("name", "expected"), sorted(CIFAR_PARAMS.items()))
def test_cifar_parameter_counts(name: str, expected: int) -> None:
    assert _num_params(_build(name)) == expected


def test_vgg16_bn_cifar_head_is_one_linear() -> None:
    model = models.vgg16_bn(num_classes=10, image_size=32)
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.in_features == 512
    assert _num_params(model) == 14_728_266
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "key", "shape"),
    [
        ("resnet18", "conv1.weight", (64, 3, 7, 7)),
        ("resnet18", "layer1.0.conv1.weight", (64, 64, 3, 3)),
        ("resnet18", "layer2.0.downsample.0.weight", (128, 64, 1, 1)),
        ("resnet18", "layer4.1.bn2.running_var", (512,)),
        ("resnet18", "fc.weight", (1000, 512)),
        ("resnet50", "layer1.0.conv3.weight", (256, 64, 1, 1)),
        ("resnet50", "layer4.0.conv2.weight", (512, 512, 3, 3)),
        ("resnet50", "layer4.0.downsample.0.weight", (2048, 1024, 1, 1)),
        ("resnet50", "layer4.0.downsample.1.num_batches_tracked", ()),
        ("wide_resnet50_2", "layer1.0.conv1.weight", (128, 64, 1, 1)),
        ("wide_resnet50_2", "layer4.2.conv3.weight", (2048, 1024, 1, 1)),
        ("vgg16_bn", "features.0.weight", (64, 3, 3, 3)),
        ("vgg16_bn", "features.41.weight", (512,)),
        ("vgg16_bn", "classifier.0.weight", (4096, 25088)),
        ("vgg16_bn", "classifier.6.weight", (1000, 4096)),
        ("densenet121", "features.conv0.weight", (64, 3, 7, 7)),
        ("densenet121", "features.denseblock1.denselayer1.conv1.weight", (128, 64, 1, 1)),
        ("densenet121", "features.denseblock1.denselayer6.norm2.weight", (128,)),
        ("densenet121", "features.denseblock4.denselayer16.conv2.weight", (32, 128, 3, 3)),
        ("densenet121", "features.transition1.conv.weight", (128, 256, 1, 1)),
        ("densenet121", "features.norm5.weight", (1024,)),
        ("densenet121", "classifier.weight", (1000, 1024)),
    ],
)
def test_state_dict_keys_match_torchvision(name: str, key: str, shape: tuple[int, ...]) -> None:
    state = _build(name).state_dict()
    assert key in state
    assert tuple(state[key].shape) == shape


def test_state_dict_key_counts_match_torchvision() -> None:
    # No extra or missing modules: each conv contributes 1 key, each BN 5 (weight, bias, running_mean,
    # running_var, num_batches_tracked), the head 2. resnet18: 20 convs, 20 BNs -> 122; resnet50:
    # 53 convs, 53 BNs -> 320; densenet121: 120 convs (stem, 2 per 58 dense layers, 3 transitions),
    # 121 BNs -> 727.
    assert len(_build("resnet18").state_dict()) == 122
    assert len(_build("resnet50").state_dict()) == 320
    assert len(_build("densenet121").state_dict()) == 727


def test_cifar_stem_keeps_names() -> None:
    imagenet, cifar = _build("resnet18").state_dict(), _build("resnet18_cifar").state_dict()
    assert imagenet.keys() == cifar.keys()
    assert tuple(cifar["conv1.weight"].shape) == (64, 3, 3, 3)
    assert isinstance(_build("resnet18_cifar").maxpool, nn.Identity)


def test_registry_kwargs_override_defaults() -> None:
    model = models.build("resnet18_cifar", num_classes=100, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 100)
    assert models.build("mlp", hidden=(32,))(torch.randn(2, 64)).shape == (2, 10)


def test_initialisation_like_torchvision() -> None:
    model = _build("resnet18")
    assert torch.equal(model.bn1.weight, torch.ones(64))
    assert torch.equal(model.bn1.bias, torch.zeros(64))
    fan_out = 64 * 7 * 7
    assert model.conv1.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)


def _expected_classes(name: str) -> int:
    return 1000 if models.default_input_shape(name)[-1] == 224 else 10


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_traces_and_runs(name: str) -> None:
    model = _build(name).eval()
    traced = torch.fx.symbolic_trace(model)
    shape = models.default_input_shape(name)
    assert shape[0] == 1
    # ImageNet-stem models end in adaptive pooling, so 64x64 exercises every layer at 1/12 the cost.
    if shape[-1] == 224:
        shape = (*shape[:-2], 64, 64)
    x = torch.randn(2, *shape[1:])
    with torch.no_grad():
        eager, graph = model(x), traced(x)
    assert eager.shape == (2, _expected_classes(name))
    torch.testing.assert_close(graph, eager)


def test_default_input_shapes() -> None:
    assert models.default_input_shape("resnet50") == (1, 3, 224, 224)
    assert models.default_input_shape("wrn28_10") == (1, 3, 32, 32)
    assert models.default_input_shape("small_cnn") == (1, 1, 8, 8)
    assert models.default_input_shape("mlp") == (1, 64)


@pytest.mark.parametrize("fn", [models.build, models.default_input_shape])
def test_unknown_name_lists_valid_names(fn: Callable[[str], object]) -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet9000'") as info:
        fn("resnet9000")
    for name in models.MODELS:
        assert name in str(info.value)
