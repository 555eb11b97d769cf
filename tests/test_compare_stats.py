"""The compare's statistics against hand-computed cases, and the report built from them (no training)."""

from __future__ import annotations

import json
import math

import pytest

from detector.compare_report import add_statistics, markdown, rerender
from detector.compare_stats import Paired, holm, paired, points, verdict

# Five seeds where the variant beats the baseline on every seed: diffs 0.02, 0.03, 0.01, 0.03, 0.02.
VARIANT = [0.52, 0.55, 0.50, 0.53, 0.54]
BASELINE = [0.50, 0.52, 0.49, 0.50, 0.52]


def test_paired_t_by_hand():
    c = paired(VARIANT, BASELINE)
    sd = math.sqrt((0.002**2 + 0.008**2 + 0.012**2 + 0.008**2 + 0.002**2) / 4)
    se = sd / math.sqrt(5)
    t = 0.022 / se
    x = t / math.sqrt(t * t + 4)  # Student's t with 4 degrees of freedom: P(|T| > t) = 1 - 1.5 (x - x^3 / 3)
    assert c.n == 5 and c.delta == pytest.approx(0.022)
    assert c.sd == pytest.approx(sd)
    assert c.p == pytest.approx(1 - 1.5 * (x - x**3 / 3), rel=1e-6)
    assert c.p < 0.005  # significant: the test can fail
    t_975_df4 = 2.776445  # table value
    assert c.ci95 == pytest.approx((0.022 - t_975_df4 * se, 0.022 + t_975_df4 * se), rel=1e-5)
    assert c.welch_p is not None and c.welch_p > c.p  # ignoring the pairing throws the seeds' shared luck away


def test_mde_has_the_stated_power():
    from scipy import stats

    c = paired(VARIANT, BASELINE)
    d = c.mde / c.sd  # standardised effect; power of the two-sided paired t-test at it, from the noncentral t
    crit = stats.t.ppf(0.975, 4)
    power = stats.nct.sf(crit, 4, d * math.sqrt(5)) + stats.nct.cdf(-crit, 4, d * math.sqrt(5))
    assert power == pytest.approx(0.8, abs=1e-4)
    assert 1.6 < d < 1.8  # G*Power gives d = 1.68 for a paired t-test with n = 5


def test_holm_by_hand():
    comparisons = [Paired(delta=0.0, n=3, p=p) for p in (0.01, 0.04, 0.03)]
    holm(comparisons)
    assert [c.p_holm for c in comparisons] == pytest.approx([0.03, 0.06, 0.06])
    assert [c.significant for c in comparisons] == [True, False, False]


def test_degenerate_cases():
    assert paired([0.5], [0.4]).p is None  # one seed: no test
    same = paired([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same.delta == 0 and same.p is None and same.ci95 is None
    with pytest.raises(ValueError, match="same seeds"):
        paired([0.5, 0.6], [0.5])
    assert points(-0.00001) == "+0.0" and points(0.0123) == "+1.2"


def test_verdict_says_what_was_detectable():
    c = paired([0.50, 0.52, 0.49], [0.51, 0.50, 0.50])
    holm([c])
    text = verdict("yolo11n-eca", "val mAP50-95", c)
    assert f"±{100 * c.mde:.1f} points" in text and "none was" in text
    c = paired(VARIANT, BASELINE)
    holm([c])
    assert "significant gain" in verdict("yolo11n-eca", "val mAP50-95", c)


def summary(values: list[float]) -> dict:
    return {"mean": sum(values) / len(values), "sd": 0.0, "seeds": values}


def fake_report(seeds: int) -> dict:
    def row(model: str, values: list[float], gamma: float | None = None) -> dict:
        metrics = {k: summary(values) for k in ("map50_95", "map50", "precision", "recall")}
        gates = None if gamma is None else [{"layer": 17, "mechanism": "eca", "level": "P3", "mean_abs_gamma": gamma,
                                             "seeds": [gamma] * seeds}]
        return {"model": model, "baseline": "yolo11n", "reference": False, "params": 1, "gflops": 1.0,
                "latency_ms": {"cpu": 10.0}, "train_images_per_s": 5.0, "best_map50_95": values, "gates": gates,
                "val": metrics, "pr_curve": {"recall": [0, 1], "precision": [1, 0]},
                "training_curve": [0.1, 0.4, 0.49, 0.5, 0.51]}  # +2% over the last quarter: converged

    return {"date": "d", "machine": "m", "seeds": list(range(seeds)), "train_args": {"epochs": 2}, "weights": None,
            "splits": ["val"], "data": "x.yaml", "command": "python -m detector compare ...",
            "rows": [row("yolo11n", BASELINE[:seeds]), row("yolo11n-eca", VARIANT[:seeds], gamma=0.002),
                     row("yolo11n-se", [0.0001, 0.0003, 0.0002, 0.0004, 0.0001][:seeds], gamma=0.3)]}


def test_report_marks_significance_after_holm_and_warns():
    report = add_statistics(fake_report(5))
    eca, se = report["rows"][1]["delta"]["val_map50_95"], report["rows"][2]["delta"]["val_map50_95"]
    assert se["p"] < eca["p"] / 2  # Holm: the smallest p is doubled, the larger kept (it is over twice the smallest)
    assert se["p_holm"] == pytest.approx(2 * se["p"]) and eca["p_holm"] == pytest.approx(eca["p"])
    assert eca["significant"] and se["significant"]
    assert report["rows"][0]["delta"]["val_map50_95"] is None
    warnings = "\n".join(report["warnings"])
    assert "yolo11n-se did not learn" in warnings
    assert "yolo11n-eca: every attention gate stayed closed" in warnings and "yolo11n-se: every" not in warnings
    assert "seed(s)" not in warnings
    text = markdown(report)
    assert "| yolo11n-eca |" in text and " **" in text and "Holm" in text and "## Warnings" in text
    assert "| yolo11n-eca | 17 | eca | P3 | 0.0020 (closed) |" in text
    assert "seed(s)" in "\n".join(add_statistics(fake_report(2))["warnings"])
    assert "not converged" not in warnings


def test_report_warns_when_training_had_not_converged():
    """Over the last quarter of the epochs (at least one) the mean val mAP50-95 rose by more than 5% of its last
    value: the models were still learning, and the report says which and by how much."""
    report = fake_report(3)
    report["rows"][0]["training_curve"] = [0.0, 0.02, 0.05, 0.07, 0.08, 0.09, 0.094, 0.1]  # 0.09 → 0.1 over 2
    report["rows"][2]["training_curve"] = [0.1, 0.2, 0.3, 0.4, 0.46, 0.48, 0.49, 0.5]  # 0.48 → 0.5: 4%
    report["rows"][1]["training_curve"] = [0.3, 0.5]  # 0.3 → 0.5 over one epoch
    (warning,) = [w for w in add_statistics(report)["warnings"] if "not converged" in w]
    assert "yolo11n 0.090 → 0.100; yolo11n-eca 0.300 → 0.500)" in warning and "yolo11n-se" not in warning


def test_rerender_recomputes_an_older_report(tmp_path):
    old = fake_report(5)
    for row in old["rows"]:
        del row["gates"]
        row["delta"] = {"val_map50_95": {"delta": 0.0, "p": 0.9, "significant": False}}  # the old shape
    old.pop("command")
    (tmp_path / "compare.json").write_text(json.dumps(old))
    (tmp_path / "compare.md").write_text("# old\n\n- command: `python -m detector compare --data d.yaml --models m`\n")
    report = rerender(tmp_path, rendered_by="python -m detector compare --report-only --out X")
    assert report["command"] == "python -m detector compare --data d.yaml --models m"
    assert report["rows"][1]["delta"]["val_map50_95"]["ci95"] is not None
    text = (tmp_path / "compare.md").read_text()
    assert "not recorded" in text and "re-rendered" in text
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert json.loads((tmp_path / "compare.json").read_text())["rendered_by"].endswith("--out X")
