"""Packaging: setup.py describes the package the code says it is."""

import runpy
import sys
import types
from pathlib import Path

from occystrap import __version__

ROOT = Path(__file__).resolve().parent.parent


def test_setup_py_takes_the_version_from_the_package(monkeypatch):
    seen: dict = {}
    setuptools = types.ModuleType("setuptools")
    setuptools.setup = lambda **kwargs: seen.update(kwargs)
    setuptools.find_packages = lambda **kwargs: []
    monkeypatch.setitem(sys.modules, "setuptools", setuptools)
    monkeypatch.chdir(ROOT)   # setup.py reads README.md from where it runs
    runpy.run_path(str(ROOT / "setup.py"))
    assert seen["version"] == __version__
    assert seen["name"] == "occystrap"
