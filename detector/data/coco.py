"""COCO reader: one or more instances JSON files and the folder their images are in.

Categories are ordered by id (their ids need not be contiguous). With several JSON files, each is one split, named by
a word in its file name (``instances_train2017.json`` -> train). Crowd regions (``iscrowd: 1``) are skipped, as
Ultralytics' own COCO conversion does: one box around a crowd would teach a wrong object.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .folders import describe_folder
from .report import DatasetError, Problem, ProblemKind, list_problems
from .source import IMAGE_SUFFIXES, AnnotatedImage, SourceBox, SourceDataset, parse_number

_SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass
class _JsonFile:
    path: Path
    split: str | None
    data: dict[str, Any]


class _ImageLocator:
    """Finds the file a COCO ``file_name`` means: under the image root as written, else by its name alone."""

    def __init__(self, root: Path, exclude: Path | None) -> None:
        self.root = root
        self.exclude = exclude.resolve() if exclude is not None else None
        self._by_name: dict[str, list[Path]] | None = None

    def _index(self) -> dict[str, list[Path]]:
        if self._by_name is None:
            by_name: dict[str, list[Path]] = defaultdict(list)
            for folder, subfolders, files in os.walk(self.root):
                subfolders[:] = sorted(d for d in subfolders if Path(folder, d).resolve() != self.exclude)
                for name in sorted(files):
                    if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                        by_name[name].append(Path(folder, name))
            self._by_name = by_name
        return self._by_name

    def locate(self, file_name: str, json_path: Path) -> Path | list[Path]:
        """The image path; or the candidates (none, or several equally likely) when it cannot be told."""
        written = Path(file_name)
        for base in (self.root, self.root / "images"):
            if (base / written).is_file():
                return base / written
        candidates = self._index().get(written.name, [])
        if len(candidates) > 1:
            # e.g. train2017/x.jpg and val2017/x.jpg: take the one in a folder named in the JSON file name
            words = set(re.split(r"[^a-z0-9]+", json_path.stem.lower()))
            named = [c for c in candidates if words & {p.lower() for p in c.relative_to(self.root).parts[:-1]}]
            if len(named) == 1:
                return named[0]
        return candidates[0] if len(candidates) == 1 else candidates


def read_coco(source: Path, images_dir: Path | None = None, exclude: Path | None = None) -> SourceDataset:
    """Read COCO JSON: ``source`` is one JSON file, or a folder with ``annotations/*.json`` or ``*.json``.

    Images are looked for under ``images_dir``, by default the dataset folder (the JSON's folder, or its parent when
    that folder is ``annotations/``); ``exclude`` (the output folder) is never searched.
    """
    json_paths = _find_json_files(source)
    if source.is_dir():
        dataset_root = source
    else:
        dataset_root = source.parent.parent if source.parent.name == "annotations" else source.parent
    image_root = images_dir if images_dir is not None else dataset_root
    if not image_root.is_dir():
        raise DatasetError(f"image folder {image_root} does not exist")

    problems: list[Problem] = []
    files = [f for f in (_load(path, problems) for path in json_paths) if f is not None]
    if not files:
        names = ", ".join(map(str, json_paths))
        raise DatasetError(f"no usable COCO annotation file among {names}:{list_problems(problems)}")
    if len(json_paths) > 1:
        for file in files:
            file.split = _split_of(file.path)
    categories = _merge_categories(files, problems)
    locator = _ImageLocator(image_root, exclude)
    images: list[AnnotatedImage] = []
    for file in files:
        images.extend(_read_file(file, categories, locator, problems))
    class_names = [categories[category_id] for category_id in sorted(categories)]
    if len(json_paths) > 1:
        split_lists = ", ".join(f"{f.path.name} ({f.split})" for f in files)
        return SourceDataset(images, class_names, split_lists, problems)
    return SourceDataset(images, class_names, None, problems, dataset_root)


def _find_json_files(source: Path) -> list[Path]:
    if source.is_file():
        if source.suffix.lower() != ".json":
            raise DatasetError(f"COCO source {source} is not a .json file")
        return [source]
    if not source.is_dir():
        raise DatasetError(f"COCO source {source} does not exist")
    for folder in (source / "annotations", source):
        found = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if found:
            instances = [path for path in found if path.name.startswith("instances_")]
            return instances or found
    raise DatasetError(
        f"no COCO JSON files in {source / 'annotations'} or {source}, which holds {describe_folder(source)}: "
        "give the instances JSON file itself"
    )


def _split_of(path: Path) -> str:
    words = {_SPLIT_WORDS[w] for w in re.findall(r"[a-z]+", path.stem.lower()) if w in _SPLIT_WORDS}
    if len(words) != 1:
        raise DatasetError(
            f"with several COCO JSON files each one is a split, named by train / val / test in its file name: "
            f"cannot tell the split of {path.name} (import it alone, or rename it)"
        )
    return words.pop()


def _load(path: Path, problems: list[Problem]) -> _JsonFile | None:
    try:
        with path.open(encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        detail = f"JSON error: {error.msg} (column {error.colno})"
        problems.append(Problem(ProblemKind.ANNOTATION_UNPARSEABLE, str(path), error.lineno, detail))
        return None
    except (OSError, UnicodeDecodeError) as error:
        problems.append(Problem(ProblemKind.ANNOTATION_UNPARSEABLE, str(path), None, f"cannot read: {error}"))
        return None
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data, dict) or key not in data]
    if missing:
        detail = f"not a COCO instances file: no {', '.join(repr(k) for k in missing)}"
        problems.append(Problem(ProblemKind.ANNOTATION_UNPARSEABLE, str(path), None, detail))
        return None
    wrong = [key for key in ("images", "annotations", "categories") if not isinstance(data[key], list)]
    if wrong:
        detail = f"{', '.join(repr(k) for k in wrong)} must be a list"
        problems.append(Problem(ProblemKind.ANNOTATION_UNPARSEABLE, str(path), None, detail))
        return None
    return _JsonFile(path, None, data)


def _merge_categories(files: list[_JsonFile], problems: list[Problem]) -> dict[int, str]:
    """Category id -> name over all files; the same id must mean the same name everywhere, names must differ."""
    categories: dict[int, str] = {}
    for file in files:
        for entry in file.data["categories"]:
            category_id = entry.get("id") if isinstance(entry, dict) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            if (
                not isinstance(category_id, int)
                or isinstance(category_id, bool)
                or not isinstance(name, str)
                or not name.strip()
            ):
                detail = f"category {_short(entry)} needs an integer 'id' and a non-empty 'name'"
                problems.append(Problem(ProblemKind.INVALID_ENTRY, str(file.path), None, detail))
                continue
            if categories.setdefault(category_id, name.strip()) != name.strip():
                raise DatasetError(
                    f"category id {category_id} is {categories[category_id]!r} in one file and {name!r} in {file.path}"
                )
    names = list(categories.values())
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DatasetError(f"COCO categories with different ids share the name(s) {', '.join(map(repr, repeated))}")
    return categories


def _read_file(
    file: _JsonFile, categories: dict[int, str], locator: _ImageLocator, problems: list[Problem]
) -> list[AnnotatedImage]:
    where = str(file.path)
    images: dict[Hashable, AnnotatedImage] = {}
    declared_ids: set[Hashable] = set()
    for entry in file.data["images"]:
        image_id = entry.get("id") if isinstance(entry, dict) else None
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool) or not isinstance(file_name, str):
            detail = f"image {_short(entry)} needs an 'id' and a string 'file_name'"
            problems.append(Problem(ProblemKind.INVALID_ENTRY, where, None, detail))
            continue
        if image_id in declared_ids:
            detail = f"image id {image_id!r} ({file_name}) appears again: this entry is skipped"
            problems.append(Problem(ProblemKind.INVALID_ENTRY, where, None, detail))
            continue
        declared_ids.add(image_id)
        found = locator.locate(file_name, file.path)
        if isinstance(found, list):
            if found:
                detail = f"image id {image_id!r}: {file_name!r} matches several files: {', '.join(map(str, found))}"
                problems.append(Problem(ProblemKind.DUPLICATE_IMAGE_NAME, where, None, detail))
            else:
                detail = f"image id {image_id!r}: {file_name!r} not found under {locator.root}"
                problems.append(Problem(ProblemKind.IMAGE_MISSING, where, None, detail))
            continue
        reference = f"image id {image_id!r} ({file_name})"
        declared = _declared_size(entry, reference, where, problems)
        splits = (file.split,) if file.split else ()
        images[image_id] = AnnotatedImage(found, file.path, declared, [], splits, reference=reference)

    for entry in file.data["annotations"]:
        read = _read_annotation(entry, file.path, declared_ids, categories, problems)
        if read is not None and read[0] in images:
            image_id, box = read
            if box is None:
                images[image_id].dropped += 1
            else:
                images[image_id].boxes.append(box)
    return list(images.values())


def _declared_size(entry: dict, reference: str, where: str, problems: list[Problem]) -> tuple[int, int] | None:
    """(width, height) an image entry declares, None where it declares none that can be used."""
    if "width" not in entry and "height" not in entry:
        return None
    width, height = parse_number(entry.get("width")), parse_number(entry.get("height"))
    if width is None or height is None or width <= 0 or height <= 0:
        stated = f"width {entry.get('width')!r} / height {entry.get('height')!r}"
        detail = f"{reference}: {stated} is not a size: the real image size is used"
        problems.append(Problem(ProblemKind.SIZE_INVALID, where, None, detail))
        return None
    return round(width), round(height)


def _read_annotation(
    entry: object,
    path: Path,
    declared_ids: set[Hashable],
    categories: dict[int, str],
    problems: list[Problem],
) -> tuple[Hashable, SourceBox | None] | None:
    """(image id, box) of one annotation entry; (image id, None) for an unusable box, None for a crowd region or an
    entry of no known image. Problems are recorded."""
    where = str(path)
    if not isinstance(entry, dict) or not all(key in entry for key in ("image_id", "category_id", "bbox")):
        detail = f"annotation {_short(entry)} needs 'image_id', 'category_id' and 'bbox'"
        problems.append(Problem(ProblemKind.INVALID_ENTRY, where, None, detail))
        return None
    label = f"annotation id {entry.get('id')!r}"
    image_id = entry["image_id"]
    if not isinstance(image_id, Hashable) or image_id not in declared_ids:
        problems.append(
            Problem(ProblemKind.INVALID_ENTRY, where, None, f"{label}: image_id {image_id!r} is not in 'images'")
        )
        return None
    category_id = entry["category_id"]
    if not isinstance(category_id, Hashable) or category_id not in categories:
        detail = f"{label}: category_id {category_id!r} is not in 'categories'"
        problems.append(Problem(ProblemKind.UNKNOWN_CLASS, where, None, detail))
        return image_id, None
    name = categories[category_id]
    bbox = entry["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4:
        detail = f"{label} ({name!r}): bbox {bbox!r} is not [x, y, width, height]"
        problems.append(Problem(ProblemKind.INVALID_ENTRY, where, None, detail))
        return image_id, None
    values = [parse_number(v) for v in bbox]
    if any(v is None for v in values):
        detail = f"{label} ({name!r}): bbox {bbox!r} holds a value that is not a finite number"
        problems.append(Problem(ProblemKind.NON_NUMERIC_VALUE, where, None, detail))
        return image_id, None
    if entry.get("iscrowd"):
        detail = f"{label} ({name!r}): crowd region {bbox!r} skipped"
        problems.append(Problem(ProblemKind.CROWD_BOX, where, None, detail))
        return None
    x, y, width, height = values  # type: ignore[misc]
    return image_id, SourceBox(name, x, y, x + width, y + height, False, path, None, reference=label)


def _short(entry: object, limit: int = 80) -> str:
    text = repr(entry)
    return text if len(text) <= limit else text[: limit - 3] + "..."
