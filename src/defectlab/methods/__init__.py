"""The method registry: every detection method defectlab knows, by name.

A method is one package under ``defectlab/methods/`` whose ``__init__`` defines
``METHOD`` (a `defectlab.methods.base.Method`); adding one is that package plus
one line in `METHOD_MODULES`. Importing this module imports no TensorFlow: a
method's heavy modules load when it fits or loads a detector.
"""

from __future__ import annotations

import importlib

from defectlab.config import ConfigError
from defectlab.methods.base import Method

# Name -> the module that defines its METHOD; the order is the CLI's and the comparison's.
METHOD_MODULES = {
    "metric": "defectlab.methods.metric",
    "ssim": "defectlab.methods.ssim",
    "patch": "defectlab.methods.patch",
}

REGISTRY: dict[str, Method] = {}


def _load_registry() -> dict[str, Method]:
    if not REGISTRY:
        for name, module_name in METHOD_MODULES.items():
            method = importlib.import_module(module_name).METHOD
            if method.name != name:
                raise RuntimeError(f"{module_name} defines method {method.name!r}, registered as {name!r}")
            REGISTRY[name] = method
    return REGISTRY


def all_methods() -> list[Method]:
    """Every registered method, in registration order."""
    return list(_load_registry().values())


def register(method: Method) -> Method:
    """Add a method at run time (a plug-in or a test); its name and tag must be new."""
    registry = _load_registry()
    if method.name in registry or any(known.tag == method.tag for known in registry.values()):
        raise ValueError(f"a method named {method.name!r} or tagged {method.tag!r} is registered already")
    registry[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method added with `register`."""
    _load_registry().pop(name, None)


def get_method(name: str) -> Method:
    """The method called ``name`` (CLI name, e.g. ``metric``); `ConfigError` lists the known ones."""
    registry = _load_registry()
    if name not in registry:
        raise ConfigError(f"unknown method {name!r}; methods: {', '.join(registry)}")
    return registry[name]


def method_by_tag(tag: str) -> Method:
    """The method whose run tag / bundle ``method`` is ``tag`` (e.g. ``l2_softmax``)."""
    for method in _load_registry().values():
        if method.tag == tag:
            return method
    known = ", ".join(method.tag for method in _load_registry().values())
    raise ConfigError(f"unknown method tag {tag!r}; known: {known}")


def method_of_config(config) -> Method:
    """The method whose config class ``config`` is."""
    for method in _load_registry().values():
        if type(config) is method.config_class:
            return method
    raise ConfigError(f"{type(config).__name__} is the config of no registered method")
