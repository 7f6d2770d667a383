"""How to build a model anywhere: in this process, or in a Ray Serve replica on another machine.

A remote replica cannot take a local closure, so a model that may run elsewhere is described by
a ``ModelSpec``: a factory (``"package.module:function"``, or a class) and the plain, picklable
settings it is called with (model ids, device). ``spec.predictor()`` builds the model and gives its
``predict(items) -> results``, the same wherever it runs.
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class ModelSpec:
    factory: str  # "package.module:callable"
    kwargs: tuple[tuple[str, Any], ...] = ()  # sorted (name, value) pairs of plain settings
    method: str = "predict"  # the built object's batch method: items -> results

    @classmethod
    def of(cls, factory: str, method: str = "predict", **kwargs) -> "ModelSpec":
        return cls(factory, tuple(sorted(kwargs.items())), method)

    def build(self) -> Any:
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)(**dict(self.kwargs))

    def predictor(self) -> Callable[[Sequence[Any]], Sequence[Any]]:
        return getattr(self.build(), self.method)

    @property
    def digest(self) -> str:
        """Short and stable: the same settings name the same deployment from every media server."""
        return hashlib.sha1(repr((self.factory, self.kwargs, self.method)).encode()).hexdigest()[:10]
