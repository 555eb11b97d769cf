"""YOLO reader: a ``data.yaml`` with train/val[/test] entries and one ``class cx cy w h`` label file per image.

Paths resolve as in :mod:`detector.data.datayaml`: relative to ``path:`` (itself relative to the yaml's folder); an
entry is a folder (searched recursively), a ``.txt`` list of images, an image, or a list of these. An image's label
file is its path with the last ``images`` folder replaced by ``labels`` and the suffix by ``.txt``. Polygon lines
(``class x1 y1 x2 y2 ...``, segmentation labels) become the polygon's bounding box, as Ultralytics' detection does.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from .datayaml import entry_images, read_data_yaml
from .report import DatasetError, Problem, ProblemKind
from .source import ROUNDING_TOLERANCE, SPLITS, AnnotatedImage, SourceBox, SourceDataset, parse_number


def read_yolo(source: Path) -> SourceDataset:
    """Read a YOLO dataset from its data.yaml (``source`` is the yaml, or the folder holding it)."""
    data = read_data_yaml(_find_yaml(source))
    names = data.names

    problems: list[Problem] = []
    splits_by_image: dict[str, list[str]] = defaultdict(list)
    image_paths: dict[str, Path] = {}
    label_dirs: set[Path] = set()
    for split in SPLITS:
        if not data.has(split):
            if split != "test":
                raise DatasetError(f"{data.path} has no {split!r} entry (Ultralytics needs train and val)")
            continue
        for entry in data.entries(split):
            for image in _split_images(entry, split, data.path, label_dirs, problems):
                key = os.path.abspath(image)
                image_paths.setdefault(key, image)
                if split not in splits_by_image[key]:
                    splits_by_image[key].append(split)

    images: list[AnnotatedImage] = []
    expected_labels: set[str] = set()
    for key, image in image_paths.items():
        label_path = label_path_for(image)
        expected_labels.add(os.path.abspath(label_path))
        splits = tuple(splits_by_image[key])
        if label_path.is_file():
            boxes, dropped = read_label_file(label_path, names, problems)
            images.append(AnnotatedImage(image, label_path, None, boxes, splits, dropped=dropped))
        else:
            detail = f"no label file {label_path}: imported as an image without boxes"
            problems.append(Problem(ProblemKind.MISSING_LABEL, str(image), None, detail))
            images.append(AnnotatedImage(image, None, None, [], splits))

    for label_dir in sorted(label_dirs):
        for label in sorted(label_dir.rglob("*.txt")):
            if os.path.abspath(label) not in expected_labels:
                detail = f"no image for this label file among the images of {data.path.name}"
                problems.append(Problem(ProblemKind.LABEL_WITHOUT_IMAGE, str(label), None, detail))
    return SourceDataset(images, names, f"{data.path.name} train/val/test entries", problems)


def label_path_for(image: Path) -> Path:
    """``.../images/a/b.jpg`` -> ``.../labels/a/b.txt`` (the last ``images`` folder; beside the image if none)."""
    return (_labels_folder(image.parent) / image.name).with_suffix(".txt")


def _labels_folder(folder: Path) -> Path:
    """Where the labels of the images in ``folder`` are: its last ``images`` part replaced by ``labels``."""
    parts = list(folder.parts)
    if "images" in parts:
        parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
    return Path(*parts)


def read_label_file(path: Path, names: list[str], problems: list[Problem]) -> tuple[list[SourceBox], int]:
    """Boxes of one label file, and how many of its lines gave none; every bad line is a problem with its number."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        problems.append(Problem(ProblemKind.ANNOTATION_UNPARSEABLE, str(path), None, f"cannot read: {error}"))
        return [], 1
    boxes: list[SourceBox] = []
    dropped = 0
    for line_number, line in enumerate(lines, start=1):
        fields = line.split()
        if fields:
            box = _parse_line(fields, path, line_number, names, problems)
            if box is None:
                dropped += 1
            else:
                boxes.append(box)
    return boxes, dropped


def _parse_line(
    fields: list[str], path: Path, line_number: int, names: list[str], problems: list[Problem]
) -> SourceBox | None:
    def report(kind: ProblemKind, detail: str) -> None:
        problems.append(Problem(kind, str(path), line_number, detail))

    is_polygon = len(fields) >= 7 and len(fields) % 2 == 1
    if len(fields) != 5 and not is_polygon:
        report(
            ProblemKind.WRONG_FIELD_COUNT,
            f"{len(fields)} fields, expected 5 (class cx cy w h) or a polygon (class x1 y1 x2 y2 x3 y3 ...)",
        )
        return None
    class_value = parse_number(fields[0])
    if class_value is None or not class_value.is_integer():
        report(ProblemKind.NON_NUMERIC_VALUE, f"class id {fields[0]!r} is not an integer")
        return None
    class_id = int(class_value)
    if not 0 <= class_id < len(names):
        report(
            ProblemKind.CLASS_OUT_OF_RANGE, f"class id {class_id} is outside 0..{len(names) - 1} ({len(names)} names)"
        )
        return None
    values = [parse_number(field) for field in fields[1:]]
    bad = [f"{field!r}" for field, value in zip(fields[1:], values, strict=True) if value is None]
    if bad:
        report(ProblemKind.NON_NUMERIC_VALUE, f"{', '.join(bad)} not a finite number")
        return None
    numbers: list[float] = values  # type: ignore[assignment]
    if is_polygon:
        xs, ys = numbers[0::2], numbers[1::2]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    else:
        cx, cy, w, h = numbers
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    name = names[class_id]
    if x1 <= x0 or y1 <= y0:
        report(ProblemKind.DEGENERATE_BOX, f"{name!r} box {' '.join(fields[1:])} has no width or no height")
        return None
    tolerance = ROUNDING_TOLERANCE
    outside = [
        field for field, value in zip(fields[1:], numbers, strict=True) if not -tolerance <= value <= 1 + tolerance
    ]
    if outside:
        x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1))
        kept = x1 > x0 and y1 > y0
        outcome = "clipped to the image" if kept else "nothing left inside the image: skipped"
        report(ProblemKind.COORDINATE_OUT_OF_RANGE, f"{name!r}: {', '.join(outside)} outside [0, 1]; {outcome}")
        if not kept:
            return None
    return SourceBox(name, x0, y0, x1, y1, True, path, line_number)


def _find_yaml(source: Path) -> Path:
    if source.is_file():
        if source.suffix.lower() not in {".yaml", ".yml"}:
            raise DatasetError(f"YOLO source {source} is not a .yaml file (give the data.yaml or its folder)")
        return source
    if not source.is_dir():
        raise DatasetError(f"YOLO source {source} does not exist")
    if (source / "data.yaml").is_file():
        return source / "data.yaml"
    found = sorted(p for p in source.iterdir() if p.suffix.lower() in {".yaml", ".yml"} and p.is_file())
    if len(found) == 1:
        return found[0]
    if found:
        raise DatasetError(
            f"several yaml files in {source} ({', '.join(p.name for p in found)}): give the dataset's one"
        )
    raise DatasetError(f"no data.yaml in {source}: a YOLO dataset is described by a yaml with train, val and names")


def _split_images(
    entry: Path, split: str, yaml_path: Path, label_dirs: set[Path], problems: list[Problem]
) -> list[Path]:
    """Images of one train/val/test entry; adds the label folders where labels without image may lie."""
    try:
        images = entry_images(entry, problems)
    except DatasetError as error:
        if split != "test":
            raise DatasetError(f"{yaml_path}: {split}: {error}") from None
        problems.append(Problem(ProblemKind.IMAGE_MISSING, str(yaml_path), None, f"{error}: test split skipped"))
        return []
    if entry.is_dir():
        label_dirs.add(_labels_folder(entry))
    elif entry.suffix.lower() == ".txt":
        label_dirs.update(label_path_for(image).parent for image in images)
    return images
