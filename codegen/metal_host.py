"""The macOS project of a Metal artifact (placeholder while the emulation path is brought up)."""
from __future__ import annotations


def write_macos_project(sources, executables, build_dir, manifest) -> dict:
    return {}
