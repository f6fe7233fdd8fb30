"""Package attributes that import their module on first use (PEP 562).

A package `__init__` that imports its whole stack makes every `import vlm.x` pay for torch, timm and
open_clip (about 10 s on a 2-core machine); with these, `vlm --help` imports none of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_attributes(namespace: dict, exports: dict[str, str]) -> Callable[[str], object]:
    """A module `__getattr__` for `exports`, {name: "module" or "module:attribute"}, and for the package's
    submodules; sets `__all__` too."""
    namespace["__all__"] = sorted(exports)

    def __getattr__(name: str) -> object:
        if name not in exports:  # `import vlm; vlm.models.image_size(...)`: a subpackage, imported on first use
            submodule = f"{namespace['__name__']}.{name}"
            try:
                return importlib.import_module(submodule)
            except ModuleNotFoundError as e:
                if e.name != submodule:
                    raise
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        module, _, attribute = exports[name].partition(":")
        value = getattr(importlib.import_module(module), attribute or name)
        namespace[name] = value  # later lookups find it without this function
        return value

    return __getattr__
