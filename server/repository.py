"""The model repository on disk, in Triton's layout: ``<root>/<model>/<version>/model.onnx | model.plan``.

Each file carries its own metadata (classes, geometry, preprocessing), so no configuration file is needed;
a Triton ``config.pbtxt`` beside it is ignored. A single model file (``FCN_MODEL``) is served as a
one-model repository named after the file (version 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MODEL_FILES = ("model.plan", "model.onnx")
"""Files a version directory may hold, in order of preference (an engine falls back to the ONNX beside
it where TensorRT cannot run it)."""
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RepositoryError(Exception):
    """A model or version that is not in the repository."""


class InvalidName(RepositoryError):
    """A name that could never be a model folder (a path, ``..``, odd characters)."""


@dataclass(frozen=True)
class ModelVersion:
    """One loadable model version."""

    name: str
    version: int
    path: Path


class Repository:
    """Where the server finds models: a folder of model folders, or one file."""

    def __init__(self, root: Path | None = None, single: Path | None = None) -> None:
        if (root is None) == (single is None):
            raise ValueError("give a repository folder or a single model file")
        self.root = root
        self.single = single

    @classmethod
    def single_file(cls, path: Path) -> Repository:
        """A one-model repository named after the file (``fcn8s-demo.onnx`` → model ``fcn8s-demo``)."""
        return cls(single=path)

    def names(self) -> list[str]:
        """The model names, sorted."""
        if self.single is not None:
            return [self.single.stem]
        assert self.root is not None
        if not self.root.is_dir():
            raise RepositoryError(f"model repository {self.root} is not a folder")
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME.match(p.name))

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name`` that holds a model file, ascending; RepositoryError for a bad name."""
        check_name(name)
        if self.single is not None:
            if name != self.single.stem:
                raise RepositoryError(f"unknown model {name!r}; this server serves {self.single.stem!r}")
            return [ModelVersion(name, 1, self.single)]
        assert self.root is not None
        folder = self.root / name
        if not folder.is_dir():
            raise RepositoryError(f"unknown model {name!r}; the repository has {self.names()}")
        found = []
        for child in folder.iterdir():
            if child.is_dir() and child.name.isdigit() and int(child.name) > 0:
                files = [child / f for f in MODEL_FILES if (child / f).is_file()]
                if files:
                    found.append(ModelVersion(name, int(child.name), files[0]))
        return sorted(found, key=lambda v: v.version)

    def resolve(self, name: str, version: int | None = None) -> ModelVersion:
        """A version of ``name`` (the latest when ``version`` is None)."""
        versions = self.versions(name)
        if not versions:
            raise RepositoryError(f"model {name!r} has no version folder with {' or '.join(MODEL_FILES)}")
        if version is None:
            return versions[-1]
        for candidate in versions:
            if candidate.version == version:
                return candidate
        raise RepositoryError(
            f"model {name!r} has no version {version}; versions on disk: {[v.version for v in versions]}"
        )

    def latest(self) -> list[ModelVersion]:
        """The latest version of every model (what the server loads at start-up)."""
        return [self.resolve(name) for name in self.names()]


def check_name(name: str) -> None:
    """RepositoryError unless ``name`` is a plain folder name (no separators, no ``..``)."""
    if not NAME.match(name) or ".." in name:
        raise InvalidName(
            f"invalid model name {name!r}: letters, digits, '_', '-' and '.' only, no path separators"
        )
