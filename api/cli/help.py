"""Help screens in the shape people know from click: ``TEXT``, ``PATH``, ``[en|zh|both]``.

Typer (0.2x) prints Python annotations as types (``<bool>`` after every flag, ``<list[Path]>``)
and writes required arguments as ``{inputs}...`` in the usage line. :func:`tidy_params` gives the
parameters of a command click's notation instead: flags show no type, values show an upper-case
type name or their choices, arguments are ``INPUTS...`` (required) or ``[JOB_ID]`` (optional).
It changes only how parameters are displayed, never how they are parsed.
"""

from __future__ import annotations

from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any, get_args

_TYPE_NAMES: dict[Any, str] = {
    str: "TEXT",
    int: "INTEGER",
    float: "FLOAT",
    bool: "BOOLEAN",
    Path: "PATH",
}


def type_label(param: Any) -> str | None:
    """click's name for the value a parameter takes ("" for a flag; None: leave typer's)."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return None
    try:
        if desc.is_choice:
            values = [c.value if isinstance(c, Enum) else c for c in desc.choices or ()]
            return "[" + "|".join(str(v) for v in values) + "]"
        if desc.is_path:
            return "PATH"
        annotation = desc.annotation
        if desc.is_list:
            annotation = (get_args(annotation) or (str,))[0]
        return _TYPE_NAMES.get(annotation) or getattr(annotation, "__name__", "TEXT").upper()
    except Exception:  # another typer version: its own display is better than none
        return None


def _tidy_class(cls: type) -> type:
    if getattr(cls, "param_type_name", "") == "option":
        return _option_class(cls)
    return _argument_class(cls)


@cache
def _option_class(base: type) -> type:
    class TidyOption(base):  # type: ignore[misc, valid-type]
        def display_type_rich(self, ctx: Any) -> str | None:
            if self.metavar is not None:
                return self.metavar
            label = type_label(self)
            return super().display_type_rich(ctx) if label is None else label

    TidyOption.__name__ = base.__name__
    return TidyOption


@cache
def _argument_class(base: type) -> type:
    class TidyArgument(base):  # type: ignore[misc, valid-type]
        @property
        def display_name_raw(self) -> str:
            return self.metavar or self.name.upper()

        def display_type_rich(self, ctx: Any) -> str | None:
            label = type_label(self)
            return super().display_type_rich(ctx) if label is None else label

        def get_usage_pieces(self, ctx: Any) -> list[str]:
            name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
            return [name + ("..." if self.nargs != 1 else "")]

    TidyArgument.__name__ = base.__name__
    return TidyArgument


def tidy_params(params: list[Any]) -> None:
    """Give ``params`` (a command's parameters, its help option included) click's help notation."""
    for param in params:
        kind = getattr(type(param), "param_type_name", "")
        if kind in ("option", "argument") and not getattr(type(param), "_ramdex_tidy", False):
            tidy = _tidy_class(type(param))
            tidy._ramdex_tidy = True  # type: ignore[attr-defined]
            param.__class__ = tidy
