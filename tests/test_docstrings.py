"""Every public function (each core package's `__all__`) documents itself in diffusers' style: an
`Args:` section when it takes parameters, and a `Returns:` (or `Yields:`) section."""
from __future__ import annotations

import importlib
import inspect

import pytest

PACKAGES = ("core.config", "core.data", "core.models", "core.generate", "core.evaluate", "core.train",
            "core.protocol")


def offences(package: str) -> list[str]:
    module = importlib.import_module(package)
    found = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not inspect.isfunction(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        if inspect.signature(obj).parameters and "Args:" not in doc:
            found.append(f"{package}.{name} ({obj.__module__}): no Args: section")
        if "Returns:" not in doc and "Yields:" not in doc:
            found.append(f"{package}.{name} ({obj.__module__}): no Returns:/Yields: section")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_public_functions_document_args_and_returns(package):
    missing = offences(package)
    assert not missing, f"{len(missing)} docstring section(s) missing:\n" + "\n".join(missing)
