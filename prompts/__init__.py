"""Prompt templates, kept as Markdown files beside this module.

`load("name")` returns the text of `name.md`; templates use `str.format` fields.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def load(name: str) -> str:
    """Text of the prompt file `name.md`."""
    return resources.files(__package__).joinpath(f"{name}.md").read_text(encoding="utf-8")


def render(name: str, **fields: object) -> str:
    """The prompt `name.md` with its `{fields}` filled in."""
    return load(name).format(**fields)
