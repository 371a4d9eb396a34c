"""Measured inference latency: where theoretical speedup and practice part.

Every row gets ``latency_dense_ms`` (the dense pretrained model) and ``latency_ms`` (the model as
compressed at that level): the median wall time of one forward pass over a batch of
:data:`BATCH_SIZE` test examples under ``torch.inference_mode`` on the cell's device, after
:data:`WARMUP` passes, repeated up to :data:`MAX_REPEATS` times or until :data:`BUDGET_SECONDS`
have passed (at least :data:`MIN_REPEATS`). On the CPU both models run on one intra-op thread, as
a one-CPU cell does: with more, OpenMP threads still spinning after a dense kernel slow the next
sparse kernel (a different thread pool) by orders of magnitude, and the numbers become noise.

The compressed model runs on real sparse kernels where PyTorch has them:

- ``nn.Linear`` with a 2:4 sparse weight on a CUDA GPU that supports it:
  PyTorch's semi-structured sparse tensors (cuSPARSELt, else CUTLASS, which also takes float32
  but runs only on compute capability 8.x; on an H200 a float32 model has no 2:4 kernel);
- other ``nn.Linear`` with weight density ≤ :data:`CSR_MAX_DENSITY`: CSR sparse × dense ``addmm``;
- everything else (convolutions above all: PyTorch has no sparse convolution) runs dense.

Quantised weights run as their float values: no integer kernels are used, so quantisation shows
in size, not in latency. ``sparse_kernel_layers`` counts the layers that ran on a sparse kernel.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn, sparse
from torch.utils.data import Dataset

BATCH_SIZE = 64
WARMUP = 2
MIN_REPEATS = 3
MAX_REPEATS = 30
BUDGET_SECONDS = 0.05
CSR_MAX_DENSITY = 0.3


def latency_batch(dataset: Dataset, device: torch.device, size: int = BATCH_SIZE) -> torch.Tensor:
    """The first ``size`` inputs of ``dataset`` (cycled if it is smaller), on ``device``."""
    inputs = torch.stack([dataset[i % len(dataset)][0] for i in range(size)])
    return inputs.to(device)


@torch.inference_mode()
def median_ms(model: nn.Module, batch: torch.Tensor) -> float:
    """Median milliseconds of ``model(batch)`` in eval mode (see the module docstring)."""
    synchronize = torch.cuda.synchronize if batch.is_cuda else (lambda: None)
    was_training, threads = model.training, torch.get_num_threads()
    model.eval()
    if not batch.is_cuda:
        torch.set_num_threads(1)
    try:
        for _ in range(WARMUP):
            model(batch)
        synchronize()
        times: list[float] = []
        deadline = time.perf_counter() + BUDGET_SECONDS
        while len(times) < MIN_REPEATS or (len(times) < MAX_REPEATS and time.perf_counter() < deadline):
            start = time.perf_counter()
            model(batch)
            synchronize()
            times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
        torch.set_num_threads(threads)
    return 1e3 * statistics.median(times)


class CsrLinear(nn.Module):
    """``nn.Linear`` on a CSR weight: ``y = b + W x`` as one sparse × dense ``addmm``."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Sparse CSR tensor support is in beta state")
            self.weight = weight.to_sparse_csr()
        bias = linear.bias.detach() if linear.bias is not None else weight.new_zeros(weight.shape[0])
        self.bias = bias.unsqueeze(1)
        for hook in linear._forward_pre_hooks.values():  # e.g. activation fake-quantisation
            self.register_forward_pre_hook(hook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        return torch.addmm(self.bias, self.weight, flat.T).T.reshape(*x.shape[:-1], -1)


def _is_2_to_4(weight: torch.Tensor) -> bool:
    """At most 2 nonzeros in every group of 4 consecutive inputs."""
    if weight.shape[-1] % 4:
        return False
    return bool(((weight != 0).reshape(-1, 4).sum(dim=1) <= 2).all())


def _sparse_kernel(linear: nn.Linear) -> nn.Module | None:
    """The sparse replacement of ``linear`` (see the module docstring), or None to keep it dense."""
    weight = linear.weight.detach()
    if weight.is_cuda and _is_2_to_4(weight):
        # cuSPARSELt first; CUTLASS also takes float32, which cuSPARSELt refuses (but only on 8.x GPUs)
        for backend in (sparse.SparseSemiStructuredTensorCUSPARSELT, sparse.SparseSemiStructuredTensorCUTLASS):
            try:
                semi = copy.deepcopy(linear)
                semi.weight = nn.Parameter(backend.from_dense(weight), requires_grad=False)
                with torch.inference_mode():  # some kernels exist only for some GPUs: find out now
                    semi(weight.new_zeros(1, weight.shape[1]))
                return semi
            except (RuntimeError, ValueError):  # shape, dtype or GPU not supported by this backend
                continue
    density = float(torch.count_nonzero(weight)) / weight.numel()
    return CsrLinear(linear) if density <= CSR_MAX_DENSITY else None


def sparse_inference_model(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` whose sparse Linear layers run on sparse kernels, and how many do."""
    model = copy.deepcopy(model).requires_grad_(False)
    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and (kernel := _sparse_kernel(module)) is not None:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, kernel)
            replaced += 1
    return model, replaced


class LatencyMeter:
    """The latency columns of a cell's rows: the dense model is measured once, each level's model anew."""

    def __init__(
        self, dense_model: Callable[[], nn.Module], batch: torch.Tensor, dense_ms: float | None = None
    ) -> None:
        self._dense_model = dense_model
        self.batch = batch
        self.dense_ms = dense_ms  # known already when a worker measured this dense model for an earlier cell

    def columns(self, model: nn.Module) -> dict[str, float | int]:
        if self.dense_ms is None:
            self.dense_ms = median_ms(self._dense_model(), self.batch)
        compressed, sparse_layers = sparse_inference_model(model)
        return {
            "latency_dense_ms": self.dense_ms,
            "latency_ms": median_ms(compressed, self.batch),
            "sparse_kernel_layers": sparse_layers,
        }
