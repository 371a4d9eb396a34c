"""One small typed registry serving models, datasets and methods.

Entries are registered with a decorator (``@register_model("lenet5")``), as lazy modules whose
decorators run on the first lookup, or through a package entry-point group (``harness.methods``,
``harness.models``, ``harness.datasets``). Every entry is checked for its kind when it is added
(a function is not a method class); unknown names get a "did you mean"; a second entry under a
taken name is an error, never a silent override; :meth:`Registry.freeze` ends registration.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate registry name; the message says what is allowed."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class _Entry(Generic[T]):
    name: str
    source: str  # where the entry came from: "builtin", a plugin module, an entry point
    obj: T | None = None
    lazy: str | None = None  # "module:attr", imported on first use


class Registry(Generic[T]):
    """Name → object, with lazy entries, entry points and helpful errors.

    ``check(name, obj)`` returns what is wrong with ``obj`` as an entry of this kind (None: fine);
    a non-None answer refuses the registration with a :class:`RegistryError`.
    """

    def __init__(
        self,
        kind: str,
        entry_point_group: str | None = None,
        check: Callable[[str, object], str | None] | None = None,
    ) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._check = check
        self._entries: dict[str, _Entry[T]] = {}
        self._lazy_modules: list[str] = []
        self._entry_points_loaded = False
        self._frozen = False
        self._source = "builtin"

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T, source: str | None = None) -> None:
        source = source or self._source_of_object(obj)
        problem = self._check(name, obj) if self._check else None
        if problem:
            raise RegistryError(f"{self.kind} {name!r} from {source or self._source} is refused: {problem}")
        existing = self._entries.get(name)
        if existing is not None and existing.obj is None and existing.lazy == _qualified(obj):
            existing.obj = obj  # the lazy entry's module is being imported: fill it in
            return
        self._refuse_if_frozen(name, source)
        if existing is not None and existing.obj is not obj:
            raise RegistryError(
                f"{self.kind} {name!r} is registered twice: by {existing.source} and by "
                f"{source or self._source}; rename one of them"
            )
        self._entries[name] = _Entry(name, source or self._source, obj=obj)

    def _source_of_object(self, obj: object) -> str:
        """Outside a plugin scope, an object defined outside the harness names its own module, never "builtin"."""
        module = getattr(obj, "__module__", None) if hasattr(obj, "__qualname__") else None
        if (
            self._source == "builtin"
            and module
            and module not in ("harness", "builtins")
            and not module.startswith("harness.")
        ):
            return module
        return self._source

    def add_lazy(self, name: str, target: str, source: str | None = None) -> None:
        """Register ``"package.module:attr"`` without importing it yet (checked when it is imported)."""
        self._refuse_if_frozen(name, source)
        if name in self._entries:
            raise RegistryError(
                f"{self.kind} {name!r} is registered twice: by {self._entries[name].source} and by "
                f"{source or self._source}; rename one of them"
            )
        self._entries[name] = _Entry(name, source or self._source, lazy=target)

    def add_lazy_module(self, module: str) -> None:
        """Import ``module`` (whose decorators register entries) the first time a name is looked up."""
        self._lazy_modules.append(module)

    def freeze(self) -> None:
        """Load the pending modules and entry-point names, then refuse any new name: the set of entries a
        run started with is the set it ends with (a lazy entry is still imported on its first use)."""
        self._load_pending()
        self._frozen = True

    def thaw(self) -> None:
        """Allow registration again (the end of a run in a process that goes on, e.g. a notebook or a test)."""
        self._frozen = False

    def _refuse_if_frozen(self, name: str, source: str | None) -> None:
        if self._frozen:
            raise RegistryError(
                f"{self.kind} {name!r} from {source or self._source} is registered after the {self.kind} registry "
                "was frozen; register it in a plugin (--plugin, plugins:, an entry point) loaded before the run"
            )

    def loading_from(self, source: str) -> _SourceScope:
        """Context manager: entries registered inside are attributed to ``source``."""
        return _SourceScope(self, source)

    # -- lookup ---------------------------------------------------------------------------------
    def get(self, name: str) -> T:
        self._load_pending()
        entry = self._entries.get(name)
        if entry is None:
            raise RegistryError(self.unknown_message(name))
        if entry.obj is None:
            module_name, _, attr = entry.lazy.partition(":")
            obj = getattr(importlib.import_module(module_name), attr)
            problem = self._check(name, obj) if self._check else None
            if problem:
                raise RegistryError(f"{self.kind} {name!r} from {entry.source} is refused: {problem}")
            entry.obj = obj
        return entry.obj

    def __contains__(self, name: object) -> bool:
        self._load_pending()
        return name in self._entries

    def names(self) -> list[str]:
        self._load_pending()
        return sorted(self._entries)

    def source_of(self, name: str) -> str:
        self.get(name)
        return self._entries[name].source

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def unknown_message(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (known: {', '.join(names)})"

    def _load_pending(self) -> None:
        while self._lazy_modules:
            importlib.import_module(self._lazy_modules.pop(0))
        if self._entry_points_loaded or self.entry_point_group is None:
            return
        self._entry_points_loaded = True
        for ep in importlib.metadata.entry_points(group=self.entry_point_group):
            self.add_lazy(ep.name, ep.value, source=f"entry point {ep.value}")


def _qualified(obj: object) -> str:
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


class _SourceScope:
    def __init__(self, registry: Registry, source: str) -> None:
        self.registry, self.source, self.previous = registry, source, registry._source

    def __enter__(self) -> None:
        self.previous, self.registry._source = self.registry._source, self.source

    def __exit__(self, *exc: object) -> None:
        self.registry._source = self.previous
