"""Import a VOC / COCO / YOLO dataset into the YOLO layout Ultralytics trains on, reporting every problem.

Output: ``OUT/images/{train,val,test}/``, ``OUT/labels/{train,val,test}/`` (``class cx cy w h`` per box, normalised,
6 decimals), ``OUT/data.yaml`` (no ``path:`` key: Ultralytics then takes the yaml's folder as the dataset root) and
``OUT/import_report.json``.
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm import tqdm

from .coco import read_coco
from .images import ImageProblem, image_size, quiet_opencv
from .report import DatasetError, ImportReport, Problem, ProblemKind, list_problems
from .source import ROUNDING_TOLERANCE, SPLITS, AnnotatedImage, SourceBox, SourceDataset
from .splits import (
    DEFAULT_RATIOS,
    apply_split_lists,
    check_ratios,
    describe_lists,
    find_split_lists,
    parse_ratios,
    ratio_split,
    read_split_lists,
    split_list_files,
)
from .voc import read_voc
from .yolo import read_yolo

FORMATS = ("voc", "coco", "yolo")
REPORT_NAME = "import_report.json"
_DATASET_ENTRIES = ("images", "labels", "data.yaml")
_FRAME_SLACK = 1.0
"""pixels a box may reach past a frame and still fit it: VOC corners are 1-based, so xmax can be the width plus one"""
_ASPECT_TOLERANCE = 0.01
"""relative aspect-ratio difference a resize's rounding can make (500x375 -> 416x312 is 0.1%)"""

Label = tuple[int, float, float, float, float]
"""class id, cx, cy, w, h (normalised)"""


class UnusableDatasetError(DatasetError):
    """The source was read, but what it holds cannot be trained on; ``report`` tells what was found."""

    def __init__(self, message: str, report: ImportReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class _Assignment:
    image: AnnotatedImage
    split: str


def import_dataset(
    source: str | Path,
    dataset_format: str,
    out: str | Path | None = None,
    *,
    annotations: str | Path | None = None,
    images: str | Path | None = None,
    split_lists: str | Path | None = None,
    split: str | Sequence[float] | None = None,
    seed: int = 0,
    classes: str | Sequence[str] | None = None,
    skip_difficult: bool = False,
    keep_empty: bool = False,
    link: bool = False,
    overwrite: bool = False,
    report_path: str | Path | None = None,
    progress: bool = True,
) -> ImportReport:
    """Import ``source`` (``dataset_format``: voc, coco or yolo) into the YOLO layout in ``out``.

    Without ``out`` (YOLO only) the dataset is validated in place and nothing is written. ``split`` (``"0.8,0.1,0.1"``
    or three numbers) splits by ratio with ``seed``, ignoring the dataset's own split lists; without it those lists are
    used (``split_lists``: the folder holding train/val/test.txt; default: found next to the data), and a ratio of
    0.8/0.1/0.1 where there are none. ``classes`` fixes the class list and its order; boxes of other classes are
    skipped. ``annotations`` (VOC) and ``images`` (VOC, COCO) name the folders when they are not found by their usual
    names. An image whose every box is dropped is left out unless ``keep_empty``. ``link`` symlinks images instead of
    copying them; ``overwrite`` replaces a previous import in ``out``. The JSON report goes to ``report_path``, by
    default ``out/import_report.json``.

    Problems are recorded in the returned report; raises DatasetError when the source cannot be imported at all
    (UnusableDatasetError, with the report, when it was read but leaves nothing to train on).
    """
    dataset_format = dataset_format.lower()
    if dataset_format not in FORMATS:
        raise DatasetError(f"unknown dataset format {dataset_format!r}: use one of {', '.join(FORMATS)}")
    source = Path(source)
    if not source.exists():
        raise DatasetError(f"source {source} does not exist")
    out_dir = Path(out) if out is not None else None
    if out_dir is None and dataset_format != "yolo":
        raise DatasetError(f"an output folder (--out) is needed to import a {dataset_format.upper()} dataset")
    if images is not None and dataset_format == "yolo":
        raise DatasetError("--images applies to VOC and COCO; a YOLO dataset's data.yaml names its image folders")
    if annotations is not None and dataset_format != "voc":
        raise DatasetError(f"--annotations applies to VOC; a {dataset_format.upper()} source is its annotations")
    if split_lists is not None and dataset_format == "yolo":
        raise DatasetError("--split-lists applies to VOC and COCO; a YOLO dataset's data.yaml names its splits")
    if split_lists is not None and split is not None:
        raise DatasetError("--split splits by ratio, --split-lists by the lists: pass one of them")
    ratios = _ratios(split)
    class_names = _requested_classes(classes)
    if out_dir is not None:
        _check_output(out_dir, source, overwrite)

    dataset = _read(source, dataset_format, _path(annotations), _path(images), out_dir)
    class_names = class_names or dataset.class_names
    if not class_names:
        raise DatasetError(f"no boxes in {source}: nothing to import{list_problems(dataset.problems)}")
    problems = list(dataset.problems)
    _use_split_lists(dataset, _path(split_lists), ratios is None, problems)
    assignments, split_source = _assign_splits(dataset, ratios, seed, problems)
    assignments = _drop_name_collisions(assignments, problems)
    labels = _check_images(assignments, class_names, skip_difficult, keep_empty, problems, progress)
    kept = [a for a in assignments if id(a.image) in labels]
    problems.sort(key=lambda problem: (problem.path, problem.line or 0))

    report = ImportReport(
        source=str(source),
        format=dataset_format,
        output=str(out_dir) if out_dir is not None else None,
        split_source=split_source,
        classes=class_names,
        problems=problems,
    )
    _count(report, kept, labels)
    json_path = Path(report_path) if report_path is not None else out_dir / REPORT_NAME if out_dir else None
    try:
        _check_usable(report)
    except UnusableDatasetError:
        if json_path is not None:
            report.write_json(json_path)
        raise
    if out_dir is not None:
        _write_output(out_dir, kept, labels, report, link=link, overwrite=overwrite, progress=progress)
    if json_path is not None:
        report.write_json(json_path)
    return report


def _count(report: ImportReport, kept: list[_Assignment], labels: dict[int, list[Label]]) -> None:
    """Fill the report's images, images without boxes and boxes per class, per split (test only if it has any)."""
    for split in SPLITS:
        in_split = [labels[id(a.image)] for a in kept if a.split == split]
        if in_split or split != "test":
            report.images[split] = len(in_split)
            report.images_without_boxes[split] = sum(not image_labels for image_labels in in_split)
            per_class = dict.fromkeys(report.classes, 0)
            for image_labels in in_split:
                for label in image_labels:
                    per_class[report.classes[label[0]]] += 1
            report.boxes[split] = per_class


def _ratios(split: str | Sequence[float] | None) -> tuple[float, float, float] | None:
    if split is None:
        return None
    if isinstance(split, str):
        return parse_ratios(split)
    return check_ratios(tuple(split))  # type: ignore[arg-type]


def _requested_classes(classes: str | Sequence[str] | None) -> list[str]:
    if classes is None:
        return []
    names = [name.strip() for name in (classes.split(",") if isinstance(classes, str) else classes)]
    if not names or any(not name for name in names):
        raise DatasetError(f"--classes {classes!r}: class names must be non-empty, comma-separated")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise DatasetError(f"--classes {classes!r}: {', '.join(repeated)} given more than once")
    return names


def _check_output(out_dir: Path, source: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"output {out_dir} exists and is not a folder")
    source_root = source if source.is_dir() else source.parent
    if out_dir.resolve() == source_root.resolve():
        raise DatasetError(f"output {out_dir} is the source folder: choose another --out")
    existing = [name for name in _DATASET_ENTRIES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise DatasetError(f"{out_dir} already holds {', '.join(existing)}: pass --overwrite to replace them")


def _path(value: str | Path | None) -> Path | None:
    return Path(value) if value is not None else None


def _read(
    source: Path, dataset_format: str, annotations: Path | None, images_dir: Path | None, out_dir: Path | None
) -> SourceDataset:
    if dataset_format == "voc":
        return read_voc(source, annotations, images_dir)
    if dataset_format == "coco":
        return read_coco(source, images_dir, exclude=out_dir)
    return read_yolo(source)


def _use_split_lists(dataset: SourceDataset, lists_dir: Path | None, apply: bool, problems: list[Problem]) -> None:
    """Find the dataset's split lists (in ``lists_dir``, else next to the data) and, when ``apply``, split by them."""
    if lists_dir is not None:
        if dataset.root is None:
            raise DatasetError(f"--split-lists: the splits are the source's own ({dataset.split_lists}); drop one")
        files = split_list_files(lists_dir)
        if not files:
            raise DatasetError(f"--split-lists {lists_dir}: no train.txt, val.txt or test.txt in it")
    elif dataset.root is not None:
        files = find_split_lists(dataset.root)
    else:
        return
    if files:
        dataset.split_lists = describe_lists(files, dataset.root)
        if apply:
            problems.extend(apply_split_lists(dataset.images, read_split_lists(files)))


def _assign_splits(
    dataset: SourceDataset, ratios: tuple[float, float, float] | None, seed: int, problems: list[Problem]
) -> tuple[list[_Assignment], str]:
    """(image, split) pairs from the dataset's own lists, or from a seeded ratio split; and how they were made."""
    assignments: list[_Assignment] = []
    if ratios is None and dataset.split_lists is not None:
        for image in dataset.images:
            if not image.splits:
                detail = f"annotated ({image.annotation}) but in none of {dataset.split_lists}"
                problems.append(Problem(ProblemKind.NOT_IN_SPLIT, str(image.image), None, detail))
            assignments.extend(_Assignment(image, split) for split in image.splits)
        present = {a.split for a in assignments}
        missing = [split for split in ("train", "val") if split not in present]
        if missing:
            raise DatasetError(
                f"the dataset's split lists ({dataset.split_lists}) give no {' and no '.join(missing)} images: "
                "pass --split TRAIN,VAL,TEST to split by ratio instead"
            )
        split_source = f"the dataset's own ({dataset.split_lists})"
    else:
        used = ratios or DEFAULT_RATIOS
        unique: dict[str, AnnotatedImage] = {}
        for image in dataset.images:
            first = unique.setdefault(image.image.as_posix(), image)
            if first is not image:
                detail = f"annotated in both {first.annotation} and {image.annotation}: the first is used"
                problems.append(Problem(ProblemKind.DUPLICATE_IMAGE_NAME, str(image.image), None, detail))
        split_of = ratio_split(unique, used, seed)
        assignments = [_Assignment(image, split_of[key]) for key, image in unique.items()]
        ignored = f", ignoring {dataset.split_lists}" if dataset.split_lists else ""
        split_source = f"ratio train/val/test {used[0]:g}/{used[1]:g}/{used[2]:g}, seed {seed}{ignored}"

    splits_by_path: dict[str, list[str]] = defaultdict(list)
    for assignment in assignments:
        splits_by_path[assignment.image.image.as_posix()].append(assignment.split)
    for path, splits in splits_by_path.items():
        if len(set(splits)) > 1:
            detail = f"in {' and '.join(sorted(set(splits), key=SPLITS.index))}: kept in each"
            problems.append(Problem(ProblemKind.SPLIT_OVERLAP, path, None, detail))
    order = {id(image): i for i, image in enumerate(dataset.images)}
    assignments.sort(key=lambda a: (SPLITS.index(a.split), order[id(a.image)]))
    return assignments, split_source


def _drop_name_collisions(assignments: list[_Assignment], problems: list[Problem]) -> list[_Assignment]:
    """Within a split, image files are written under their own name: the first of equal names is kept."""
    first_by_name: dict[tuple[str, str], _Assignment] = {}
    kept: list[_Assignment] = []
    for assignment in assignments:
        key = (assignment.split, assignment.image.image.stem)
        first = first_by_name.setdefault(key, assignment)
        if first is assignment:
            kept.append(assignment)
            continue
        if first.image.image == assignment.image.image:
            detail = f"listed twice in {assignment.split} (annotated in {first.image.annotation} too): skipped"
        else:
            detail = f"same name as {first.image.image} in {assignment.split}: skipped"
        problems.append(Problem(ProblemKind.DUPLICATE_IMAGE_NAME, str(assignment.image.image), None, detail))
    return kept


def _check_images(
    assignments: list[_Assignment],
    class_names: list[str],
    skip_difficult: bool,
    keep_empty: bool,
    problems: list[Problem],
    progress: bool,
) -> dict[int, list[Label]]:
    """Decode every image once; id(image) -> its label lines, for the images that can be used."""
    class_ids = {name: i for i, name in enumerate(class_names)}
    unique = list({id(a.image): a.image for a in assignments}.values())
    sizes: dict[Path, tuple[int, int] | None] = {}
    labels: dict[int, list[Label]] = {}
    with quiet_opencv():
        for image in tqdm(unique, desc="checking images", unit="image", disable=None if progress else True):
            if image.image not in sizes:
                try:
                    sizes[image.image] = image_size(image.image)
                except ImageProblem as problem:
                    sizes[image.image] = None
                    problems.append(Problem(problem.kind, str(image.image), None, problem.detail))
            size = sizes[image.image]
            placed = _place_boxes(image, size, class_ids, skip_difficult, keep_empty, problems) if size else None
            if placed is not None:
                labels[id(image)] = placed
    return labels


def _place_boxes(
    image: AnnotatedImage,
    size: tuple[int, int],
    class_ids: dict[str, int],
    skip_difficult: bool,
    keep_empty: bool,
    problems: list[Problem],
) -> list[Label] | None:
    """Label lines of one image (class ids from names, boxes clipped to their frame and normalised), or None when the
    image is left out."""
    frame = _frame(image, size, problems)
    if frame is None:
        return None
    labels: list[Label] = []
    seen: set[Label] = set()
    for box in image.boxes:
        label = _place_box(box, frame, class_ids, skip_difficult, problems)
        if label is None:
            continue
        if label in seen:
            problems.append(Problem(ProblemKind.DUPLICATE_BOX, str(box.path), box.line, f"{_describe(box)}: skipped"))
            continue
        seen.add(label)
        labels.append(label)
    wanted = image.dropped + sum(box.class_name in class_ids for box in image.boxes)
    if wanted and not labels:
        outcome = "kept without boxes (--keep-empty)" if keep_empty else "left out (--keep-empty keeps it)"
        detail = f"none of its {wanted} boxes in {image.annotation} could be used: {outcome}"
        problems.append(Problem(ProblemKind.NO_VALID_BOX, str(image.image), None, detail))
        return labels if keep_empty else None
    return labels


def _frame(image: AnnotatedImage, size: tuple[int, int], problems: list[Problem]) -> tuple[int, int] | None:
    """The (width, height) the image's pixel coordinates are in: the real size, or the declared one where they differ
    and the boxes fit it (normalising by it scales them by real/declared). None (problem recorded) when the boxes fit
    neither, or the aspect ratios differ."""
    declared = image.declared_size
    if declared is None or declared == size:
        return size
    (declared_w, declared_h), (real_w, real_h) = declared, size

    def report(kind: ProblemKind, outcome: str) -> None:
        subject = f"{image.reference} declares" if image.reference else "<size> declares"
        detail = f"{subject} {declared_w}x{declared_h} but {image.image.name} is {real_w}x{real_h}: {outcome}"
        problems.append(Problem(kind, str(image.annotation), image.size_line, detail))

    if abs(declared_w * real_h - declared_h * real_w) > _ASPECT_TOLERANCE * declared_h * real_w:
        rotated = " (rotated, e.g. by its EXIF orientation)" if declared == (real_h, real_w) else ""
        report(ProblemKind.SIZE_MISMATCH, f"another aspect ratio{rotated}; the boxes cannot be placed: skipped")
        return None
    reach_x = max((box.x1 for box in image.boxes), default=0.0)
    reach_y = max((box.y1 for box in image.boxes), default=0.0)
    reach = f"its boxes reach ({reach_x:g}, {reach_y:g})"
    if reach_x <= declared_w + _FRAME_SLACK and reach_y <= declared_h + _FRAME_SLACK:
        scale = f"{real_w / declared_w:.4g} x {real_h / declared_h:.4g}"
        report(ProblemKind.SIZE_SCALED, f"{reach}, inside the declared frame: scaled by {scale}")
        return declared
    if reach_x <= real_w + _FRAME_SLACK and reach_y <= real_h + _FRAME_SLACK:
        report(ProblemKind.SIZE_REAL_FRAME, f"{reach}, past the declared frame but inside the image: kept as they are")
        return size
    report(ProblemKind.SIZE_MISMATCH, f"{reach}, outside both the declared frame and the image: skipped")
    return None


def _place_box(
    box: SourceBox,
    frame: tuple[int, int],
    class_ids: dict[str, int],
    skip_difficult: bool,
    problems: list[Problem],
) -> Label | None:
    def report(kind: ProblemKind, detail: str) -> None:
        problems.append(Problem(kind, str(box.path), box.line, detail))

    width, height = frame
    class_id = class_ids.get(box.class_name)
    if class_id is None:
        report(ProblemKind.UNKNOWN_CLASS, f"{_describe(box)}: {box.class_name!r} is not in the class list")
        return None
    if box.difficult:
        report(ProblemKind.DIFFICULT_BOX, f"{_describe(box)}: {'skipped' if skip_difficult else 'kept'}")
        if skip_difficult:
            return None
    if box.x1 <= box.x0 or box.y1 <= box.y0:
        report(ProblemKind.DEGENERATE_BOX, f"{_describe(box)} has zero or negative width or height")
        return None
    extent_x, extent_y = (1.0, 1.0) if box.normalized else (float(width), float(height))
    snapped = (_snap(box.x0, extent_x), _snap(box.y0, extent_y), _snap(box.x1, extent_x), _snap(box.y1, extent_y))
    x0, x1 = min(max(snapped[0], 0.0), extent_x), min(max(snapped[2], 0.0), extent_x)
    y0, y1 = min(max(snapped[1], 0.0), extent_y), min(max(snapped[3], 0.0), extent_y)
    if x1 <= x0 or y1 <= y0:
        report(ProblemKind.DEGENERATE_BOX, f"{_describe(box)} lies outside the {width}x{height} image")
        return None
    if (x0, y0, x1, y1) != snapped:
        corners = f"({x0:g}, {y0:g}, {x1:g}, {y1:g})"
        report(
            ProblemKind.CLIPPED_BOX,
            f"{_describe(box)} reaches outside the {width}x{height} image: clipped to {corners}",
        )
    cx, cy = round((x0 + x1) / 2 / extent_x, 6), round((y0 + y1) / 2 / extent_y, 6)
    w, h = round((x1 - x0) / extent_x, 6), round((y1 - y0) / extent_y, 6)
    if w == 0 or h == 0:
        report(ProblemKind.DEGENERATE_BOX, f"{_describe(box)} is narrower than a millionth of the image")
        return None
    return class_id, cx, cy, w, h


def _snap(value: float, extent: float) -> float:
    """Move a coordinate within rounding distance (a millionth of the extent) outside [0, extent] onto the edge."""
    tolerance = extent * ROUNDING_TOLERANCE
    if -tolerance <= value < 0:
        return 0.0
    if extent < value <= extent + tolerance:
        return extent
    return value


def _describe(box: SourceBox) -> str:
    where = f"{box.reference} " if box.reference else ""
    scale = " normalised" if box.normalized else ""
    return f"{where}{box.class_name!r} box ({box.x0:g}, {box.y0:g}, {box.x1:g}, {box.y1:g}{scale})"


def _check_usable(report: ImportReport) -> None:
    if report.total_images == 0:
        raise UnusableDatasetError(f"no usable images in {report.source}: every image was skipped", report)
    empty = [split for split in ("train", "val") if report.images[split] == 0]
    if empty:
        raise UnusableDatasetError(f"no usable {' and no '.join(empty)} images in {report.source}", report)
    if report.total_boxes == 0:
        raise UnusableDatasetError(f"no usable boxes in {report.source}: nothing to train on", report)


def _write_output(
    out_dir: Path,
    kept: list[_Assignment],
    labels: dict[int, list[Label]],
    report: ImportReport,
    *,
    link: bool,
    overwrite: bool,
    progress: bool,
) -> None:
    """Write images (copies or symlinks), label files and data.yaml."""
    if overwrite:
        _remove_previous_import(out_dir, [a.image.image for a in kept])
    splits = [split for split in SPLITS if report.images.get(split)]
    for split in splits:
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / split).mkdir(parents=True, exist_ok=True)
    for assignment in tqdm(kept, desc="writing", unit="image", disable=None if progress else True):
        image = assignment.image.image
        target = out_dir / "images" / assignment.split / image.name
        if link:
            target.symlink_to(image.resolve())
        else:
            shutil.copyfile(image, target)
        lines = "".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, x, y, w, h in labels[id(assignment.image)])
        (out_dir / "labels" / assignment.split / image.name).with_suffix(".txt").write_text(lines, encoding="utf-8")

    config = {split: f"images/{split}" for split in splits}
    config["nc"] = len(report.classes)
    config["names"] = dict(enumerate(report.classes))
    header = (
        f"# Imported from the {report.format.upper()} dataset {report.source} by `python -m detector data import`.\n"
        f"# Splits: {report.split_source}. No 'path' key: the dataset root is this file's folder.\n"
    )
    body = yaml.safe_dump(config, sort_keys=False, allow_unicode=True, default_flow_style=False)
    (out_dir / "data.yaml").write_text(header + body, encoding="utf-8")


def _remove_previous_import(out_dir: Path, sources: list[Path]) -> None:
    """Remove what an earlier import wrote, after making sure no source image lies inside it."""
    for name in ("images", "labels"):
        folder = (out_dir / name).resolve()
        inside = next((p for p in sources if folder in p.resolve().parents), None)
        if inside is not None:
            raise DatasetError(f"refusing to overwrite {out_dir / name}: it holds the source image {inside}")
    for name in (*_DATASET_ENTRIES, REPORT_NAME):
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            os.remove(path)
