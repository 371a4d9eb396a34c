"""The one formatter of bad input: a pydantic error becomes lines naming the field and what is allowed.

Everything that checks user input raises plain ``ValueError`` or pydantic ``ValidationError``;
only :func:`describe` turns them into text. A method whose parameters hold another method's
(a pipeline's stages, ``iterative``'s ``score_params``) validates them with :func:`validate_nested`,
which keeps the inner field's place, so the message names ``methods[0].stages[1].bits`` rather
than a paragraph built by the method. Messages never print the value the user gave beyond a short
excerpt: formatting an expanded YAML alias bomb must not cost minutes.
"""

from __future__ import annotations

import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

M = TypeVar("M", bound=BaseModel)
MESSAGE_LIMIT = 400  # characters of one line of a message
MESSAGE_LINES = 20  # lines of one message: 100,000 bad seeds are not 100,000 lines


class SpecError(ValueError):
    """Invalid benchmark input; ``str()`` is the one message shown to the user."""


def describe(exc: ValidationError, root: type[BaseModel], prefix: str = "") -> list[str]:
    """One ``field: what is wrong`` line per error of ``exc`` (raised validating ``root``)."""
    errors = exc.errors(include_url=False, include_input=False)
    lines = []
    for error in errors:
        if error["type"] == "too_short" and _explained_inside(error["loc"], errors):
            continue  # "at least 1 item after validation": its items' own errors say why
        loc = [str(p) for p in error["loc"] if p not in ("function-before", "function-after")]
        field = join_field(prefix, dotted(loc)) or "(top level)"
        if error["type"] == "extra_forbidden":
            message = unknown_key(allowed_keys(root, loc[:-1]))
        else:
            message = error["msg"].removeprefix("Value error, ")
        lines.append(clip(f"{field}: {message}"))
    if len(lines) > MESSAGE_LINES:
        lines[MESSAGE_LINES:] = [f"… and {len(lines) - MESSAGE_LINES} more errors like these"]
    return lines


def clip(line: str, limit: int = MESSAGE_LIMIT) -> str:
    """``line`` cut to ``limit`` characters: a user's key or value may be megabytes long."""
    return line if len(line) <= limit else f"{line[:limit]}… ({len(line)} characters)"


def _explained_inside(loc: tuple, errors: list) -> bool:
    return any(len(other["loc"]) > len(loc) and other["loc"][: len(loc)] == loc for other in errors)


def validate_nested(model: type[M], data: Any, loc: tuple[str | int, ...]) -> M:
    """``model.model_validate(data)`` whose errors sit at ``loc`` (relative to the validator calling it:
    a field validator's own field is prepended by pydantic, a model validator's is not)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details: list[InitErrorDetails] = []
        for error in exc.errors(include_url=False):
            if error["type"] == "extra_forbidden":  # the outer formatter cannot know this model's keys
                known = allowed_keys(model, [str(p) for p in error["loc"][:-1]])
                kind = PydanticCustomError("unknown_key", unknown_key(known))
                details.append({"type": kind, "loc": loc + error["loc"], "input": None})
            else:
                details.append(
                    {"type": error["type"], "loc": loc + error["loc"], "input": None, "ctx": error.get("ctx", {})}
                )
        raise ValidationError.from_exception_data(exc.title, details) from None


def fail_at(loc: tuple[str | int, ...], message: str) -> ValidationError:
    """An error at ``loc`` (see :func:`validate_nested` for what it is relative to) saying ``message``."""
    return ValidationError.from_exception_data(
        "harness", [{"type": PydanticCustomError("value_error", message), "loc": loc, "input": None}]
    )


def unknown_key(allowed: list[str]) -> str:
    return f"unknown key; allowed keys: {', '.join(allowed)}"


def dotted(loc: list[str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def join_field(prefix: str, field: str) -> str:
    if not prefix or not field:
        return prefix.rstrip(".") + field
    return prefix + field if field.startswith("[") or prefix.endswith(".") else f"{prefix}.{field}"


def allowed_keys(root: type[BaseModel], loc: list[str]) -> list[str]:
    """The keys the model at ``loc`` (a path of field names and list indices) accepts."""
    model = root
    for part in loc:
        if not part.isdigit() and part in model.model_fields:
            model = _model_in(model.model_fields[part].annotation) or model
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_model_in, typing.get_args(annotation))), None)
