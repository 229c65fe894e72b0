"""Every docstring example in the package runs and holds (examples are documentation that cannot rot)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import vlrl

MODULES = sorted(info.name for info in pkgutil.walk_packages(vlrl.__path__, "vlrl.")
                 if not info.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"


def test_the_modules_that_promise_examples_have_them():
    for name in ("vlrl.answers", "vlrl.rewards", "vlrl.prompts", "vlrl.stats", "vlrl.config.loading"):
        assert doctest.testmod(importlib.import_module(name)).attempted > 0, name
