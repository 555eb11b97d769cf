"""Train/val/test ratios and the seeded, order-independent ratio split."""

from __future__ import annotations

import random
from collections.abc import Iterable

from .report import DatasetError
from .source import SPLITS

DEFAULT_RATIOS = (0.8, 0.1, 0.1)


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
