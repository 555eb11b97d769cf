"""The statistics of a compare: paired by seed, with confidence intervals, power and Holm's correction.

Runs of the same seed share data order and augmentation, so the quantity to test is the per-seed difference
variant − baseline (a paired t-test); Welch's test over the two groups is kept as a secondary figure. The minimum
detectable effect (MDE) says what a "no significant difference" is worth: the smallest true Δ that this many seeds
would have detected with 80% power at α = 0.05, given the observed spread of the paired differences.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

ALPHA = 0.05
POWER = 0.8


@dataclass
class Paired:
    """Variant − baseline over the seeds both ran: mean Δ, its 95% CI, paired and Welch p-values, MDE."""

    delta: float
    n: int
    sd: float | None = None  # of the paired differences
    ci95: tuple[float, float] | None = None
    p: float | None = None  # paired t-test, two-sided
    welch_p: float | None = None  # Welch's t-test over the two groups, two-sided
    mde: float | None = None  # smallest |Δ| detected with POWER at ALPHA by n seeds, given sd
    p_holm: float | None = None  # p after Holm's correction across the comparisons of one table
    significant: bool = False  # p_holm < ALPHA

    def to_dict(self) -> dict:
        return asdict(self)


def paired(variant: list[float], baseline: list[float]) -> Paired:
    """Compare two equally long per-seed lists (same seeds, same order)."""
    from scipy import stats
    from statsmodels.stats.power import TTestPower

    if len(variant) != len(baseline):
        raise ValueError(f"paired comparison needs the same seeds: {len(variant)} vs {len(baseline)} values")
    diffs = [v - b for v, b in zip(variant, baseline, strict=True)]
    result = Paired(delta=statistics.fmean(diffs), n=len(diffs))
    if result.n < 2:
        return result
    result.sd = statistics.stdev(diffs)
    if statistics.pstdev(variant) or statistics.pstdev(baseline):
        result.welch_p = float(stats.ttest_ind(variant, baseline, equal_var=False).pvalue)
    if result.sd > 0:
        test = stats.ttest_rel(variant, baseline)
        ci = test.confidence_interval(1 - ALPHA)
        result.p, result.ci95 = float(test.pvalue), (float(ci.low), float(ci.high))
        effect = TTestPower().solve_power(nobs=result.n, alpha=ALPHA, power=POWER, alternative="two-sided")
        result.mde = float(effect) * result.sd
    return result


def holm(comparisons: list[Paired]) -> None:
    """Holm's step-down correction across ``comparisons`` (one table); sets ``p_holm`` and ``significant``."""
    from statsmodels.stats.multitest import multipletests

    tested = [c for c in comparisons if c.p is not None]
    if not tested:
        return
    reject, adjusted, _, _ = multipletests([c.p for c in tested], alpha=ALPHA, method="holm")
    for c, r, p in zip(tested, reject, adjusted, strict=True):
        c.p_holm, c.significant = float(p), bool(r)


def points(value: float) -> str:
    """A difference of mAP in points (x100), signed, never ``-0.0``."""
    value = round(100 * value, 1)
    return f"{value + 0.0:+.1f}"


def verdict(model: str, metric: str, c: Paired) -> str:
    """One sentence a user can act on, e.g. "yolo11n-eca: Δ val mAP50-95 −0.3 points (95% CI −1.2 to +0.6); a change
    of at least ±0.9 points would have been seen with 80% power; none was."""
    head = f"**{model}**: Δ {metric} {points(c.delta)} points"
    if c.ci95 is None:
        why = "fewer than 2 seeds" if c.n < 2 else "no spread between the seeds' differences"
        return f"{head}; no test possible ({why})."
    head += f" (95% CI {points(c.ci95[0])} to {points(c.ci95[1])}, paired p={c.p:.3f}, Holm p={c.p_holm:.3f})"
    seen = f"with {c.n} seeds a true change of at least ±{100 * c.mde:.1f} points would have been seen with " \
           f"{POWER:.0%} power"
    if c.significant:
        return f"{head}: a significant {'gain' if c.delta > 0 else 'loss'} after Holm's correction."
    return f"{head}; {seen}; none was."
