"""``python -m detector data import SRC --format voc|coco|yolo --out DIR``: the command line of detector.data."""

from __future__ import annotations

import argparse
import sys

_FORMATS = ("voc", "coco", "yolo")  # detector.data.importer.FORMATS, without importing it to build the parser


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``import`` sub-command to ``parser`` (the ``data`` command's parser)."""
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    description = (
        "Import a Pascal VOC, COCO JSON or YOLO dataset into the YOLO layout (OUT/images/{train,val,test}, "
        "OUT/labels/{train,val,test}, OUT/data.yaml) and report every problem found: printed, and in full in "
        "OUT/import_report.json. A YOLO dataset without --out is only validated. Exit codes: 0 usable output "
        "(problems are warnings), 1 problems found under --strict, 2 unusable source or bad arguments."
    )
    command = commands.add_parser(
        "import", help="import a VOC / COCO / YOLO dataset into the YOLO layout", description=description
    )
    command.add_argument(
        "source",
        metavar="SRC",
        help="VOC: folder with Annotations/ and JPEGImages/ or annotations/ and images/ (any case; also in its one "
        "subfolder, e.g. VOCdevkit/VOC2012), or XML files beside the images; COCO: instances JSON file, or folder "
        "with annotations/*.json or *.json; YOLO: data.yaml or its folder",
    )
    command.add_argument("--format", required=True, choices=_FORMATS, help="format of SRC (required)")
    command.add_argument(
        "--out", metavar="DIR", default=None, help="output folder (default: none; required for voc and coco)"
    )
    command.add_argument(
        "--annotations",
        metavar="DIR",
        default=None,
        help="VOC annotation folder (default: found in SRC by its usual names, any case)",
    )
    command.add_argument(
        "--images",
        metavar="DIR",
        default=None,
        help="image folder (VOC default: JPEGImages/ or images/ beside the annotations, any case; COCO default: "
        "searched under the dataset folder)",
    )
    command.add_argument(
        "--split-lists",
        metavar="DIR",
        default=None,
        help="folder with train.txt, val.txt, test.txt naming the images of each split by file stem (default: "
        "found next to the data: ImageSets/Main/, ImageSets/, splits/ or SRC itself)",
    )
    command.add_argument(
        "--split",
        metavar="TRAIN,VAL,TEST",
        default=None,
        help="split by these ratios, ignoring the dataset's own split lists (default: the dataset's lists "
        "where it has them, else 0.8,0.1,0.1)",
    )
    command.add_argument("--seed", type=int, default=0, help="seed of the ratio split (default: 0)")
    command.add_argument(
        "--classes",
        metavar="A,B,C",
        default=None,
        help="class list in this order; boxes of other classes are skipped and reported (default: the sorted "
        "VOC names, the COCO categories by id, the YOLO names)",
    )
    command.add_argument(
        "--skip-difficult", action="store_true", help="drop VOC boxes marked difficult (default: keep them)"
    )
    command.add_argument(
        "--keep-empty",
        action="store_true",
        help="keep an image whose every box was dropped as an image without boxes (default: leave it out)",
    )
    command.add_argument("--link", action="store_true", help="symlink images instead of copying them (default: copy)")
    command.add_argument(
        "--overwrite",
        action="store_true",
        help="replace images/, labels/ and data.yaml of an earlier import in DIR (default: refuse)",
    )
    command.add_argument(
        "--report",
        metavar="FILE",
        default=None,
        help="write the JSON report here (default: DIR/import_report.json; none when validating without --out)",
    )
    command.add_argument(
        "--strict",
        action="store_true",
        help="exit with code 1 if any problem was found, a declared image size that differs from the real one "
        "included; VOC difficult flags do not count (default: warn only)",
    )
    command.add_argument(
        "--examples", type=_count, default=5, metavar="N", help="examples printed per problem kind (default: 5)"
    )


def _count(text: str) -> int:
    """argparse type: a non-negative integer."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, not {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run the import; print the summary; return the exit code (0 usable, 1 problems under --strict, 2 unusable)."""
    from .importer import UnusableDatasetError, import_dataset
    from .report import DatasetError, ProblemKind

    try:
        report = import_dataset(
            args.source,
            args.format,
            args.out,
            annotations=args.annotations,
            images=args.images,
            split_lists=args.split_lists,
            split=args.split,
            seed=args.seed,
            classes=args.classes,
            skip_difficult=args.skip_difficult,
            keep_empty=args.keep_empty,
            link=args.link,
            overwrite=args.overwrite,
            report_path=args.report,
        )
    except UnusableDatasetError as error:
        print(error.report.summary(args.examples))
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (DatasetError, OSError) as error:  # OSError: e.g. the output folder cannot be written
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report.summary(args.examples))
    blocking = [p for p in report.problems if p.kind is not ProblemKind.DIFFICULT_BOX]  # metadata, not a defect
    if args.strict and blocking:
        print(f"error: --strict: {len(blocking)} problems found", file=sys.stderr)
        return 1
    return 0
