"""What an import found: problems (kind, file, line, detail) and the counts of what was written."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """The source cannot be imported at all (missing folder, no images, no annotations, bad arguments)."""


class ProblemKind(str, Enum):
    """Every kind of problem an import reports; the value is the kind's name in the JSON report."""

    description: str

    def __new__(cls, value: str, description: str) -> ProblemKind:
        member = str.__new__(cls, value)
        member._value_ = value
        member.description = description
        return member

    ANNOTATION_UNPARSEABLE = "annotation_unparseable", "annotation file could not be parsed (skipped)"
    INVALID_ENTRY = "invalid_entry", "malformed entry in an annotation file (skipped)"
    NON_NUMERIC_VALUE = "non_numeric_value", "value that is not a (finite) number (box skipped)"
    WRONG_FIELD_COUNT = "wrong_field_count", "label line with a wrong number of fields (skipped)"
    CLASS_OUT_OF_RANGE = "class_out_of_range", "class id outside the dataset's names (box skipped)"
    COORDINATE_OUT_OF_RANGE = "coordinate_out_of_range", "normalised value outside [0, 1] (box clipped or skipped)"
    UNKNOWN_CLASS = "unknown_class", "class not in the class list (box skipped)"
    DEGENERATE_BOX = "degenerate_box", "box with zero or negative width or height (skipped)"
    CLIPPED_BOX = "clipped_box", "box reaching outside the image (clipped)"
    DUPLICATE_BOX = "duplicate_box", "box identical to another box of the same image (skipped)"
    DIFFICULT_BOX = "difficult_box", "VOC box marked difficult (kept unless --skip-difficult)"
    CROWD_BOX = "crowd_box", "COCO crowd region, iscrowd=1 (skipped)"
    SIZE_INVALID = "size_invalid", "declared image size that is not a positive number (real size used)"
    SIZE_SCALED = "size_scaled", "declared size differs from the real one, boxes in the declared frame (scaled)"
    SIZE_REAL_FRAME = "size_real_frame", "declared size differs from the real one, boxes in the real frame (kept)"
    SIZE_MISMATCH = (
        "size_mismatch",
        "declared size differs from the real one, boxes in neither frame or other aspect ratio (image skipped)",
    )
    IMAGE_MISSING = "image_missing", "image file not found (skipped)"
    IMAGE_UNREADABLE = "image_unreadable", "image file unreadable, corrupt or of an unsupported format (skipped)"
    DUPLICATE_IMAGE_NAME = "duplicate_image_name", "image name that is not unique (later ones skipped)"
    MISSING_ANNOTATION = "missing_annotation", "image or split-list entry without annotation file (skipped)"
    MISSING_LABEL = "missing_label", "YOLO image without label file (imported without boxes)"
    LABEL_WITHOUT_IMAGE = "label_without_image", "label file without image (ignored)"
    NOT_IN_SPLIT = "not_in_split", "annotated image listed in no split list (skipped)"
    NO_VALID_BOX = "no_valid_box", "image whose every box was dropped (left out unless --keep-empty)"
    SPLIT_OVERLAP = "split_overlap", "image in more than one split (kept in each)"


@dataclass(frozen=True)
class Problem:
    """One problem: its kind, the file it is in, the line where one exists, and what is wrong."""

    kind: ProblemKind
    path: str
    line: int | None
    detail: str

    @property
    def location(self) -> str:
        """``path:line``, or ``path`` where no line applies."""
        return f"{self.path}:{self.line}" if self.line is not None else self.path

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "path": self.path, "line": self.line, "detail": self.detail}


def list_problems(problems: list[Problem], limit: int = 5) -> str:
    """The first ``limit`` problems, one ``kind at path:line: detail`` per line, to add to an error message."""
    lines = [f"\n  {p.kind.value} at {p.location}: {p.detail}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"\n  ... and {len(problems) - limit} more problems")
    return "".join(lines)


@dataclass
class ImportReport:
    """Result of an import: what was written per split and class, what was skipped, and every problem."""

    source: str
    format: str
    output: str | None
    split_source: str
    classes: list[str]
    images: dict[str, int] = field(default_factory=dict)
    """split -> images written (or, without output, that would be written)"""
    boxes: dict[str, dict[str, int]] = field(default_factory=dict)
    """split -> class name -> boxes"""
    images_without_boxes: dict[str, int] = field(default_factory=dict)
    """split -> images with an empty label file"""
    problems: list[Problem] = field(default_factory=list)

    @property
    def total_images(self) -> int:
        return sum(self.images.values())

    @property
    def total_boxes(self) -> int:
        return sum(sum(per_class.values()) for per_class in self.boxes.values())

    def problem_counts(self) -> dict[str, int]:
        """Problem kind -> count, in order of first occurrence."""
        return dict(Counter(problem.kind.value for problem in self.problems))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["problem_counts"] = self.problem_counts()
        data["problems"] = [problem.to_dict() for problem in self.problems]
        return data

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    def summary(self, max_examples: int = 5) -> str:
        """Human-readable summary: images and boxes per split and class, problems per kind with examples."""
        splits = list(self.images)
        destination = f" -> {self.output}" if self.output else " (validated, nothing written)"
        lines = [f"{self.format.upper()} dataset {self.source}{destination}", f"splits: {self.split_source}", ""]
        name_width = max([len("no boxes"), *(len(name) for name in self.classes)])
        lines.append(f"{'':<{name_width}}  " + "".join(f"{split:>8}" for split in splits) + f"{'total':>8}")
        lines.append(
            f"{'images':<{name_width}}  " + "".join(f"{self.images[s]:>8}" for s in splits) + f"{self.total_images:>8}"
        )
        lines.append(
            f"{'no boxes':<{name_width}}  "
            + "".join(f"{self.images_without_boxes[s]:>8}" for s in splits)
            + f"{sum(self.images_without_boxes.values()):>8}"
        )
        for name in self.classes:
            counts = [self.boxes[split].get(name, 0) for split in splits]
            lines.append(f"{name:<{name_width}}  " + "".join(f"{c:>8}" for c in counts) + f"{sum(counts):>8}")
        lines.append(
            f"{'boxes':<{name_width}}  "
            + "".join(f"{sum(self.boxes[s].values()):>8}" for s in splits)
            + f"{self.total_boxes:>8}"
        )
        lines.append("")
        if not self.problems:
            lines.append("problems: none")
            return "\n".join(lines)
        lines.append(f"problems: {len(self.problems)}")
        for kind_name, count in self.problem_counts().items():
            kind = ProblemKind(kind_name)
            lines.append(f"  {kind.value}: {count} - {kind.description}")
            examples = [problem for problem in self.problems if problem.kind is kind][:max_examples]
            lines.extend(f"    {problem.location}: {problem.detail}" for problem in examples)
            if count > len(examples):
                lines.append(f"    ... and {count - len(examples)} more")
        return "\n".join(lines)
