"""Pascal VOC reader: ``Annotations/*.xml``, ``JPEGImages/``, optional ``ImageSets/Main/{train,val,test}.txt``.

Box corners are read as written (pixel coordinates, the box spanning ``xmin..xmax``), so a box whose ``xmax`` is not
greater than its ``xmin`` has no width and is degenerate.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from .report import DatasetError, Problem, ProblemKind
from .source import IMAGE_SUFFIXES, SPLITS, AnnotatedImage, SourceBox, SourceDataset, parse_number

_CORNERS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class XmlNode:
    """An XML element with the line it starts on (ElementTree does not keep line numbers)."""

    tag: str
    line: int
    children: list[XmlNode] = field(default_factory=list)
    text: str = ""

    def find(self, tag: str) -> XmlNode | None:
        return next((child for child in self.children if child.tag == tag), None)

    def findall(self, tag: str) -> list[XmlNode]:
        return [child for child in self.children if child.tag == tag]

    def child_text(self, tag: str) -> str | None:
        child = self.find(tag)
        return child.text if child is not None else None


def parse_xml(path: Path) -> XmlNode:
    """Parse an XML file into XmlNodes; raises ``expat.ExpatError`` (with ``lineno``) or ``OSError``."""
    parser = expat.ParserCreate()
    stack: list[XmlNode] = []
    roots: list[XmlNode] = []
    text_parts: list[list[str]] = []

    def start(tag: str, _attributes: dict[str, str]) -> None:
        node = XmlNode(tag, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)
        text_parts.append([])

    def end(_tag: str) -> None:
        stack.pop().text = "".join(text_parts.pop()).strip()

    def characters(data: str) -> None:
        if text_parts:
            text_parts[-1].append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    with path.open("rb") as file:
        parser.ParseFile(file)
    return roots[0]


def read_voc(source: Path, images_dir: Path | None = None) -> SourceDataset:
    """Read a VOC dataset rooted at ``source`` (the folder holding ``Annotations/`` and ``JPEGImages/``)."""
    if not source.is_dir():
        raise DatasetError(f"VOC source {source} is not a folder")
    annotations_dir = source / "Annotations"
    if not annotations_dir.is_dir():
        raise DatasetError(
            f"no Annotations/ folder in {source}: point SRC at the folder that holds Annotations/ and JPEGImages/ "
            "(e.g. VOCdevkit/VOC2012)"
        )
    image_dir = images_dir if images_dir is not None else source / "JPEGImages"
    if not image_dir.is_dir():
        raise DatasetError(f"image folder {image_dir} does not exist (pass --images to name another one)")
    xml_files = sorted(p for p in annotations_dir.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not xml_files:
        raise DatasetError(f"no annotation files (*.xml) in {annotations_dir}")
    files_by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(image_dir.iterdir()):
        if path.is_file():
            files_by_stem[path.stem].append(path)
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for paths in files_by_stem.values() for p in paths):
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {image_dir}")

    problems: list[Problem] = []
    images_by_stem: dict[str, AnnotatedImage] = {}
    for xml_path in xml_files:
        annotated = _read_annotation(xml_path, image_dir, files_by_stem, problems)
        if annotated is not None:
            images_by_stem[xml_path.stem] = annotated

    annotated_stems = {xml.stem for xml in xml_files}
    for stem, paths in files_by_stem.items():
        if stem not in annotated_stems:
            problems.extend(
                Problem(ProblemKind.MISSING_ANNOTATION, str(p), None, f"no {annotations_dir / (stem + '.xml')}")
                for p in paths
                if p.suffix.lower() in IMAGE_SUFFIXES
            )

    split_lists, split_list_problems = _apply_split_lists(source, images_by_stem, annotated_stems)
    images = list(images_by_stem.values())
    class_names = sorted({box.class_name for image in images for box in image.boxes})
    return SourceDataset(images, class_names, split_lists, problems, split_list_problems)


def _read_annotation(
    xml_path: Path, image_dir: Path, files_by_stem: dict[str, list[Path]], problems: list[Problem]
) -> AnnotatedImage | None:
    """One XML file -> its image and boxes, or None (problem recorded) when it cannot be used."""
    try:
        root = parse_xml(xml_path)
    except expat.ExpatError as error:
        detail = f"XML error: {expat.errors.messages[error.code]} (column {error.offset + 1})"
        problems.append(Problem(ProblemKind.ANNOTATION_UNPARSEABLE, str(xml_path), error.lineno, detail))
        return None
    except OSError as error:
        problems.append(Problem(ProblemKind.ANNOTATION_UNPARSEABLE, str(xml_path), None, f"cannot read: {error}"))
        return None
    if root.tag != "annotation":
        detail = f"root element is <{root.tag}>, expected <annotation>"
        problems.append(Problem(ProblemKind.ANNOTATION_UNPARSEABLE, str(xml_path), root.line, detail))
        return None

    image = _find_image(xml_path, root, image_dir, files_by_stem, problems)
    if image is None:
        return None
    return AnnotatedImage(
        image, xml_path, _declared_size(xml_path, root, problems), _read_boxes(xml_path, root, problems)
    )


def _find_image(
    xml_path: Path, root: XmlNode, image_dir: Path, files_by_stem: dict[str, list[Path]], problems: list[Problem]
) -> Path | None:
    """The image named like the XML file (any supported suffix), else the one its <filename> names."""
    same_stem = files_by_stem.get(xml_path.stem, [])
    supported = [p for p in same_stem if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(supported) > 1:
        names = ", ".join(p.name for p in supported)
        detail = f"several images named {xml_path.stem!r} in {image_dir}: {names}; cannot tell which one is annotated"
        problems.append(Problem(ProblemKind.DUPLICATE_IMAGE_NAME, str(xml_path), None, detail))
        return None
    if supported:
        return supported[0]
    filename = root.child_text("filename")
    if filename:
        named = image_dir / Path(filename).name
        if named.is_file() and named.suffix.lower() in IMAGE_SUFFIXES:
            return named
    if same_stem:
        detail = f"{same_stem[0]} has an unsupported image format (use one of {', '.join(sorted(IMAGE_SUFFIXES))})"
        problems.append(Problem(ProblemKind.IMAGE_UNREADABLE, str(xml_path), None, detail))
        return None
    named_too = f" nor <filename> {filename!r}" if filename else ""
    detail = f"no image {xml_path.stem}.* in {image_dir}{named_too}"
    problems.append(Problem(ProblemKind.IMAGE_MISSING, str(xml_path), None, detail))
    return None


def _declared_size(xml_path: Path, root: XmlNode, problems: list[Problem]) -> tuple[int, int] | None:
    size = root.find("size")
    if size is None:
        return None
    width_text, height_text = size.child_text("width"), size.child_text("height")
    width, height = parse_number(width_text), parse_number(height_text)
    if width is None or height is None:
        detail = f"<size> width {width_text!r} / height {height_text!r} is not a number: the real image size is used"
        problems.append(Problem(ProblemKind.SIZE_MISMATCH, str(xml_path), size.line, detail))
        return None
    return round(width), round(height)


def _read_boxes(xml_path: Path, root: XmlNode, problems: list[Problem]) -> list[SourceBox]:
    boxes: list[SourceBox] = []
    for obj in root.findall("object"):
        name = (obj.child_text("name") or "").strip()
        if not name:
            problems.append(Problem(ProblemKind.INVALID_ENTRY, str(xml_path), obj.line, "<object> without <name>"))
            continue
        bndbox = obj.find("bndbox")
        if bndbox is None:
            detail = f"<object> {name!r} without <bndbox>"
            problems.append(Problem(ProblemKind.INVALID_ENTRY, str(xml_path), obj.line, detail))
            continue
        corners: list[float] = []
        for corner in _CORNERS:
            node = bndbox.find(corner)
            value = parse_number(node.text) if node is not None else None
            if node is None:
                detail = f"<bndbox> of {name!r} without <{corner}>"
                problems.append(Problem(ProblemKind.INVALID_ENTRY, str(xml_path), bndbox.line, detail))
                break
            if value is None:
                detail = f"<{corner}> {node.text!r} of {name!r} is not a number"
                problems.append(Problem(ProblemKind.NON_NUMERIC_VALUE, str(xml_path), node.line, detail))
                break
            corners.append(value)
        else:
            difficult = parse_number(obj.child_text("difficult")) not in (None, 0.0)
            boxes.append(SourceBox(name, *corners, False, xml_path, bndbox.line, difficult))
    return boxes


def _apply_split_lists(
    source: Path, images_by_stem: dict[str, AnnotatedImage], annotated_stems: set[str]
) -> tuple[str | None, list[Problem]]:
    """Set ``splits`` of each image from ``ImageSets/Main/{train,val,test}.txt``; returns their description."""
    lists_dir = source / "ImageSets" / "Main"
    list_files = {split: lists_dir / f"{split}.txt" for split in SPLITS if (lists_dir / f"{split}.txt").is_file()}
    if not list_files:
        return None, []
    problems: list[Problem] = []
    splits_by_stem: dict[str, list[str]] = defaultdict(list)
    for split, list_file in list_files.items():
        try:
            lines = list_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise DatasetError(f"cannot read split list {list_file}: {error}") from error
        for line_number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            stem = fields[0]
            if split in splits_by_stem[stem]:
                continue
            splits_by_stem[stem].append(split)
            if stem not in annotated_stems:
                detail = f"{stem!r} is listed but {source / 'Annotations' / (stem + '.xml')} does not exist"
                problems.append(Problem(ProblemKind.MISSING_ANNOTATION, str(list_file), line_number, detail))
    for stem, image in images_by_stem.items():
        image.splits = tuple(splits_by_stem.get(stem, ()))
    return "ImageSets/Main/" + ",".join(f"{split}.txt" for split in list_files), problems
