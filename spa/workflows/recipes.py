"""Recipes: named pipelines of passes with options.

A recipe is a built-in name (``cleanup``) or a YAML/JSON file::

    passes:
      - remove-identity
      - name: fold-constants
        options: {max_output_elements: 4096}

Each entry is a pass name (see ``spa optimize --print-passes``) or a mapping
with ``name`` and optional ``options`` (the pass's keyword arguments).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any

import spa.passes  # registers the built-in passes
from spa.errors import UserError
from spa.pass_manager import SpaPass, registry

__all__ = [
    "PassStep",
    "Recipe",
    "build_passes",
    "builtin_recipes",
    "get_pass_class",
    "load_recipe",
    "registered_passes",
]


@dataclasses.dataclass(frozen=True)
class PassStep:
    name: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    steps: tuple[PassStep, ...]


def registered_passes() -> dict[str, type[SpaPass]]:
    """Every pass by name: the built-in ones and any registered since."""
    return registry()


def get_pass_class(name: str) -> type[SpaPass]:
    """The pass registered as ``name``; a one-line error naming the list otherwise."""
    passes = registry()
    if name not in passes:
        raise UserError(
            f"unknown pass '{name}'; `spa optimize --print-passes` lists the {len(passes)} passes"
        )
    return passes[name]


def builtin_recipes() -> dict[str, Recipe]:
    """Recipes that ship with spa, by name."""
    steps = tuple(PassStep(name) for name in spa.passes.CLEANUP_PIPELINE)
    return {"cleanup": Recipe("cleanup", steps)}


def _step_from(entry: Any, where: str) -> PassStep:
    if isinstance(entry, str):
        return PassStep(entry)
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        options = entry.get("options") or {}
        extra = set(entry) - {"name", "options"}
        if not isinstance(options, dict) or extra:
            raise UserError(f"{where}: pass '{entry['name']}' may only have 'name' and 'options'")
        return PassStep(entry["name"], dict(options))
    raise UserError(
        f"{where}: each pass is a name or {{name: ..., options: {{...}}}}, got {entry!r}"
    )


def _read_recipe_file(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as error:
        raise UserError(
            f"{path}: not valid {path.suffix[1:].upper() or 'YAML'} ({error})"
        ) from None


def load_recipe(name_or_path: str) -> Recipe:
    """A built-in recipe by name, or a recipe file (.yaml/.yml/.json)."""
    builtins = builtin_recipes()
    if name_or_path in builtins:
        return builtins[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise UserError(
            f"recipe '{name_or_path}' is neither a built-in ({', '.join(builtins)}) nor a file"
        )
    data = _read_recipe_file(path)
    if not isinstance(data, dict) or not isinstance(data.get("passes"), list):
        raise UserError(f"{path}: a recipe needs a top-level 'passes:' list")
    steps = tuple(_step_from(entry, str(path)) for entry in data["passes"])
    return Recipe(path.stem, steps)


def build_passes(recipe: Recipe) -> list[SpaPass]:
    """Instantiate the recipe's passes, checking names and options."""
    passes: list[SpaPass] = []
    for step in recipe.steps:
        cls = get_pass_class(step.name)
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = set(step.options) - accepted
        if unknown:
            raise UserError(
                f"pass '{step.name}' has no option {sorted(unknown)}; "
                f"it accepts {sorted(accepted) or 'none'}"
            )
        passes.append(cls(**step.options))
    return passes
