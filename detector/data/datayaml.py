"""data.yaml: read it and resolve its paths one way for import, train, val and export, the way training will use them.

The dataset root is ``path:`` when absolute, the yaml's folder joined with ``path:`` when relative, and the yaml's
folder without ``path:``. Split entries (``train``, ``val`` or ``validation``, ``test``) are relative to the root; a
single entry starting with ``../`` that does not exist is tried without it, as Ultralytics does. Ultralytics itself
resolves a relative ``path:`` against the working directory (then its ``datasets_dir``):
:meth:`DataYaml.for_ultralytics` hands it a copy whose ``path:`` is absolute, so the two cannot disagree.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .report import DatasetError, Problem, ProblemKind
from .source import IMAGE_SUFFIXES, SPLITS, parse_number

_SPLIT_KEYS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


def _cache_dir() -> Path:
    """Where copies of data.yaml files with an absolute ``path:`` are kept (they must outlive a run, for resuming)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attention-yolo" / "data"


@dataclass(frozen=True)
class DataYaml:
    """A data.yaml: its file, its mapping, its dataset root (absolute) and its class names by index."""

    path: Path
    spec: dict[str, Any]
    root: Path
    names: list[str]

    def has(self, split: str) -> bool:
        return any(self.spec.get(key) for key in _SPLIT_KEYS[split])

    def entries(self, split: str) -> list[Path]:
        """The absolute paths a split's entry names (a folder, a .txt list or an image each); [] without one."""
        value = next((self.spec[key] for key in _SPLIT_KEYS[split] if self.spec.get(key)), None)
        if value is None:
            return []
        if not isinstance(value, list):
            path = self.root / str(value)
            if not path.exists() and str(value).startswith("../"):
                path = self.root / str(value)[3:]
            return [path]
        return [self.root / str(entry) for entry in value]

    def for_ultralytics(self) -> Path:
        """The yaml to give Ultralytics: this one, or where its ``path:`` is relative a cached copy with it absolute."""
        declared = self.spec.get("path")
        if not declared or Path(str(declared)).is_absolute():
            return self.path
        key = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:12]
        copy = _cache_dir() / f"{self.path.stem}-{key}.yaml"
        copy.parent.mkdir(parents=True, exist_ok=True)
        header = (
            f"# {self.path.resolve()} with its relative 'path: {declared}' made absolute (relative to that yaml's "
            "folder), as Ultralytics would take it relative to the working directory. Rewritten on every use.\n"
        )
        body = yaml.safe_dump({**self.spec, "path": str(self.root)}, sort_keys=False, allow_unicode=True)
        copy.write_text(header + body, encoding="utf-8")
        return copy


def read_data_yaml(path: str | Path) -> DataYaml:
    """Read a data.yaml, resolve its dataset root and read its class names; raises DatasetError naming the file (and
    line) on a bad one."""
    path = Path(os.path.abspath(path))
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise DatasetError(f"{where}: not valid YAML ({error.problem})") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise DatasetError(f"cannot read {path}: {error}") from None
    if not isinstance(spec, dict):
        raise DatasetError(f"{path} is not a YAML mapping with train, val and names")
    declared = spec.get("path")
    root = path.parent / str(declared) if declared else path.parent
    if not root.is_dir():
        raise DatasetError(f"{path}: 'path: {declared}' is not a folder (a relative path is relative to the yaml's)")
    return DataYaml(path, spec, Path(os.path.abspath(root)), _class_names(spec, path))


def entry_images(entry: Path, problems: list[Problem]) -> list[Path]:
    """Images of one resolved split entry, as Ultralytics' loader finds them: a folder's images (recursively), an
    image, or the images a .txt list names one per line (``./x.jpg`` relative to the list's folder; other relative
    lines, as in Ultralytics, relative to the working directory). Unusable list lines are added to ``problems``.

    Raises DatasetError when ``entry`` is none of these.
    """
    if entry.is_dir():
        return sorted(p for p in entry.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
        return [entry]
    if not (entry.is_file() and entry.suffix.lower() == ".txt"):
        raise DatasetError(f"{entry} is neither a folder, a .txt list of images nor an image")
    try:
        lines = entry.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read image list {entry}: {error}") from error
    images: list[Path] = []
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        image = entry.parent / name[2:] if name.startswith("./") else Path(os.path.abspath(name))
        if not image.is_file():
            problems.append(Problem(ProblemKind.IMAGE_MISSING, str(entry), number, f"{image} does not exist"))
        elif image.suffix.lower() not in IMAGE_SUFFIXES:
            detail = f"{image}: unsupported image format (use one of {', '.join(sorted(IMAGE_SUFFIXES))})"
            problems.append(Problem(ProblemKind.IMAGE_UNREADABLE, str(entry), number, detail))
        else:
            images.append(image)
    return images


def check_splits(data: DataYaml, splits: tuple[str, ...] | None = None) -> None:
    """Every entry of ``splits`` exists (default: train and val, and test where the yaml has one); raises
    DatasetError for a split without entry, FileNotFoundError for an entry that is not there."""
    splits = splits or tuple(s for s in SPLITS if s != "test" or data.has("test"))
    missing = [split for split in splits if not data.has(split)]
    if missing:
        raise DatasetError(f"{data.path} has no {' and no '.join(repr(split) for split in missing)} entry")
    for split in splits:
        for entry in data.entries(split):
            if not entry.exists():
                raise FileNotFoundError(f"{data.path}: {split} path {entry} does not exist (nothing is downloaded)")


def _class_names(spec: dict[str, Any], path: Path) -> list[str]:
    """Class names by index, from ``names`` (a list or an index -> name mapping) or ``nc``."""
    names = spec.get("names")
    if names is None:
        count = spec.get("nc")
        if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
            raise DatasetError(f"{path} has neither 'names' nor a positive integer 'nc'")
        return [f"class_{i}" for i in range(count)]
    if isinstance(names, dict):
        by_index = {_index(key): name for key, name in names.items()}
        if set(by_index) != set(range(len(names))):
            keys = ", ".join(map(str, names))
            raise DatasetError(f"{path}: 'names' keys must be 0..{len(names) - 1}, found {keys}")
        names = [by_index[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{path}: 'names' must be a non-empty list or an index -> name mapping")
    if "nc" in spec and spec["nc"] != len(names):
        raise DatasetError(f"{path}: 'nc: {spec['nc']}' does not match the {len(names)} names")
    return [str(name) for name in names]


def _index(key: object) -> int | None:
    """A names key as an integer (Ultralytics accepts ``'0'`` as well as ``0``), None if it is not one."""
    value = parse_number(key)
    return int(value) if value is not None and value.is_integer() else None
