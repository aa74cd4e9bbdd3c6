"""Build a strategy or compressor from its config name: the constructor's signature is the schema."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from secure_fedrl.errors import ConfigError


def build_named(kind: str, registry: Mapping[str, type], name: object, params: Mapping[str, Any]) -> Any:
    """Instantiate ``registry[name](**params)``; unknown names or parameters are ConfigErrors.

    The constructor's signature is the schema, so a config can never carry a key the class ignores.
    """
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(f"unknown {kind} {name!r} (choose from {', '.join(registry)})")
    cls = registry[name]
    sig = inspect.signature(cls.__init__)
    allowed = [p for p in sig.parameters if p != "self"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for {kind} {name!r} "
                          f"(allowed: {', '.join(allowed) or 'none'})")
    missing = [p.name for p in sig.parameters.values()
               if p.name != "self" and p.default is inspect.Parameter.empty and p.name not in params]
    if missing:
        raise ConfigError(f"{kind} {name!r} needs parameter(s) {', '.join(missing)}")
    return cls(**params)
