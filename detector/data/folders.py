"""Finding a dataset's folders and files by their usual names, in any letter case, and telling what a folder holds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .report import DatasetError


def named_child(folder: Path, names: Sequence[str], *, is_dir: bool) -> Path | None:
    """The folder (``is_dir``) or file in ``folder`` named like the first of ``names`` present, in any letter case.

    Raises DatasetError when two entries differ only in case (``images/`` and ``Images/``): either could be meant.
    """
    if not folder.is_dir():
        return None
    wanted = [name.casefold() for name in names]
    found = [p for p in folder.iterdir() if p.name.casefold() in wanted and p.is_dir() == is_dir]
    if not found:
        return None
    best = min(wanted.index(p.name.casefold()) for p in found)
    tied = sorted(p for p in found if wanted.index(p.name.casefold()) == best)
    if len(tied) > 1:
        raise DatasetError(f"{' and '.join(str(p) for p in tied)} differ only in letter case: name the one to use")
    return tied[0]


def named_path(folder: Path, relative: str) -> Path | None:
    """``folder / relative`` (e.g. ``ImageSets/Main``) matching each part in any letter case, or None."""
    path = folder
    for part in Path(relative).parts:
        found = named_child(path, [part], is_dir=True)
        if found is None:
            return None
        path = found
    return path


def describe_folder(folder: Path, limit: int = 8) -> str:
    """What ``folder`` holds, briefly: ``Annotations/, data/, 120 .jpg files, 2 .txt files`` (or ``nothing``)."""
    entries = sorted(folder.iterdir()) if folder.is_dir() else []
    folders = [f"{p.name}/" for p in entries if p.is_dir()]
    shown = folders[:limit] + ([f"{len(folders) - limit} more folders"] if len(folders) > limit else [])
    suffixes = Counter(p.suffix.lower() or "(no suffix)" for p in entries if not p.is_dir())
    shown += [f"{count} {suffix} file{'s' if count > 1 else ''}" for suffix, count in sorted(suffixes.items())]
    return ", ".join(shown) or "nothing"
