"""Dataset importer (detector.data): VOC / COCO / YOLO -> YOLO layout, split handling, every problem kind, the CLI.

Every test builds its own tiny dataset (64x48 images with drawn rectangles); only the `shared` test reads real data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from detector.data import DatasetError, ImportReport, ProblemKind, UnusableDatasetError, import_dataset
from detector.data import cli as data_cli
from detector.data.importer import REPORT_NAME as REPORT
from detector.data.splits import parse_ratios, split_counts

WIDTH, HEIGHT = 64, 48
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- dataset builders


def draw_image(path: Path, boxes: list[tuple[float, float, float, float]] = (), size=(WIDTH, HEIGHT)) -> Path:
    """A small image with a filled rectangle per box and a circle, written with OpenCV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((size[1], size[0], 3), 30, np.uint8)
    for x0, y0, x1, y1 in boxes:
        cv2.rectangle(
            image, (int(x0), int(y0)), (max(int(x1) - 1, int(x0)), max(int(y1) - 1, int(y0))), (0, 200, 0), -1
        )
    cv2.circle(image, (size[0] // 2, size[1] // 2), 3, (0, 0, 255), -1)
    assert cv2.imwrite(str(path), image)
    return path


def voc_xml(filename: str, objects: list[dict], size=(WIDTH, HEIGHT)) -> str:
    """VOC annotation text; each object: name, box (xmin, ymin, xmax, ymax), optional difficult."""
    parts = [
        "<annotation>",
        "  <folder>JPEGImages</folder>",
        f"  <filename>{filename}</filename>",
        f"  <size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>",
    ]
    for obj in objects:
        xmin, ymin, xmax, ymax = obj["box"]
        parts += [
            "  <object>",
            f"    <name>{obj['name']}</name>",
            f"    <difficult>{int(obj.get('difficult', False))}</difficult>",
            "    <bndbox>",
            f"      <xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>",
            "    </bndbox>",
            "  </object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def bndbox_line(xml_text: str, index: int = 0) -> int:
    """1-based line of the index-th <bndbox> in a voc_xml text."""
    lines = [n for n, line in enumerate(xml_text.splitlines(), start=1) if line.strip() == "<bndbox>"]
    return lines[index]


def add_voc_image(
    root: Path,
    stem: str,
    objects: list[dict],
    size=(WIDTH, HEIGHT),
    declared=None,
    images: str = "JPEGImages",
    annotations: str = "Annotations",
) -> str:
    """Image + annotation for one VOC sample (in the folders named ``images`` and ``annotations``); the XML text."""
    draw_image(root / images / f"{stem}.jpg", [o["box"] for o in objects], size)
    text = voc_xml(f"{stem}.jpg", objects, declared or size)
    (root / annotations).mkdir(parents=True, exist_ok=True)
    (root / annotations / f"{stem}.xml").write_text(text)
    return text


def make_voc(
    root: Path,
    count: int = 10,
    lists: dict[str, list[int]] | None = None,
    images: str = "JPEGImages",
    annotations: str = "Annotations",
    lists_folder: str = "ImageSets/Main",
) -> Path:
    """VOC dataset img00..: a 'cat' box and, on even images, a 'dog' box; optional split lists in ``lists_folder``."""
    for i in range(count):
        objects = [{"name": "cat", "box": (4 + i, 4, 30 + i, 30)}]
        if i % 2 == 0:
            objects.append({"name": "dog", "box": (34, 10, 60, 44)})
        add_voc_image(root, f"img{i:02d}", objects, images=images, annotations=annotations)
    if lists is not None:
        write_lists(root / lists_folder, lists)
    return root


def write_lists(folder: Path, lists: dict[str, list[int]], suffix: str = "") -> Path:
    """Split lists ``folder/{split}.txt`` naming img<i><suffix>, one per line."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, indices in lists.items():
        (folder / f"{split}.txt").write_text("".join(f"img{i:02d}{suffix}\n" for i in indices))
    return folder


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


COCO_CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}, {"id": 12, "name": "bird"}]


def make_coco(root: Path, stems: list[str], json_name: str = "instances.json", folder: str = "images") -> Path:
    """COCO dataset: images under root/folder, one JSON in root/annotations; image i has a cat and a dog box."""
    images, annotations = [], []
    for i, stem in enumerate(stems):
        draw_image(root / folder / f"{stem}.jpg", [(2, 2, 20, 30), (30, 10, 60, 40)])
        images.append({"id": i + 1, "file_name": f"{stem}.jpg", "width": WIDTH, "height": HEIGHT})
        annotations.append({"id": 2 * i + 1, "image_id": i + 1, "category_id": 3, "bbox": [2, 2, 18, 28]})
        annotations.append({"id": 2 * i + 2, "image_id": i + 1, "category_id": 7, "bbox": [30, 10, 30, 30]})
    data = {"images": images, "annotations": annotations, "categories": COCO_CATEGORIES}
    return write_json(root / "annotations" / json_name, data)


def make_yolo(root: Path, label_lines: dict[str, list[str]] | None = None, names=("cat", "dog")) -> Path:
    """YOLO dataset with train (4 images) and val (2 images); label_lines overrides a stem's label lines."""
    label_lines = label_lines or {}
    for split, stems in (("train", ["t0", "t1", "t2", "t3"]), ("val", ["v0", "v1"])):
        for stem in stems:
            draw_image(root / "images" / split / f"{stem}.jpg", [(16, 12, 48, 36)])
            lines = label_lines.get(stem, ["0 0.5 0.5 0.5 0.5"])
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))
    config = {"train": "images/train", "val": "images/val", "names": dict(enumerate(names))}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root


# ------------------------------------------------------------------------------------------------------- checks


def problems_of(report: ImportReport, kind: ProblemKind) -> list:
    return [p for p in report.problems if p.kind is kind]


def read_labels(out: Path, split: str, stem: str) -> list[list[float]]:
    text = (out / "labels" / split / f"{stem}.txt").read_text()
    return [[float(v) for v in line.split()] for line in text.splitlines()]


def assert_valid_yolo_output(out: Path, report: ImportReport) -> None:
    """The written layout is what Ultralytics reads: one label file per image, 5 normalised fields, 6 decimals."""
    config = yaml.safe_load((out / "data.yaml").read_text())
    assert "path" not in config
    assert config["nc"] == len(report.classes)
    assert config["names"] == dict(enumerate(report.classes))
    for split, count in report.images.items():
        assert config[split] == f"images/{split}"
        images = sorted((out / "images" / split).iterdir())
        labels = sorted((out / "labels" / split).iterdir())
        assert len(images) == count
        assert [p.stem for p in images] == [p.stem for p in labels]
        boxes = 0
        for label in labels:
            for line in label.read_text().splitlines():
                fields = line.split()
                assert len(fields) == 5, line
                assert 0 <= int(fields[0]) < config["nc"]
                assert all(len(f.split(".")[1]) == 6 for f in fields[1:]), line
                cx, cy, w, h = map(float, fields[1:])
                assert w > 0 and h > 0
                assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6
                assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6
                boxes += 1
        assert boxes == sum(report.boxes[split].values())
    saved = json.loads((out / "import_report.json").read_text())
    assert saved["images"] == report.images
    assert len(saved["problems"]) == len(report.problems)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    data_cli.configure(parser)
    return data_cli.run(parser.parse_args(list(argv)))


# -------------------------------------------------------------------------------------------------- happy paths


def test_voc_import_uses_split_lists_and_writes_yolo_layout(tmp_path):
    source = make_voc(tmp_path / "voc", 10, {"train": [0, 1, 2, 3, 4, 5], "val": [6, 7], "test": [8, 9]})
    out = tmp_path / "out"
    report = import_dataset(source, "voc", out, progress=False)
    assert report.problems == []
    assert report.images == {"train": 6, "val": 2, "test": 2}
    assert report.classes == ["cat", "dog"]
    assert report.boxes["train"] == {"cat": 6, "dog": 3}
    assert "ImageSets/Main" in report.split_source
    assert_valid_yolo_output(out, report)
    # img00: cat (4, 4, 30, 30), dog (34, 10, 60, 44) in 64x48
    assert read_labels(out, "train", "img00") == [
        [0, 0.265625, 0.354167, 0.40625, 0.541667],
        [1, 0.734375, 0.5625, 0.40625, 0.708333],
    ]
    assert (out / "images" / "test" / "img09.jpg").read_bytes() == (source / "JPEGImages" / "img09.jpg").read_bytes()


def test_coco_import_maps_category_ids_in_id_order(tmp_path):
    annotations = make_coco(tmp_path / "coco", [f"im{i}" for i in range(10)], folder="train2017")
    out = tmp_path / "out"
    report = import_dataset(annotations, "coco", out, progress=False)
    assert report.problems == []
    assert report.classes == ["cat", "dog", "bird"]  # category ids 3, 7, 12
    assert report.images == {"train": 8, "val": 1, "test": 1}
    assert sum(report.boxes[s]["cat"] for s in report.images) == 10
    assert sum(report.boxes[s]["bird"] for s in report.images) == 0
    assert_valid_yolo_output(out, report)
    split = next(s for s in report.images if (out / "labels" / s / "im0.txt").exists())
    assert read_labels(out, split, "im0") == [
        [0, 0.171875, 0.333333, 0.28125, 0.583333],
        [1, 0.703125, 0.520833, 0.46875, 0.625],
    ]


def test_coco_one_json_per_split(tmp_path):
    root = tmp_path / "coco"
    make_coco(root, ["a0", "a1", "a2"], "instances_train2017.json", folder="train2017")
    make_coco(root, ["b0", "b1"], "instances_val2017.json", folder="val2017")
    make_coco(root, ["c0"], "instances_test2017.json", folder="test2017")
    write_json(root / "annotations" / "captions_train2017.json", {"annotations": []})  # not an instances file
    report = import_dataset(root, "coco", tmp_path / "out", progress=False)
    assert report.problems == []
    assert report.images == {"train": 3, "val": 2, "test": 1}
    assert "instances_val2017.json (val)" in report.split_source


def test_coco_several_json_without_split_name_is_an_error(tmp_path):
    root = tmp_path / "coco"
    make_coco(root, ["a0", "a1"], "part_one.json")
    make_coco(root, ["b0", "b1"], "part_two.json")
    with pytest.raises(DatasetError, match=r"cannot tell the split of part_one\.json"):
        import_dataset(root, "coco", tmp_path / "out", progress=False)


def test_yolo_validates_in_place_and_writes_cleaned_copy(tmp_path):
    source = make_yolo(tmp_path / "yolo", {"t1": ["0 0.5 0.5 0.5 0.5", "1 0.5 0.5 0.2", "1 0.25 0.25 0.2 0.2"]})
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    report = import_dataset(source / "data.yaml", "yolo", progress=False)
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before  # nothing written
    assert report.output is None
    assert report.images == {"train": 4, "val": 2}
    assert [p.kind for p in report.problems] == [ProblemKind.WRONG_FIELD_COUNT]

    out = tmp_path / "clean"
    report = import_dataset(source, "yolo", out, progress=False)
    assert_valid_yolo_output(out, report)
    assert read_labels(out, "train", "t1") == [[0, 0.5, 0.5, 0.5, 0.5], [1, 0.25, 0.25, 0.2, 0.2]]
    assert report.boxes == {"train": {"cat": 4, "dog": 1}, "val": {"cat": 2, "dog": 0}}


def test_written_data_yaml_is_accepted_by_ultralytics(tmp_path, monkeypatch):
    from ultralytics.data.utils import check_det_dataset

    source = make_voc(tmp_path / "voc", 6, {"train": [0, 1, 2, 3], "val": [4], "test": [5]})
    out = tmp_path / "out"
    report = import_dataset(source, "voc", out, progress=False)
    monkeypatch.chdir(tmp_path)  # the dataset root must come from the yaml's folder, not the working directory
    data = check_det_dataset(str(out / "data.yaml"))
    assert data["nc"] == 2 and data["names"] == {0: "cat", 1: "dog"}
    for split in ("train", "val", "test"):
        assert Path(data[split]) == (out / "images" / split).resolve()
    assert report.images == {"train": 4, "val": 1, "test": 1}


def test_link_symlinks_images(tmp_path):
    source = make_voc(tmp_path / "voc", 4, {"train": [0, 1], "val": [2, 3]})
    out = tmp_path / "out"
    import_dataset(source, "voc", out, link=True, progress=False)
    image = out / "images" / "train" / "img00.jpg"
    assert image.is_symlink() and image.resolve() == (source / "JPEGImages" / "img00.jpg").resolve()


# ------------------------------------------------------------------------------------------------------- splits


def test_ratio_split_is_seeded_and_independent_of_file_order(tmp_path):
    first = make_voc(tmp_path / "a", 20)
    second = tmp_path / "b"  # same files, created in reverse order
    for i in reversed(range(20)):
        add_voc_image(second, f"img{i:02d}", [{"name": "cat", "box": (4 + i, 4, 30 + i, 30)}])

    def assignment(source: Path, seed: int) -> dict[str, str]:
        out = tmp_path / f"out-{source.name}-{seed}"
        report = import_dataset(source, "voc", out, seed=seed, overwrite=True, progress=False)
        assert report.images == {"train": 16, "val": 2, "test": 2}
        return {p.stem: p.parent.name for p in (out / "images").rglob("*.jpg")}

    assert assignment(first, 0) == assignment(second, 0)
    assert assignment(first, 0) != assignment(first, 1)


def test_explicit_split_overrides_split_lists(tmp_path):
    source = make_voc(tmp_path / "voc", 10, {"train": list(range(8)), "val": [8, 9]})
    report = import_dataset(source, "voc", tmp_path / "out", split="0.5,0.5,0", progress=False)
    assert report.images == {"train": 5, "val": 5}
    assert "ignoring ImageSets/Main" in report.split_source


def test_split_lists_without_val_ask_for_a_ratio_split(tmp_path):
    source = make_voc(tmp_path / "voc", 4, {"train": [0, 1, 2, 3]})
    with pytest.raises(DatasetError, match=r"no val images.*--split"):
        import_dataset(source, "voc", tmp_path / "out", progress=False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.8,0.2", "expected 3 comma-separated numbers"),
        ("0.8,x,0.1", "not all numbers"),
        ("0.8,0.3,0.1", "must sum to 1"),
        ("1.2,-0.1,-0.1", "between 0 and 1"),
        ("0,0.5,0.5", "train and val must be greater than 0"),
        ("0.9,0,0.1", "train and val must be greater than 0"),
        ("nan,0.5,0.5", "between 0 and 1"),
    ],
)
def test_split_argument_is_validated(text, message, tmp_path, capsys):
    with pytest.raises(DatasetError, match=message):
        parse_ratios(text)
    source = make_voc(tmp_path / "voc", 2)
    assert run_cli("import", str(source), "--format", "voc", "--out", str(tmp_path / "out"), "--split", text) == 2
    assert message in capsys.readouterr().err


def test_split_counts_keep_train_and_val_non_empty():
    assert split_counts(20, (0.8, 0.1, 0.1)) == (16, 2, 2)
    assert split_counts(10, (0.7, 0.2, 0.1)) == (7, 2, 1)
    assert split_counts(2, (0.9, 0.05, 0.05)) == (1, 1, 0)
    assert split_counts(3, (0.5, 0.01, 0.49)) == (1, 1, 1)
    with pytest.raises(DatasetError, match="at least 2 images"):
        split_counts(1, (0.8, 0.1, 0.1))


# ------------------------------------------------------------------------------------------------------ classes


def test_classes_option_fixes_order_and_skips_other_classes(tmp_path):
    source = make_voc(tmp_path / "voc", 4, {"train": [0, 1], "val": [2, 3]})
    out = tmp_path / "out"
    report = import_dataset(source, "voc", out, classes="dog,cat,bird", progress=False)
    assert report.classes == ["dog", "cat", "bird"]
    assert report.problems == []
    assert read_labels(out, "train", "img00")[0][0] == 1  # cat is now id 1
    report = import_dataset(source, "voc", out, classes=["dog"], overwrite=True, progress=False)
    unknown = problems_of(report, ProblemKind.UNKNOWN_CLASS)
    assert len(unknown) == 4 and all("'cat' is not in the class list" in p.detail for p in unknown)
    assert unknown[0].line == bndbox_line((source / "Annotations" / "img00.xml").read_text())
    assert report.boxes["train"] == {"dog": 1} and report.images_without_boxes["train"] == 1


def test_bad_classes_option_is_an_error(tmp_path):
    source = make_voc(tmp_path / "voc", 2)
    with pytest.raises(DatasetError, match="more than once"):
        import_dataset(source, "voc", tmp_path / "out", classes="cat,cat", progress=False)
    with pytest.raises(DatasetError, match="non-empty"):
        import_dataset(source, "voc", tmp_path / "out", classes="cat,,dog", progress=False)


# ---------------------------------------------------------------------------------------- problems, one per kind


def test_degenerate_box_is_skipped_and_reported_with_line(tmp_path):
    source = make_voc(tmp_path / "voc", 4)
    text = add_voc_image(
        source, "bad", [{"name": "cat", "box": (4, 4, 30, 30)}, {"name": "cat", "box": (20, 9, 20, 30)}]
    )
    out = tmp_path / "out"
    report = import_dataset(source, "voc", out, progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.DEGENERATE_BOX
    assert problem.path == str(source / "Annotations" / "bad.xml")
    assert problem.line == bndbox_line(text, 1)
    split = next(s for s in report.images if (out / "labels" / s / "bad.txt").exists())
    assert len(read_labels(out, split, "bad")) == 1


def test_box_outside_image_is_clipped_or_dropped(tmp_path):
    source = make_voc(tmp_path / "voc", 4)
    boxes = [{"name": "cat", "box": (-10, 20, 32, 60)}, {"name": "dog", "box": (70, 10, 90, 20)}]
    add_voc_image(source, "edge", boxes)
    out = tmp_path / "out"
    report = import_dataset(source, "voc", out, progress=False)
    [clipped] = problems_of(report, ProblemKind.CLIPPED_BOX)
    assert "clipped to (0, 20, 32, 48)" in clipped.detail
    [outside] = problems_of(report, ProblemKind.DEGENERATE_BOX)
    assert "lies outside the 64x48 image" in outside.detail
    split = next(s for s in report.images if (out / "labels" / s / "edge.txt").exists())
    assert read_labels(out, split, "edge") == [[0, 0.25, 0.708333, 0.5, 0.583333]]


def test_missing_image_is_skipped(tmp_path):
    source = make_voc(tmp_path / "voc", 4)
    add_voc_image(source, "gone", [{"name": "cat", "box": (4, 4, 30, 30)}])
    (source / "JPEGImages" / "gone.jpg").unlink()
    report = import_dataset(source, "voc", tmp_path / "out", progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.IMAGE_MISSING and problem.path.endswith("gone.xml")
    assert report.total_images == 4


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_image_is_skipped(tmp_path, damage):
    source = make_voc(tmp_path / "voc", 4)
    add_voc_image(source, "broken", [{"name": "cat", "box": (4, 4, 30, 30)}])
    image = source / "JPEGImages" / "broken.jpg"
    data = image.read_bytes()
    image.write_bytes(
        {"garbage": b"not an image at all", "truncated": data[: len(data) * 2 // 3], "empty": b""}[damage]
    )
    out = tmp_path / "out"
    report = import_dataset(source, "voc", out, progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.IMAGE_UNREADABLE and problem.path == str(image)
    assert not list(out.rglob("broken.*"))


def test_unparseable_xml_is_skipped_with_line(tmp_path):
    source = make_voc(tmp_path / "voc", 4)
    (source / "Annotations" / "img01.xml").write_text("<annotation>\n  <object>\n    <name>cat</name>\n</annotation>\n")
    report = import_dataset(source, "voc", tmp_path / "out", progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.ANNOTATION_UNPARSEABLE
    assert problem.line == 4 and "mismatched tag" in problem.detail
    assert report.total_images == 3


def test_coco_split_lists_next_to_the_data(tmp_path):
    root = tmp_path / "coco"
    make_coco(root, [f"img{i:02d}" for i in range(5)])
    write_lists(root / "Splits", {"train": [0, 1, 2], "val": [3], "test": [4]}, suffix=".jpg")
    out = tmp_path / "out"
    report = import_dataset(root, "coco", out, progress=False)
    assert report.problems == [] and report.images == {"train": 3, "val": 1, "test": 1}
    assert report.split_source == "the dataset's own (Splits/train.txt,val.txt,test.txt)"
    assert read_labels(out, "test", "img04") == [
        [0, 0.171875, 0.333333, 0.28125, 0.583333],
        [1, 0.703125, 0.520833, 0.46875, 0.625],
    ]


def test_unparseable_json_is_reported_with_line(tmp_path):
    root = tmp_path / "coco"
    make_coco(root, ["a0", "a1", "a2"], "instances_train.json")
    make_coco(root, ["b0", "b1"], "instances_val.json")
    (root / "annotations" / "instances_test.json").write_text('{\n "images": [\n  {"id": 1,}\n ]\n}\n')
    report = import_dataset(root, "coco", tmp_path / "out", progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.ANNOTATION_UNPARSEABLE and problem.line == 3
    assert report.images == {"train": 3, "val": 2}


def test_invalid_entries_are_skipped(tmp_path):
    source = make_voc(tmp_path / "voc", 4)
    text = voc_xml("img00.jpg", [{"name": "cat", "box": (4, 4, 30, 30)}]).replace("<xmin>4</xmin>", "")
    (source / "Annotations" / "img00.xml").write_text(text)
    report = import_dataset(source, "voc", tmp_path / "out", progress=False)
    problem, emptied = report.problems  # img00's only box was invalid: the image is left out too
    assert problem.kind is ProblemKind.INVALID_ENTRY and "without <xmin>" in problem.detail
    assert problem.line == bndbox_line(text)
    assert emptied.kind is ProblemKind.NO_VALID_BOX and emptied.path.endswith("img00.jpg")
    assert report.total_images == 3


def test_unknown_coco_category_is_reported(tmp_path):
    annotations = make_coco(tmp_path / "coco", [f"im{i}" for i in range(4)])
    data = json.loads(annotations.read_text())
    data["annotations"][0]["category_id"] = 99
    write_json(annotations, data)
    report = import_dataset(annotations, "coco", tmp_path / "out", progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.UNKNOWN_CLASS and "category_id 99" in problem.detail


def test_crowd_regions_are_skipped(tmp_path):
    annotations = make_coco(tmp_path / "coco", [f"im{i}" for i in range(4)])
    data = json.loads(annotations.read_text())
    data["annotations"][1]["iscrowd"] = 1
    write_json(annotations, data)
    report = import_dataset(annotations, "coco", tmp_path / "out", progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.CROWD_BOX and "annotation id 2" in problem.detail
    assert report.total_boxes == 7


def test_label_file_without_image_is_reported(tmp_path):
    source = make_yolo(tmp_path / "yolo")
    orphan = source / "labels" / "train" / "orphan.txt"
    orphan.write_text("0 0.5 0.5 0.1 0.1\n")
    report = import_dataset(source, "yolo", progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.LABEL_WITHOUT_IMAGE and problem.path == str(orphan)


def test_image_without_label_file_is_a_background_image(tmp_path):
    source = make_yolo(tmp_path / "yolo")
    (source / "labels" / "train" / "t2.txt").unlink()
    out = tmp_path / "out"
    report = import_dataset(source, "yolo", out, progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.MISSING_LABEL and problem.path.endswith("t2.jpg")
    assert report.images_without_boxes == {"train": 1, "val": 0}
    assert (out / "labels" / "train" / "t2.txt").read_text() == ""


def test_duplicate_image_names_across_folders(tmp_path):
    root = tmp_path / "coco"
    annotations = make_coco(root, ["a", "b", "c", "d"])
    draw_image(root / "copies" / "b.jpg")  # b.jpg now exists in images/ and copies/
    data = json.loads(annotations.read_text())
    data["images"][1]["file_name"] = "elsewhere/b.jpg"
    write_json(annotations, data)
    report = import_dataset(annotations, "coco", tmp_path / "out", progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.DUPLICATE_IMAGE_NAME
    assert "images/b.jpg" in problem.detail and "copies/b.jpg" in problem.detail
    assert report.total_images == 3


def test_duplicate_image_stems_in_voc(tmp_path):
    source = make_voc(tmp_path / "voc", 4)
    draw_image(source / "JPEGImages" / "img01.png")
    report = import_dataset(source, "voc", tmp_path / "out", progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.DUPLICATE_IMAGE_NAME and "img01.jpg, img01.png" in problem.detail


@pytest.mark.parametrize("skip", [False, True])
def test_difficult_boxes_are_counted_and_optionally_skipped(tmp_path, skip):
    source = make_voc(tmp_path / "voc", 4)
    boxes = [{"name": "cat", "box": (4, 4, 30, 30)}, {"name": "dog", "box": (34, 4, 60, 30), "difficult": True}]
    add_voc_image(source, "hard", boxes)
    out = tmp_path / "out"
    report = import_dataset(source, "voc", out, skip_difficult=skip, progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.DIFFICULT_BOX and problem.detail.endswith("skipped" if skip else "kept")
    split = next(s for s in report.images if (out / "labels" / s / "hard.txt").exists())
    assert len(read_labels(out, split, "hard")) == (1 if skip else 2)


def test_duplicate_boxes_are_dropped(tmp_path):
    source = make_yolo(tmp_path / "yolo", {"t0": ["0 0.5 0.5 0.5 0.5", "0 0.5 0.5 0.5 0.5"]})
    report = import_dataset(source, "yolo", progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.DUPLICATE_BOX and problem.line == 2
    assert report.total_boxes == 6


@pytest.mark.parametrize(
    ("line", "kind", "detail"),
    [
        ("0 0.5 0.5 0.5", ProblemKind.WRONG_FIELD_COUNT, "4 fields"),
        ("0 0.5 0.5 0.5 0.5 0.9", ProblemKind.WRONG_FIELD_COUNT, "6 fields"),
        ("0 0.5 abc 0.5 0.5", ProblemKind.NON_NUMERIC_VALUE, "'abc'"),
        ("0 0.5 nan 0.5 0.5", ProblemKind.NON_NUMERIC_VALUE, "'nan'"),
        ("1.5 0.5 0.5 0.5 0.5", ProblemKind.NON_NUMERIC_VALUE, "not an integer"),
        ("2 0.5 0.5 0.5 0.5", ProblemKind.CLASS_OUT_OF_RANGE, "outside 0..1"),
        ("-1 0.5 0.5 0.5 0.5", ProblemKind.CLASS_OUT_OF_RANGE, "outside 0..1"),
        ("0 0.5 0.5 1.4 0.5", ProblemKind.COORDINATE_OUT_OF_RANGE, "clipped to the image"),
        ("0 1.5 0.5 0.2 0.2", ProblemKind.COORDINATE_OUT_OF_RANGE, "nothing left inside the image"),
        ("0 0.5 0.5 0 0.5", ProblemKind.DEGENERATE_BOX, "no width"),
    ],
)
def test_bad_yolo_label_lines_are_reported_with_line(tmp_path, line, kind, detail):
    source = make_yolo(tmp_path / "yolo", {"t3": ["1 0.25 0.25 0.2 0.2", line]})
    report = import_dataset(source, "yolo", progress=False)
    [problem] = report.problems
    assert problem.kind is kind and detail in problem.detail
    assert problem.path == str(source / "labels" / "train" / "t3.txt") and problem.line == 2


def test_yolo_polygon_lines_become_boxes(tmp_path):
    source = make_yolo(tmp_path / "yolo", {"t0": ["1 0.1 0.2 0.5 0.2 0.3 0.6"]})
    out = tmp_path / "out"
    report = import_dataset(source, "yolo", out, progress=False)
    assert report.problems == []
    assert read_labels(out, "train", "t0") == [[1, 0.3, 0.4, 0.4, 0.4]]


def test_voc_image_and_list_entry_without_annotation(tmp_path):
    source = make_voc(tmp_path / "voc", 6, {"train": [0, 1, 2], "val": [3, 4]})
    draw_image(source / "JPEGImages" / "lonely.jpg")
    with (source / "ImageSets" / "Main" / "val.txt").open("a") as handle:
        handle.write("ghost\n")
    report = import_dataset(source, "voc", tmp_path / "out", progress=False)
    missing = problems_of(report, ProblemKind.MISSING_ANNOTATION)
    assert [(Path(p.path).name, p.line) for p in missing] == [("val.txt", 3), ("lonely.jpg", None)]
    [unlisted] = problems_of(report, ProblemKind.NOT_IN_SPLIT)
    assert unlisted.path.endswith("img05.jpg")
    assert report.images == {"train": 3, "val": 2}


def test_image_in_two_split_lists_is_an_error_naming_both(tmp_path, capsys):
    source = make_voc(tmp_path / "voc", 4, {"train": [0, 1, 2], "val": [2, 3]})
    lists = source / "ImageSets" / "Main"
    with pytest.raises(
        DatasetError,
        match=rf"'img02' is in two split lists, {lists / 'train.txt'}:3 and "
        rf"{lists / 'val.txt'}:1",
    ):
        import_dataset(source, "voc", tmp_path / "out", progress=False)
    assert run_cli("import", str(source), "--format", "voc", "--out", str(tmp_path / "out")) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "train.txt:3" in line and "val.txt:1" in line and "--split" in line
    report = import_dataset(source, "voc", tmp_path / "out", split="0.5,0.5,0", progress=False)  # lists ignored
    assert report.images == {"train": 2, "val": 2}


# -------------------------------------------------------------------------------------- unusable sources and CLI


def test_unusable_sources_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        import_dataset(tmp_path / "nowhere", "voc", tmp_path / "out")
    with pytest.raises(DatasetError, match="unknown dataset format 'kitti'"):
        import_dataset(tmp_path, "kitti", tmp_path / "out")
    (tmp_path / "empty" / "Annotations").mkdir(parents=True)
    (tmp_path / "empty" / "JPEGImages").mkdir()
    with pytest.raises(DatasetError, match=r"no annotation files \(\*.xml\)"):
        import_dataset(tmp_path / "empty", "voc", tmp_path / "out")
    with pytest.raises(DatasetError, match="no Annotations/ folder"):
        import_dataset(tmp_path / "empty" / "JPEGImages", "voc", tmp_path / "out")
    with pytest.raises(DatasetError, match="no COCO JSON files"):
        import_dataset(tmp_path / "empty", "coco", tmp_path / "out")
    with pytest.raises(DatasetError, match=r"no data\.yaml"):
        import_dataset(tmp_path / "empty", "yolo")


def test_source_with_only_broken_annotations_names_the_problems(tmp_path):
    source = make_voc(tmp_path / "voc", 2)
    for xml in (source / "Annotations").iterdir():
        xml.write_text("<annotation>\n<object>\n")
    with pytest.raises(DatasetError, match=r"nothing to import\n  annotation_unparseable at .*img00\.xml:3: XML error"):
        import_dataset(source, "voc", tmp_path / "out", progress=False)
    broken = write_json(tmp_path / "coco" / "instances.json", {"images": []})
    with pytest.raises(DatasetError, match=r"annotation_unparseable at .*instances\.json: not a COCO instances file"):
        import_dataset(broken, "coco", tmp_path / "out", progress=False)


def test_dataset_whose_images_are_all_broken_is_unusable(tmp_path):
    source = make_voc(tmp_path / "voc", 3)
    for image in (source / "JPEGImages").iterdir():
        image.write_bytes(b"broken")
    out = tmp_path / "out"
    with pytest.raises(UnusableDatasetError, match="no usable images") as caught:
        import_dataset(source, "voc", out, progress=False)
    assert len(caught.value.report.problems) == 3
    assert json.loads((out / "import_report.json").read_text())["problem_counts"] == {"image_unreadable": 3}
    assert not (out / "data.yaml").exists()


def test_existing_output_needs_overwrite(tmp_path):
    source = make_voc(tmp_path / "voc", 4)
    out = tmp_path / "out"
    import_dataset(source, "voc", out, progress=False)
    stale = out / "labels" / "train" / "stale.txt"
    stale.write_text("")
    with pytest.raises(DatasetError, match="--overwrite"):
        import_dataset(source, "voc", out, progress=False)
    import_dataset(source, "voc", out, overwrite=True, progress=False)
    assert not stale.exists()
    with pytest.raises(DatasetError, match="is the source folder"):
        import_dataset(source, "voc", source, progress=False)


def test_cli_prints_summary_and_honours_strict(tmp_path, capsys):
    source = make_voc(tmp_path / "voc", 6)
    add_voc_image(source, "flat", [{"name": "cat", "box": (4, 4, 30, 30)}, {"name": "dog", "box": (5, 9, 5, 20)}])
    out = tmp_path / "out"
    assert run_cli("import", str(source), "--format", "voc", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "degenerate_box: 1" in printed
    assert f"{source / 'Annotations' / 'flat.xml'}:" in printed
    assert "images" in printed and "cat" in printed
    assert run_cli("import", str(source), "--format", "voc", "--out", str(out), "--overwrite", "--strict") == 1
    assert "--strict: 1 problems" in capsys.readouterr().err
    assert run_cli("import", str(tmp_path / "nowhere"), "--format", "voc", "--out", str(out)) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        run_cli("import", str(source), "--format", "pascal", "--out", str(out))
    assert exited.value.code == 2 and "invalid choice: 'pascal'" in capsys.readouterr().err


def test_python_m_detector_data_import(tmp_path):
    def detector(*argv: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "detector", "data", "import", *argv]
        env = {**os.environ, "YOLO_AUTOINSTALL": "False"}
        return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)

    result = detector("--help")
    assert result.returncode == 0, result.stderr
    options = (
        "--format",
        "--out",
        "--split",
        "--seed",
        "--classes",
        "--link",
        "--skip-difficult",
        "--strict",
        "--annotations",
        "--images",
        "--split-lists",
        "--keep-empty",
    )
    for option in options:
        assert option in result.stdout
    source = make_voc(tmp_path / "voc", 4)
    result = detector(str(source), "--format", "voc", "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "problems: none" in result.stdout and (tmp_path / "out" / "data.yaml").is_file()


def test_every_option_help_states_its_default():
    parser = argparse.ArgumentParser()
    data_cli.configure(parser)
    [subparsers] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    command = subparsers.choices["import"]
    for action in command._actions:
        if action.option_strings and action.dest != "help":
            assert "default" in action.help or "required" in action.help, action.dest


# ---------------------------------------------------------------------------------- declared size vs real size


def add_resized(root: Path, stem: str, boxes: list[tuple], real: tuple[int, int], declared: tuple[int, int]) -> str:
    """A VOC sample whose XML declares ``declared`` and gives ``boxes`` in that frame, while the image is ``real``."""
    scale_x, scale_y = real[0] / declared[0], real[1] / declared[1]
    drawn = [(x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y) for x0, y0, x1, y1 in boxes]
    draw_image(root / "JPEGImages" / f"{stem}.jpg", drawn, real)
    text = voc_xml(f"{stem}.jpg", [{"name": "cat", "box": box} for box in boxes], declared)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "Annotations" / f"{stem}.xml").write_text(text)
    return text


def labels_of(out: Path, stem: str) -> list[list[float]]:
    """The label lines written for ``stem``, whichever split it went to."""
    [label] = list((out / "labels").glob(f"*/{stem}.txt"))
    return [[float(v) for v in line.split()] for line in label.read_text().splitlines()]


SIZE_LINE = 4  # line of <size> in a voc_xml text


def test_boxes_in_the_declared_frame_are_scaled_to_the_real_size(tmp_path, capsys):
    """The NEU-DET mirror: XML declares 200x200, JPEGs are 416x416, boxes run up to 200."""
    source = tmp_path / "voc"
    boxes = {"a": (2, 2, 193, 194), "b": (100, 50, 200, 150), "c": (0, 0, 50, 200), "d": (10, 20, 30, 40)}
    for stem, box in boxes.items():
        add_resized(source, stem, [box], (416, 416), (200, 200))
    add_voc_image(source, "same", [{"name": "cat", "box": (4, 4, 30, 30)}])
    out = tmp_path / "out"
    report = import_dataset(source, "voc", out, progress=False)
    assert report.problem_counts() == {"size_scaled": 4}
    first = report.problems[0]
    assert first.path == str(source / "Annotations" / "a.xml") and first.line == SIZE_LINE
    assert "declares 200x200 but a.jpg is 416x416" in first.detail and "scaled by 2.08 x 2.08" in first.detail
    for stem, (x0, y0, x1, y1) in boxes.items():
        expected = [0, (x0 + x1) / 400, (y0 + y1) / 400, (x1 - x0) / 200, (y1 - y0) / 200]
        assert labels_of(out, stem) == [pytest.approx(expected, abs=1e-6)], stem
    assert_valid_yolo_output(out, report)

    assert run_cli("import", str(source), "--format", "voc", "--out", str(out), "--overwrite") == 0
    assert "size_scaled: 4 - declared size differs" in capsys.readouterr().out
    assert run_cli("import", str(source), "--format", "voc", "--out", str(out), "--overwrite", "--strict") == 1
    assert "--strict: 4 problems" in capsys.readouterr().err


def test_boxes_past_the_declared_frame_but_inside_the_image_keep_the_real_frame(tmp_path):
    source = make_voc(tmp_path / "voc", 4)
    add_voc_image(source, "small", [{"name": "dog", "box": (34, 10, 60, 44)}], declared=(32, 24))
    out = tmp_path / "out"
    report = import_dataset(source, "voc", out, progress=False)
    [problem] = report.problems
    assert problem.kind is ProblemKind.SIZE_REAL_FRAME and problem.line == SIZE_LINE
    assert "reach (60, 44), past the declared frame but inside the image: kept" in problem.detail
    assert labels_of(out, "small") == [[1, 0.734375, 0.5625, 0.40625, 0.708333]]


@pytest.mark.parametrize(
    ("declared", "box", "detail"),
    [
        ((32, 24), (10, 10, 70, 40), "reach (70, 40), outside both the declared frame and the image: skipped"),
        ((48, 64), (4, 4, 30, 30), "another aspect ratio (rotated, e.g. by its EXIF orientation)"),
        ((100, 48), (4, 4, 30, 30), "another aspect ratio; the boxes cannot be placed: skipped"),
    ],
)
def test_boxes_in_neither_frame_or_another_aspect_ratio_skip_the_image(tmp_path, capsys, declared, box, detail):
    source = make_voc(tmp_path / "voc", 4)
    add_voc_image(source, "odd", [{"name": "cat", "box": box}], declared=declared)
    out = tmp_path / "out"
    assert run_cli("import", str(source), "--format", "voc", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert "size_mismatch: 1" in printed and f"{source / 'Annotations' / 'odd.xml'}:{SIZE_LINE}: " in printed
    saved = json.loads((out / REPORT).read_text())
    [problem] = saved["problems"]
    assert problem["kind"] == "size_mismatch" and detail in problem["detail"] and problem["line"] == SIZE_LINE
    assert not list(out.rglob("odd.*")) and saved["images"] == {"train": 3, "val": 1}
    assert run_cli("import", str(source), "--format", "voc", "--out", str(out), "--overwrite", "--strict") == 1


def test_coco_declared_size_is_checked_against_the_file(tmp_path):
    annotations = make_coco(tmp_path / "coco", [f"im{i}" for i in range(5)])
    data = json.loads(annotations.read_text())
    data["images"][0].update(width=128, height=96)  # boxes reach x 60: in the declared frame, scaled by 0.5
    data["images"][1].update(width=32, height=24)
    data["annotations"][3]["bbox"] = [30, 10, 40, 30]  # im1's dog reaches x 70: in neither frame
    data["images"][2].update(width=0, height=0)  # no size at all: the real one is used
    write_json(annotations, data)
    out = tmp_path / "out"
    report = import_dataset(annotations, "coco", out, split="0.5,0.5,0", progress=False)
    assert report.problem_counts() == {"size_scaled": 1, "size_mismatch": 1, "size_invalid": 1}
    [scaled] = problems_of(report, ProblemKind.SIZE_SCALED)
    assert scaled.path == str(annotations) and "image id 1 (im0.jpg) declares 128x96" in scaled.detail
    [mismatch] = problems_of(report, ProblemKind.SIZE_MISMATCH)
    assert "image id 2 (im1.jpg) declares 32x24" in mismatch.detail and "reach (70, 40)" in mismatch.detail
    [invalid] = problems_of(report, ProblemKind.SIZE_INVALID)
    assert "image id 3 (im2.jpg): width 0 / height 0 is not a size" in invalid.detail
    assert labels_of(out, "im0") == [
        pytest.approx([0, 11 / 128, 16 / 96, 18 / 128, 28 / 96], abs=1e-6),
        pytest.approx([1, 45 / 128, 25 / 96, 30 / 128, 30 / 96], abs=1e-6),
    ]
    assert labels_of(out, "im2") == labels_of(out, "im3")  # real size used
    assert not list(out.rglob("im1.*")) and report.total_images == 4


# ------------------------------------------------------------------------------------------- folders and lists


@pytest.mark.parametrize(
    ("images", "annotations"), [("images", "annotations"), ("IMAGES", "ANNOTATIONS"), ("JPEGImages", "Annotations")]
)
def test_voc_folders_are_found_in_any_case_with_their_split_lists(tmp_path, monkeypatch, images, annotations):
    source = make_voc(tmp_path / "voc", 6, {"train": [0, 1, 2, 3], "val": [4, 5]}, images, annotations, "splits")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    report = import_dataset("voc", "voc", "out", progress=False)
    assert report.problems == []
    assert report.images == {"train": 4, "val": 2}
    assert report.split_source == "the dataset's own (splits/train.txt,val.txt)"
    assert read_labels(out, "train", "img00") == [
        [0, 0.265625, 0.354167, 0.40625, 0.541667],
        [1, 0.734375, 0.5625, 0.40625, 0.708333],
    ]
    assert (out / "images" / "val" / "img05.jpg").read_bytes() == (source / images / "img05.jpg").read_bytes()


def test_vocdevkit_folder_and_flat_folder(tmp_path):
    devkit = tmp_path / "VOCdevkit"
    make_voc(devkit / "VOC2012", 4, {"train": [0, 1, 2], "val": [3]})
    report = import_dataset(devkit, "voc", tmp_path / "out", progress=False)
    assert report.images == {"train": 3, "val": 1} and "ImageSets/Main/train.txt" in report.split_source
    make_voc(devkit / "VOC2007", 2)
    with pytest.raises(DatasetError, match=r"several VOC datasets in .*VOCdevkit \(VOC2007/, VOC2012/\)"):
        import_dataset(devkit, "voc", tmp_path / "out2", progress=False)

    flat = make_voc(tmp_path / "flat", 5, images="", annotations="")  # XML beside the images
    write_lists(flat, {"train": [0, 1, 2], "val": [3, 4]}, suffix=".jpg")  # names with their suffix
    out = tmp_path / "flat-out"
    report = import_dataset(flat, "voc", out, progress=False)
    assert report.problems == [] and report.images == {"train": 3, "val": 2}
    assert report.split_source == "the dataset's own (train.txt,val.txt)"
    assert read_labels(out, "val", "img04") == [
        [0, 0.328125, 0.354167, 0.40625, 0.541667],
        [1, 0.734375, 0.5625, 0.40625, 0.708333],
    ]


def test_folders_and_lists_named_by_options(tmp_path, capsys):
    source = make_voc(tmp_path / "voc", 4, images="pics", annotations="xml")
    out = tmp_path / "out"
    assert run_cli("import", str(source), "--format", "voc", "--out", str(out)) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert f"no Annotations/ folder in {source}: looked for Annotations/ or annotation/ (any case)" in line
    assert "it holds pics/, xml/" in line and "--annotations DIR and --images DIR" in line

    lists = write_lists(tmp_path / "elsewhere", {"train": [0, 1, 2], "val": [3]})
    options = ["--annotations", str(source / "xml"), "--images", str(source / "pics"), "--split-lists", str(lists)]
    assert run_cli("import", str(source), "--format", "voc", "--out", str(out), *options) == 0
    assert f"splits: the dataset's own ({lists}/train.txt,val.txt)" in capsys.readouterr().out
    assert len(list((out / "labels" / "train").iterdir())) == 3
    assert read_labels(out, "val", "img03") == [[0, 0.3125, 0.354167, 0.40625, 0.541667]]

    folders = {"annotations": source / "xml", "images": source / "pics", "overwrite": True, "progress": False}
    with pytest.raises(DatasetError, match="--split-lists .* no train.txt, val.txt or test.txt in it"):
        import_dataset(source, "voc", out, split_lists=tmp_path, **folders)
    with pytest.raises(DatasetError, match="--split splits by ratio, --split-lists by the lists: pass one of them"):
        import_dataset(source, "voc", out, split_lists=lists, split="0.5,0.5,0", **folders)
    with pytest.raises(DatasetError, match="--images .*missing is not a folder"):
        import_dataset(source, "voc", out, **{**folders, "images": source / "missing"})
    with pytest.raises(DatasetError, match="--split-lists applies to VOC and COCO"):
        import_dataset(make_yolo(tmp_path / "yolo"), "yolo", split_lists=lists)


def test_lower_case_folder_without_images_names_what_it_holds(tmp_path):
    source = tmp_path / "voc"
    (source / "annotations").mkdir(parents=True)
    (source / "annotations" / "a.xml").write_text(voc_xml("a.jpg", []))
    (source / "notes.txt").write_text("")
    with pytest.raises(
        DatasetError,
        match=r"no image folder \(JPEGImages/ or images/, any case\) in .*, which holds "
        r"annotations/, 1 \.txt file",
    ):
        import_dataset(source, "voc", tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------------------- empty after cleaning


def test_image_whose_every_box_was_invalid_is_left_out_unless_keep_empty(tmp_path, capsys):
    source = make_voc(tmp_path / "voc", 4)
    add_voc_image(source, "flat", [{"name": "cat", "box": (5, 9, 5, 20)}, {"name": "dog", "box": (70, 60, 90, 80)}])
    add_voc_image(source, "background", [])  # no box at all: a background image, kept
    out = tmp_path / "out"
    report = import_dataset(source, "voc", out, progress=False)
    assert report.problem_counts() == {"degenerate_box": 2, "no_valid_box": 1}
    [emptied] = problems_of(report, ProblemKind.NO_VALID_BOX)
    assert emptied.path == str(source / "JPEGImages" / "flat.jpg")
    assert (
        emptied.detail == f"none of its 2 boxes in {source / 'Annotations' / 'flat.xml'} could be used: left out "
        "(--keep-empty keeps it)"
    )
    assert not list(out.rglob("flat.*")) and labels_of(out, "background") == []
    assert sum(report.images_without_boxes.values()) == 1

    assert run_cli("import", str(source), "--format", "voc", "--out", str(out), "--overwrite", "--keep-empty") == 0
    assert "no_valid_box: 1 - image whose every box was dropped" in capsys.readouterr().out
    assert labels_of(out, "flat") == [] and labels_of(out, "img00")


def test_empty_after_cleaning_in_coco_and_yolo(tmp_path):
    annotations = make_coco(tmp_path / "coco", [f"im{i}" for i in range(4)])
    data = json.loads(annotations.read_text())
    data["annotations"][2]["bbox"] = [1, "x", 2, 3]
    data["annotations"][3]["category_id"] = 99
    write_json(annotations, data)
    report = import_dataset(annotations, "coco", tmp_path / "coco-out", progress=False)
    [emptied] = problems_of(report, ProblemKind.NO_VALID_BOX)
    assert emptied.path.endswith("im1.jpg") and "none of its 2 boxes" in emptied.detail
    assert report.total_images == 3

    source = make_yolo(tmp_path / "yolo", {"t2": ["0 0.5 0.5 0 0.5", "7 0.5 0.5 0.2 0.2"], "t3": []})
    report = import_dataset(source, "yolo", tmp_path / "yolo-out", keep_empty=True, progress=False)
    [emptied] = problems_of(report, ProblemKind.NO_VALID_BOX)
    assert emptied.path.endswith("t2.jpg") and emptied.detail.endswith("kept without boxes (--keep-empty)")
    assert report.images_without_boxes == {"train": 2, "val": 0}  # t2 kept empty, t3 a background image


# ------------------------------------------------------------------------------------------- data.yaml resolver


def make_yolo_with_relative_path(tmp_path: Path) -> Path:
    """A YOLO dataset in tmp/ds whose yaml lies in tmp/ds/config and says ``path: ..``."""
    make_yolo(tmp_path / "ds")
    config = tmp_path / "ds" / "config" / "data.yaml"
    config.parent.mkdir()
    spec = yaml.safe_load((tmp_path / "ds" / "data.yaml").read_text())
    config.write_text(yaml.safe_dump({"path": "..", **spec}))
    (tmp_path / "ds" / "data.yaml").unlink()
    return config


def test_relative_path_key_resolves_against_the_yaml_folder_everywhere(tmp_path, monkeypatch):
    from ultralytics.data.utils import check_det_dataset

    from detector.export import calibration_images
    from detector.train import check_data

    config = make_yolo_with_relative_path(tmp_path)
    elsewhere = tmp_path / "a" / "b"  # '..' of the working directory holds no dataset
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    dataset = tmp_path / "ds"

    report = import_dataset(config, "yolo", progress=False)  # validate in place
    assert report.problems == [] and report.images == {"train": 4, "val": 2}

    given = check_data(config)  # what train, val and export hand to Ultralytics
    assert given.parent == tmp_path / "cache" / "attention-yolo" / "data"
    assert yaml.safe_load(given.read_text())["path"] == str(dataset)
    resolved = check_det_dataset(str(given))
    assert Path(resolved["train"]) == (dataset / "images" / "train").resolve()
    assert Path(resolved["val"]) == (dataset / "images" / "val").resolve()
    assert check_data(dataset / "config" / ".." / "config" / "data.yaml", splits=("val",)).is_file()

    assert calibration_images(config, 2) == [
        dataset / "images" / "train" / "t0.jpg",
        dataset / "images" / "train" / "t2.jpg",
    ]
    config.write_text(config.read_text().replace("path: ..", "path: ../nowhere"))
    with pytest.raises(DatasetError, match=r"'path: \.\./nowhere' is not a folder \(a relative path is relative to"):
        check_data(config)


def test_check_data_checks_only_the_splits_asked_for(tmp_path, monkeypatch):
    from detector.train import check_data

    source = make_yolo(tmp_path / "yolo")
    data = source / "data.yaml"
    data.write_text(data.read_text() + "test: images/test\n")
    monkeypatch.chdir(tmp_path)
    assert check_data(data, splits=("val",)) == data  # no path: key, the yaml itself
    with pytest.raises(FileNotFoundError, match=r"test path .*images/test does not exist"):
        check_data(data)
    data.write_text(data.read_text().replace("test: images/test\n", ""))
    with pytest.raises(DatasetError, match="has no 'test' entry"):
        check_data(data, splits=("test",))


# -------------------------------------------------------------------------------------------------- real data


@pytest.mark.shared
def test_bccd_voc_import(tmp_path):
    source = Path(__file__).parents[2] / "shared/datasets/bccd-voc"
    if not source.is_dir():
        pytest.skip(f"{source} not present")
    report = import_dataset(source, "voc", tmp_path / "bccd", progress=False)
    assert report.images == {"train": 205, "val": 87, "test": 72}
    assert report.classes == ["Platelets", "RBC", "WBC"]
    degenerate = problems_of(report, ProblemKind.DEGENERATE_BOX)
    assert degenerate and all(p.line is not None for p in degenerate)
    assert report.problem_counts() == {"degenerate_box": len(degenerate)}
    assert_valid_yolo_output(tmp_path / "bccd", report)


@pytest.mark.shared
def test_neu_det_import_needs_no_option(tmp_path):
    """Upper-case IMAGES/ + ANNOTATIONS/ and splits/{train,val}.txt, found without any option beyond the format."""
    source = Path(__file__).parents[2] / "shared/datasets/neu-det"
    if not source.is_dir():
        pytest.skip(f"{source} not present")
    report = import_dataset(source, "voc", tmp_path / "neu", link=True, progress=False)
    assert report.split_source == "the dataset's own (splits/train.txt,val.txt)"
    assert report.images == {"train": 1620, "val": 180}
    assert report.classes == ["crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches"]
    assert report.total_boxes == 4186 and sum(report.images_without_boxes.values()) == 0
    assert report.problem_counts() == {"duplicate_box": 3, "difficult_box": 81}  # 4,189 boxes less 3 repeated
    assert_valid_yolo_output(tmp_path / "neu", report)


def test_strict_ignores_difficult_flags(tmp_path):
    source = make_voc(tmp_path / "voc", 4)
    add_voc_image(source, "hard", [{"name": "dog", "box": (34, 4, 60, 30), "difficult": True}])
    assert run_cli("import", str(source), "--format", "voc", "--out", str(tmp_path / "out"), "--strict") == 0
