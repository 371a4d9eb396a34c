"""Methods: every pruning, training-time, quantisation and encoding method is a plugin class.

Built-ins are registered exactly as a user registers a plugin::

    from harness.methods import PruningMethod, register_method

    @register_method("smallest_weights_per_layer")
    class SmallestWeightsPerLayer(PruningMethod):
        scope = "layer"

        def score(self, ctx):
            return {name: w.abs() for name, w in ctx.weights.items()}

A method works through the :class:`~harness.methods.base.Job` protocol only, never the
scheduler, store or MLflow. Plugins come from ``--plugin MODULE_OR_PATH`` (or a spec's
``plugins:``) or from the entry-point groups ``harness.methods``, ``harness.models`` and
``harness.datasets``; a plugin module may register methods, models and data sets alike.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from harness.data import DATASETS
from harness.methods.base import CompressionMethod, Job, Method, PluginError, PruningContext, PruningMethod
from harness.models import MODELS
from harness.registry import Registry


def _method_problem(name: str, obj: object) -> str | None:
    """Why ``obj`` cannot be the method ``name`` (None: it can; its registered name is recorded on it)."""
    if not (isinstance(obj, type) and issubclass(obj, Method)):
        what = "a class not derived from Method" if isinstance(obj, type) else f"a {type(obj).__name__}"
        return f"it is {what}; a method is a subclass of harness.methods.Method (or PruningMethod, CompressionMethod)"
    missing = obj.missing_hooks()
    if missing:
        return f"{obj.__qualname__} does not define the required hook {' / '.join(missing)}"
    if "name" not in vars(obj):
        obj.name = name
    return None


METHODS: Registry[type[Method]] = Registry("method", entry_point_group="harness.methods", check=_method_problem)
register_method = METHODS.register
REGISTRIES = (METHODS, MODELS, DATASETS)

# Each built-in module registers its methods with @register_method, exactly as a plugin does. The
# names are declared here too (tests/test_registry.py checks they match the decorators), so a lookup
# imports only the module of the method asked for: planning a magnitude benchmark never imports
# Lightning, which the training-time methods' modules need.
BUILTIN_MODULES = {
    "harness.methods.score": (
        "random", "global_magnitude", "layer_magnitude", "global_gradient", "layer_gradient",
        "global_activation", "layer_activation",
    ),
    "harness.methods.pruning_at_init": ("snip", "grasp", "synflow"),
    "harness.methods.structured": ("filter_l1", "filter_l2", "nm_sparsity"),
    "harness.methods.schedules": ("iterative", "imp", "weight_rewinding", "lr_rewinding", "han_iterative"),
    "harness.methods.lottery": ("lottery_anatomy", "learned_supermask"),
    "harness.methods.dynamic": ("gmp", "set", "rigl"),
    "harness.methods.quantization": ("ptq", "qat", "kmeans"),
    "harness.methods.encoding": ("bitmask", "relative_index", "huffman", "sz", "bloomier"),
    "harness.methods.pipeline": ("pipeline", "deep_compression", "prune_int8_bitmask"),
}
for _module, _names in BUILTIN_MODULES.items():
    METHODS.add_lazy_module(_module, _names)


def create_method(name: str, params: dict | None = None) -> Method:
    return METHODS.get(name)(params)


def method_provenance(name: str, params: dict | None = None) -> dict[str, str | None]:
    """``method_version`` and ``method_source_hash`` of a cell's method, as its rows record them; None
    where the method cannot be built here (its plugin is not loaded, its registration was refused)."""
    try:
        method = create_method(name, params)
        return {"method_version": method.version, "method_source_hash": method.source_hash()}
    except Exception:  # provenance never fails a row; the row's error says what did
        return {"method_version": None, "method_source_hash": None}


def load_plugins(plugins: Iterable[str]) -> None:
    """Import plugin modules (dotted names or ``.py`` paths) so their registrations run.

    Safe to call again with the same plugins (in the driver and in every worker process). The
    built-ins are registered first, so a plugin that takes a built-in's name is the one refused.
    """
    plugins = list(plugins)
    if plugins:
        for registry in REGISTRIES:
            registry.names()
    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin).resolve()
            module_name = f"harness_plugin_{path.stem}"
            if module_name in sys.modules:
                continue
            if not path.exists():
                raise ImportError(f"plugin file {plugin} does not exist")
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            with _loading_from(f"plugin {plugin}"):
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
        elif plugin not in sys.modules:
            with _loading_from(f"plugin {plugin}"):
                try:
                    importlib.import_module(plugin)
                except ModuleNotFoundError as exc:
                    raise ImportError(f"plugin module {plugin!r} cannot be imported: {exc}") from None


@contextmanager
def _loading_from(source: str) -> Iterator[None]:
    with ExitStack() as stack:
        for registry in REGISTRIES:
            stack.enter_context(registry.loading_from(source))
        yield


@contextmanager
def frozen_registries() -> Iterator[None]:
    """Methods, models and data sets frozen (plugins and entry points loaded) for the duration of a run."""
    for registry in REGISTRIES:
        registry.freeze()
    try:
        yield
    finally:
        for registry in REGISTRIES:
            registry.thaw()


__all__ = [
    "METHODS",
    "CompressionMethod",
    "Job",
    "Method",
    "PluginError",
    "PruningContext",
    "PruningMethod",
    "create_method",
    "frozen_registries",
    "load_plugins",
    "method_provenance",
    "register_method",
]
