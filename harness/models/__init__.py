"""Model zoo: factories registered by name; ``create_model`` builds any of them for a data set.

A factory takes ``(input_shape, num_classes)`` (input_shape without the batch dimension) and
returns an ``nn.Module`` whose last ``nn.Linear`` is the classifier. A model that cannot take an
input raises :class:`IncompatibleInput` saying why. Register one with ``@register_model("name")``
in a plugin module, or through the entry-point group ``harness.models``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

from torch import nn

from harness.registry import Registry


class IncompatibleInput(ValueError):
    """The model cannot take this data set's input shape or class count."""


ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


def _factory_problem(name: str, obj: object) -> str | None:
    """Why ``obj`` cannot be a model factory (None: it can)."""
    if not callable(obj):
        return f"it is a {type(obj).__name__}; a model is a callable (input_shape, num_classes) -> nn.Module"
    try:
        inspect.signature(obj).bind((1, 28, 28), 10)
    except TypeError as exc:
        return f"{getattr(obj, '__qualname__', obj)!s} cannot be called as factory(input_shape, num_classes): {exc}"
    except ValueError:  # a builtin without a signature: trust it
        pass
    return None


MODELS: Registry[ModelFactory] = Registry("model", entry_point_group="harness.models", check=_factory_problem)
register_model = MODELS.register

# Each module registers its factories with @register_model, exactly as a plugin does; imported on the first lookup.
for _module in ("lenet", "conv", "resnet_cifar", "vgg", "mnist1d", "resnet_imagenet"):
    MODELS.add_lazy_module(f"harness.models.{_module}")


def create_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MODELS.get(name)(tuple(input_shape), num_classes)


_TORCHVISION_RESNET = (  # torchvision's ResNet names -> this package's (same tensors, same order)
    (re.compile(r"^conv1\."), lambda m: "stem.0."),
    (re.compile(r"^bn1\."), lambda m: "stem.1."),
    (re.compile(r"^layer(\d)\.(\d+)\.conv(\d)\."), lambda m: f"stage{m[1]}.{m[2]}.residual.{3 * int(m[3]) - 3}."),
    (re.compile(r"^layer(\d)\.(\d+)\.bn(\d)\."), lambda m: f"stage{m[1]}.{m[2]}.residual.{3 * int(m[3]) - 2}."),
    (re.compile(r"^layer(\d)\.(\d+)\.downsample\.(\d)\."), lambda m: f"stage{m[1]}.{m[2]}.shortcut.{m[3]}."),
)


def from_torchvision(name: str, state: dict[str, Any]) -> dict[str, Any]:
    """A torchvision ResNet-18/50 state dict under this package's names (other models and files: as given).

    torchvision's ``resnet18``/``resnet50`` hold the same tensors as ``resnet18``/``resnet50`` here
    (v1.5, projection shortcuts), named ``layer1.0.conv1.weight`` where this one says
    ``stage1.0.residual.0.weight``; the caller still checks every name and shape.
    """
    if name not in ("resnet18", "resnet50") or not any(key.startswith("layer1.") for key in state):
        return state
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in _TORCHVISION_RESNET:
            key, count = pattern.subn(replacement, key, count=1)
            if count:
                break
        renamed[key] = value
    return renamed
