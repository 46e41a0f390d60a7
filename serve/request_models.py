"""A route's request fields (``Route.params``, a plain dataclass in the task's file) → the pydantic model that
checks them, so the HTTP layer keeps no per-task request classes.

Field metadata → pydantic: ``ge``, ``le``, ``description`` as they are; ``min_length`` / ``max_length`` bound a
list's length, or a string's after stripping its surrounding whitespace; ``item_max_length`` makes each string of a
list stripped and 1..N characters long; ``required`` makes the field required whatever its default. Unknown fields
are refused (``extra="forbid"``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from unip2.tasks.routes import Route

FIELD_CHECKS = ("ge", "le", "description")
KNOWN_METADATA = {"ge", "le", "min_length", "max_length", "item_max_length", "required", "description"}
WARM_UP_TEXT = "warm up"


class Params(BaseModel):
    """Base of every generated request model."""

    model_config = ConfigDict(extra="forbid")


def params_model(route: Route) -> type[Params]:
    """The pydantic model of ``route``'s request fields, named after its params dataclass."""
    hints = typing.get_type_hints(route.params)
    fields: dict[str, Any] = {}
    for field in dataclasses.fields(route.params):
        metadata = dict(field.metadata)
        unknown = set(metadata) - KNOWN_METADATA
        if unknown:
            raise ValueError(f"{route.params.__name__}.{field.name}: unknown metadata {sorted(unknown)} "
                             f"(known: {sorted(KNOWN_METADATA)})")
        annotation = hints[field.name]
        checks = {key: metadata[key] for key in FIELD_CHECKS if key in metadata}
        if _is_string(annotation):
            annotation = _stripped(annotation, metadata.get("min_length"), metadata.get("max_length"))
        else:
            checks |= {key: metadata[key] for key in ("min_length", "max_length") if key in metadata}
        if "item_max_length" in metadata:
            annotation = _with_string_items(annotation, metadata["item_max_length"], f"{route.params.__name__}."
                                                                                    f"{field.name}")
        fields[field.name] = (annotation, Field(_default(field, metadata), **checks))
    return create_model(route.params.__name__, __base__=Params, **fields)


def warm_up_params(model: type[Params]) -> dict[str, Any]:
    """Valid fields for a synthetic request: the defaults, and for a required field the smallest value its checks
    allow (text ``"warm up"``, numbers at their lower bound) → as ``ServeRequest.params`` (None left out)."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if not info.is_required():
            continue
        values[name] = _sample(info.annotation, info.metadata)
    return model.model_validate(values).model_dump(exclude_none=True)


# ----------------------------------------------------------------------------------- internals
def _default(field: dataclasses.Field, metadata: dict) -> Any:
    if metadata.get("required"):
        return ...
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return ...


def _optional_parts(annotation) -> tuple[Any, bool]:
    """``X | None`` → (X, True); anything else → (itself, False)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _is_string(annotation) -> bool:
    return _optional_parts(annotation)[0] is str


def _stripped(annotation, min_length: int | None, max_length: int | None):
    """``str`` (or ``str | None``) → the same, stripped of surrounding whitespace, then length-checked."""
    base, optional = _optional_parts(annotation)
    text = Annotated[base, StringConstraints(strip_whitespace=True, min_length=min_length, max_length=max_length)]
    return text | None if optional else text


def _with_string_items(annotation, item_max_length: int, where: str):
    """``list[str]`` (or ``list[str] | None``) → a list of stripped strings of 1..item_max_length characters."""
    base, optional = _optional_parts(annotation)
    if typing.get_origin(base) is not list or typing.get_args(base) != (str,):
        raise ValueError(f"{where}: item_max_length applies to list[str] fields, not {annotation}")
    item = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=item_max_length)]
    return list[item] | None if optional else list[item]


def _sample(annotation, metadata: list) -> Any:
    base, _ = _optional_parts(annotation)
    lower = next((getattr(m, "ge") for m in metadata if getattr(m, "ge", None) is not None), None)
    if typing.get_origin(base) is list:
        return [WARM_UP_TEXT]
    if base is int:
        return int(lower) if lower is not None else 1
    if base is float:
        return float(lower) if lower is not None else 0.0
    if base is bool:
        return False
    return WARM_UP_TEXT


def route_description(route: Route) -> dict[str, Any]:
    """What a client needs to build a form for ``route`` (the demo page builds its forms from it): the path, the
    image field, how an answer is shown, example values and each request field's kind, bounds and default."""
    schema = params_model(route).model_json_schema()
    required = set(schema.get("required", []))
    fields = []
    for name, prop in schema.get("properties", {}).items():
        kinds = [option for option in prop.get("anyOf", [prop]) if option.get("type") != "null"]
        main = kinds[0] if kinds else {}
        kind = main.get("type", "string")
        if kind == "array":
            kind = f"list of {main.get('items', {}).get('type', 'string')}"
        fields.append({"name": name, "kind": kind, "required": name in required, "default": prop.get("default"),
                       "description": prop.get("description", ""),
                       **{bound: main[bound] for bound in ("minimum", "maximum") if bound in main}})
    return {"path": route.path, "summary": route.summary, "images": route.images, "uses_gallery": route.uses_gallery,
            "shows": route.shows, "example": dict(route.example), "fields": fields}
