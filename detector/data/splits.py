"""Split lists (train/val/test.txt), train/val/test ratios and the seeded, order-independent ratio split."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .folders import named_child, named_path
from .report import DatasetError, Problem, ProblemKind
from .source import IMAGE_SUFFIXES, SPLITS, AnnotatedImage

DEFAULT_RATIOS = (0.8, 0.1, 0.1)
LIST_FOLDERS = ("ImageSets/Main", "ImageSets", "splits", "")
"""where split lists lie, relative to the dataset folder (any letter case); the first one holding any is used"""


@dataclass(frozen=True)
class Listing:
    """Where a split list names an image."""

    split: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


def split_list_files(folder: Path) -> dict[str, Path]:
    """Split -> its list file (``train.txt``, ``val.txt``, ``test.txt``, any letter case) in ``folder``."""
    found = {split: named_child(folder, [f"{split}.txt"], is_dir=False) for split in SPLITS}
    return {split: path for split, path in found.items() if path is not None}


def find_split_lists(root: Path) -> dict[str, Path]:
    """The split lists of the dataset in ``root``: those of the first of LIST_FOLDERS that holds any."""
    for relative in LIST_FOLDERS:
        folder = named_path(root, relative) if relative else root
        files = split_list_files(folder) if folder is not None else {}
        if files:
            return files
    return {}


def describe_lists(files: dict[str, Path], root: Path | None) -> str:
    """``ImageSets/Main/train.txt,val.txt`` (the folder relative to ``root`` where it lies inside it)."""
    folder = next(iter(files.values())).parent
    if root is not None and folder.is_relative_to(root):
        folder = folder.relative_to(root)
    prefix = "" if folder == Path() else f"{folder.as_posix()}/"
    return prefix + ",".join(path.name for path in files.values())


def read_split_lists(files: dict[str, Path]) -> dict[str, Listing]:
    """Image name -> where a list names it. A line's first field is the name (a suffix and folders are dropped).

    Raises DatasetError naming both lists when an image is in two of them.
    """
    listed: dict[str, Listing] = {}
    overlaps: list[tuple[str, Listing, Listing]] = []
    for split, path in files.items():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DatasetError(f"cannot read split list {path}: {error}") from error
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            entry = Path(fields[0])
            name = entry.stem if entry.suffix.lower() in {*IMAGE_SUFFIXES, ".xml"} else entry.name
            first = listed.setdefault(name, Listing(split, path, number))
            if first.split != split:
                overlaps.append((name, first, Listing(split, path, number)))
    if overlaps:
        name, first, second = overlaps[0]
        more = f" (and {len(overlaps) - 1} more images in two lists)" if len(overlaps) > 1 else ""
        raise DatasetError(
            f"{name!r} is in two split lists, {first} and {second}{more}: an image belongs to one split (fix the "
            "lists, or pass --split TRAIN,VAL,TEST to split by ratio)"
        )
    return listed


def apply_split_lists(images: list[AnnotatedImage], listed: dict[str, Listing]) -> list[Problem]:
    """Set each image's split from the lists (by its ``list_name``); list entries naming no image are problems."""
    names = {image.list_name for image in images}
    for image in images:
        listing = listed.get(image.list_name)
        image.splits = (listing.split,) if listing is not None else ()
    detail = "{!r} is listed but no usable annotated image has that name"
    return [
        Problem(ProblemKind.MISSING_ANNOTATION, str(at.path), at.line, detail.format(name))
        for name, at in listed.items()
        if name not in names
    ]


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> (0.8, 0.1, 0.1); raises DatasetError saying what is wrong."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 3:
        raise DatasetError(f"--split {text!r}: expected 3 comma-separated numbers TRAIN,VAL,TEST (e.g. 0.8,0.1,0.1)")
    try:
        ratios = tuple(float(part) for part in parts)
    except ValueError:
        raise DatasetError(f"--split {text!r}: {', '.join(parts)} are not all numbers") from None
    return check_ratios(ratios)  # type: ignore[arg-type]


def check_ratios(ratios: tuple[float, float, float]) -> tuple[float, float, float]:
    """Validate ratios: three finite non-negative numbers, train and val positive, summing to 1."""
    if len(ratios) != 3:
        raise DatasetError(f"split ratios {ratios}: expected 3 numbers (train, val, test)")
    if any(not 0 <= r <= 1 for r in ratios):  # also rejects nan
        raise DatasetError(f"split ratios {ratios}: each must be between 0 and 1")
    if ratios[0] <= 0 or ratios[1] <= 0:
        raise DatasetError(f"split ratios {ratios}: train and val must be greater than 0")
    if abs(sum(ratios) - 1) > 1e-6:
        raise DatasetError(f"split ratios {ratios}: must sum to 1, not {sum(ratios):g}")
    return (float(ratios[0]), float(ratios[1]), float(ratios[2]))


def split_counts(total: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """Largest-remainder apportionment of ``total`` items, with at least one train and one val item."""
    if total < 2:
        raise DatasetError(f"a train/val split needs at least 2 images, found {total}")
    exact = [total * r for r in ratios]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    minimum = (1, 1, 0)
    for needed in (0, 1):  # train, val
        if counts[needed] == 0:
            donor = max((i for i in range(3) if counts[i] > minimum[i]), key=lambda i: counts[i])
            counts[donor] -= 1
            counts[needed] += 1
    return counts[0], counts[1], counts[2]


def ratio_split(keys: Iterable[str], ratios: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Key -> split. Keys are sorted before the seeded shuffle, so the file system's listing order is irrelevant."""
    ordered = sorted(set(keys))
    random.Random(seed).shuffle(ordered)
    n_train, n_val, _ = split_counts(len(ordered), ratios)
    return {
        key: SPLITS[0] if i < n_train else SPLITS[1] if i < n_train + n_val else SPLITS[2]
        for i, key in enumerate(ordered)
    }
