"""The wheel must contain every subpackage: pyproject's explicit list vs the folders on disk."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAPPED = {
    "server": "nereid.server",
    "backends": "nereid.backends",
    "proto": "nereid.proto",
    "ensembles": "nereid.ensembles",
    "clients": "nereid.clients",
}


def test_every_package_folder_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    assert config["package-dir"] == {v: k for k, v in MAPPED.items()}
    on_disk = set()
    for folder, package in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join([package, *relative]))
    assert on_disk == listed, f"unlisted: {sorted(on_disk - listed)}, missing: {sorted(listed - on_disk)}"


def test_tests_have_no_init_files():
    assert not list((ROOT / "tests").rglob("__init__.py"))


def test_the_native_kernel_sources_ship_in_the_wheel():
    """The LLM engine compiles backends/llm/csrc on first use: every file there (headers too) is package data."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = data["nereid.backends.llm"]
    csrc = ROOT / "backends" / "llm"
    shipped = {p for g in globs for p in csrc.glob(g)}
    assert shipped == set((csrc / "csrc").iterdir())
