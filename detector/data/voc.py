"""Pascal VOC reader: ``Annotations/*.xml`` and ``JPEGImages/`` (or the same folders under other usual names).

Box corners are read as written (pixel coordinates, the box spanning ``xmin..xmax``), so a box whose ``xmax`` is not
greater than its ``xmin`` has no width and is degenerate.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from .folders import describe_folder, named_child
from .report import DatasetError, Problem, ProblemKind
from .source import IMAGE_SUFFIXES, AnnotatedImage, SourceBox, SourceDataset, is_image_file, parse_number

ANNOTATION_FOLDERS = ("Annotations", "annotation")
IMAGE_FOLDERS = ("JPEGImages", "images")
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


@dataclass(frozen=True)
class VocLayout:
    """Where a VOC dataset's parts are: its folder (split lists are looked for there), annotations and images."""

    root: Path
    annotations: Path
    images: Path


def find_layout(source: Path, annotations: Path | None = None, images: Path | None = None) -> VocLayout:
    """Find the annotation and image folders of the VOC dataset in ``source``, or use the ones given.

    Looked for, in any letter case: ``Annotations/`` (or ``annotations/``) beside ``JPEGImages/`` (or ``images/``), in
    ``source`` or in its one subfolder that has them (``VOCdevkit/VOC2012``); else XML files beside the images in
    ``source`` itself.
    """
    if not source.is_dir():
        raise DatasetError(f"VOC source {source} is not a folder")
    for given, option in ((annotations, "--annotations"), (images, "--images")):
        if given is not None and not given.is_dir():
            raise DatasetError(f"{option} {given} is not a folder")
    if annotations is None:
        root, annotations = _find_annotations(source)
    else:
        root = source
    if images is None:
        images = named_child(root, IMAGE_FOLDERS, is_dir=True) or named_child(
            annotations.parent, IMAGE_FOLDERS, is_dir=True
        )
    if images is None:
        if not any(is_image_file(p) for p in annotations.iterdir()):
            raise DatasetError(
                f"no image folder ({_names(IMAGE_FOLDERS)}, any case) in {root}, which holds {describe_folder(root)}, "
                f"and no images beside the XML files in {annotations}: name the folder with --images DIR"
            )
        images = annotations
    return VocLayout(root, annotations, images)


def _find_annotations(source: Path) -> tuple[Path, Path]:
    """(dataset folder, annotation folder) in ``source`` or its one subfolder with one; else ``source`` if it holds
    XML files."""
    found = named_child(source, ANNOTATION_FOLDERS, is_dir=True)
    if found is not None:
        return source, found
    nested = [
        (folder, annotations)
        for folder in sorted(p for p in source.iterdir() if p.is_dir())
        if (annotations := named_child(folder, ANNOTATION_FOLDERS, is_dir=True)) is not None
    ]
    if len(nested) > 1:
        names = ", ".join(f"{folder.name}/" for folder, _ in nested)
        raise DatasetError(f"several VOC datasets in {source} ({names}): point SRC at one of them")
    if nested:
        return nested[0]
    if any(p.suffix.lower() == ".xml" and p.is_file() for p in source.iterdir()):
        return source, source
    raise DatasetError(
        f"no Annotations/ folder in {source}: looked for {_names(ANNOTATION_FOLDERS)} (any case) in it and in its "
        f"subfolders, and for XML files beside the images in it, but it holds {describe_folder(source)}; name the "
        "folders with --annotations DIR and --images DIR"
    )


def _names(folders: tuple[str, ...]) -> str:
    return " or ".join(f"{name}/" for name in folders)


def read_voc(source: Path, annotations: Path | None = None, images: Path | None = None) -> SourceDataset:
    """Read the VOC dataset in ``source`` (see :func:`find_layout`; ``annotations`` and ``images`` name its folders)."""
    layout = find_layout(source, annotations, images)
    xml_files = sorted(p for p in layout.annotations.iterdir() if p.suffix.lower() == ".xml" and p.is_file())
    if not xml_files:
        raise DatasetError(f"no annotation files (*.xml) in {layout.annotations}")
    files_by_stem: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(layout.images.iterdir()):
        if path.is_file() and path.suffix.lower() != ".xml":
            files_by_stem[path.stem].append(path)
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for paths in files_by_stem.values() for p in paths):
        raise DatasetError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {layout.images}")

    problems: list[Problem] = []
    images_by_stem: dict[str, AnnotatedImage] = {}
    for xml_path in xml_files:
        annotated = _read_annotation(xml_path, layout.images, files_by_stem, problems)
        if annotated is not None:
            images_by_stem[xml_path.stem] = annotated

    annotated_stems = {xml.stem for xml in xml_files}
    for stem, paths in files_by_stem.items():
        if stem not in annotated_stems:
            problems.extend(
                Problem(ProblemKind.MISSING_ANNOTATION, str(p), None, f"no {layout.annotations / (stem + '.xml')}")
                for p in paths
                if p.suffix.lower() in IMAGE_SUFFIXES
            )

    images = list(images_by_stem.values())
    class_names = sorted({box.class_name for image in images for box in image.boxes})
    return SourceDataset(images, class_names, None, problems, layout.root)


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
    declared, size_line = _declared_size(xml_path, root, problems)
    boxes = _read_boxes(xml_path, root, problems)
    dropped = len(root.findall("object")) - len(boxes)
    return AnnotatedImage(
        image, xml_path, declared, boxes, size_line=size_line, dropped=dropped, list_name=xml_path.stem
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


def _declared_size(xml_path: Path, root: XmlNode, problems: list[Problem]) -> tuple[tuple[int, int] | None, int | None]:
    """(width, height) that <size> declares, or None where it declares none that can be used; and its line."""
    size = root.find("size")
    if size is None:
        return None, None
    width_text, height_text = size.child_text("width"), size.child_text("height")
    width, height = parse_number(width_text), parse_number(height_text)
    if width is None or height is None or width <= 0 or height <= 0:
        detail = f"<size> width {width_text!r} / height {height_text!r} is not a size: the real image size is used"
        problems.append(Problem(ProblemKind.SIZE_INVALID, str(xml_path), size.line, detail))
        return None, size.line
    return (round(width), round(height)), size.line


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
