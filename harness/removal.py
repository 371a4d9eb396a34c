"""Physical channel removal: channels that pruning emptied leave the model, through Torch-Pruning's dependency graph.

Torch-Pruning traces the model and groups the layers a channel couples (the convolutions and
linears that write it, the norms that scale it, the layers that read it, through residual adds,
flattening and concatenation). A channel of a group is removed only where removing it changes
nothing the model computes, so the smaller model is the masked one with its zeros left out:

- every writer's filter and bias at the channel, and every norm's scale and shift, are pruned
  (:func:`harness.metrics.kept_pattern`), and
- every reader sees the channel zero for every input (:func:`harness.metrics.live_inputs`).

A group holding a norm that pools statistics over channels (GroupNorm, LayerNorm: without the
channel they would change), a grouped convolution that is not depthwise (its groups must stay
equal) or any other layer with parameters keeps its channels. On a residual network a channel of
the residual stream goes only where every block writing it removed it; otherwise it stays, masked.
After removal the model's outputs are compared with the masked model's on the example batch: a
difference is an error, never a silently different model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from harness.masks import PRUNABLE_LAYERS, Masks, classifier_name
from harness.metrics import kept_pattern, live_inputs

# layers with parameters whose channels can go one at a time without changing the others' outputs
_PER_CHANNEL = (*PRUNABLE_LAYERS, nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
History = list[tuple[str, bool, list[int]]]  # Torch-Pruning's pruning history: (module, out channels?, indices)


@dataclass
class Removal:
    """What :func:`remove_pruned_channels` did: the masks sliced to the new shapes, the channels removed
    and Torch-Pruning's history of it (plain data: replayed on a fresh model by :func:`replay`)."""

    masks: Masks
    channels: int
    history: History
    kept_removed: dict[str, int]  # entries not pruned (nonzero) that went with a removed channel: they read it


def _dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    was_training = model.training
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    finally:
        model.train(was_training)


def residual_writers(model: nn.Module, example: torch.Tensor) -> set[str]:
    """The Conv/Linear layers whose output channels an addition ties to a shortcut (a residual stream's
    writers): every layer writing the channels of a Torch-Pruning group that holds an add. The trace runs
    in eval mode, so BatchNorm statistics stay as they are."""
    was_training = model.training
    try:
        graph = _dependency_graph(model.eval(), example)
    finally:
        model.train(was_training)
    names = {module: name for name, module in model.named_modules()}
    writers: set[str] = set()
    for group in graph.get_all_groups(root_module_types=PRUNABLE_LAYERS):
        nodes = [item.dep.target for item in group.items]
        if not any(node.type == tp.ops.OPTYPE.ELEMENTWISE and "Add" in type(node.grad_fn).__name__ for node in nodes):
            continue
        for item in group.items:
            module = item.dep.target.module
            if isinstance(module, PRUNABLE_LAYERS) and graph.is_out_channel_pruning_fn(item.dep.handler):
                writers.add(names[module])
    return writers


def _removable(graph: tp.DependencyGraph, group: tp.Group, kept: dict[str, torch.Tensor], live: dict) -> list[int]:
    """The root indices of ``group`` whose channel is emptied in every layer of the group (see the module docstring)."""
    names = {module: name for name, module in graph.model.named_modules()}
    removable: set[int] | None = None
    for item in group.items:
        module, handler = item.dep.target.module, item.dep.handler
        own = list(module.named_parameters(recurse=False)) if isinstance(module, nn.Module) else [("", module)]
        if not own:  # a reshape, add, pool, ... of Torch-Pruning's trace: nothing of the channel lives there
            continue
        if not isinstance(module, _PER_CHANNEL) or _grouped(module):
            return []
        name = names[module]
        removable = set(item.root_idxs) if removable is None else removable & set(item.root_idxs)
        writes = not isinstance(module, PRUNABLE_LAYERS) or graph.is_out_channel_pruning_fn(handler)
        reads = isinstance(module, PRUNABLE_LAYERS) and graph.is_in_channel_pruning_fn(handler)
        for index, root in zip(item.idxs, item.root_idxs, strict=True):
            if writes and any(bool(kept[f"{name}.{param}"][index].any()) for param, _ in own):
                removable.discard(root)
            if reads and name in live and bool(live[name][index]):
                removable.discard(root)
    return sorted(removable or ())


def _grouped(module: nn.Module) -> bool:
    """A grouped convolution that is not depthwise: its groups must keep equal widths, so no channel goes alone."""
    groups = getattr(module, "groups", 1)
    return 1 < groups < module.out_channels


def remove_pruned_channels(model: nn.Module, masks: Masks, example: torch.Tensor) -> Removal:
    """Remove in place every channel of ``model`` that its pruning emptied; ``masks`` are sliced to the new
    shapes. ``example``: a batch of real inputs (two or more), used for tracing and the equivalence check."""
    was_training = model.training
    try:
        return _remove(model.eval(), masks, example)
    finally:
        model.train(was_training)


def _remove(model: nn.Module, masks: Masks, example: torch.Tensor) -> Removal:
    pattern = kept_pattern(model)
    live, _ = live_inputs(model, example, pattern)
    classifier = model.get_submodule(classifier_name(model))
    with torch.no_grad():
        before = model(example)
    graph = _dependency_graph(model, example)
    plan = []
    for group in graph.get_all_groups(ignored_layers=[classifier], root_module_types=PRUNABLE_LAYERS):
        if idxs := _removable(graph, group, pattern, live):
            root = group[0].dep
            plan.append((root.target.module, root.handler, idxs))
    twin = _mask_twin(model, masks)  # the masks travel with the weights: the same removal on a model made of them
    for module, handler, idxs in plan:
        graph.get_pruning_group(module, handler, idxs).prune()
    history = [(name, bool(out), [int(getattr(i, "idx", i)) for i in idxs]) for name, out, idxs in
               graph.pruning_history()]  # fmt: skip
    replay(twin, history, example)
    with torch.no_grad():
        after = model(example)
    scale = float(before.abs().max().clamp_min(1.0))
    if after.shape != before.shape or float((after - before).abs().max()) > 1e-4 * scale:
        raise RuntimeError("removing the pruned channels changed the model's outputs; Torch-Pruning grouped it wrongly")
    params = dict(twin.named_parameters())
    sliced = {name: params[name].detach() > 0.5 for name in masks}
    left = kept_pattern(model)
    kept_removed = {name: int(pattern[name].sum()) - int(left[name].sum()) for name in pattern}
    return Removal(sliced, sum(len(idxs) for _, _, idxs in plan), history, kept_removed)


def _mask_twin(model: nn.Module, masks: Masks) -> nn.Module:
    """A copy of ``model`` whose parameters are its masks (1 kept, 0 pruned; 1 where unmasked)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in twin.named_parameters():
            param.copy_(masks[name].to(param.dtype) if name in masks else torch.ones_like(param))
    return twin


def replay(model: nn.Module, history: History, example: torch.Tensor) -> nn.Module:
    """Remove from a model of the original shapes the channels ``history`` removed (an exported model's shapes)."""
    if history:
        graph = _dependency_graph(model, example)
        graph.load_pruning_history([(name, out, list(idxs)) for name, out, idxs in history])
    return model
