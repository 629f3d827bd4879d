"""Packaging: setup.py describes the package the code says it is."""

import runpy
import sys
import types
from pathlib import Path

from occystrap import __version__

ROOT = Path(__file__).resolve().parent.parent


def _setup_arguments(monkeypatch) -> dict:
    seen: dict = {}
    setuptools = types.ModuleType("setuptools")
    setuptools.setup = lambda **kwargs: seen.update(kwargs)
    setuptools.find_packages = lambda **kwargs: []
    monkeypatch.setitem(sys.modules, "setuptools", setuptools)
    monkeypatch.chdir(ROOT)   # setup.py reads README.md from where it runs
    runpy.run_path(str(ROOT / "setup.py"))
    return seen


def test_setup_py_takes_the_version_from_the_package(monkeypatch):
    seen = _setup_arguments(monkeypatch)
    assert seen["version"] == __version__
    assert seen["name"] == "occystrap"


def test_the_core_needs_click_and_requests_and_all_brings_the_extras(monkeypatch):
    seen = _setup_arguments(monkeypatch)
    assert [r.split(">")[0] for r in seen["install_requires"]] == ["click", "requests"]
    extras = seen["extras_require"]
    assert sorted(extras["all"]) == sorted(extras["zstd"] + extras["fast"])
    assert any(r.startswith("isal") for r in extras["fast"])
    # The set-up command a new user copies installs them.
    assert "pip install '.[all]'" in (ROOT / "README.md").read_text()
