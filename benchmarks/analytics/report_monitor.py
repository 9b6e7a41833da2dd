"""Section (d) of the analytics report: early detection through the real Monitor."""

from __future__ import annotations

from tables import table


def monitor_section(mo: dict) -> list[str]:
    """Markdown lines of section (d), every number and statement from mo."""
    folds, hd = mo["folds"], mo["hi_default"]
    fa = {b: f["alarms"]["trend_false_alarms"] for b, f in folds.items()}
    leads = [f["alarms"]["lead_min"] for f in folds.values() if f["alarms"]["lead_min"]]
    return [
        "## (d) Early detection through the real Monitor",
        "",
        "Trend alert = health index (EWMA, weight alpha, of mean ln(accel_rms, hf_accel_rms /"
        " baseline median), baseline = first 60 snapshots) above max(median + k x 1.4826 MAD,"
        " floor), debounce 3; its raise is the degradation onset the time-to-failure model"
        " starts from. Leave-one-bearing-out: alpha in {0.05, 0.1, 0.2}, k in {5, 10, 15},"
        " floor in {0.2, 0.3, 0.5} chosen on the five training bearings (fewest false"
        " alarms, i.e. raises before the objective onset of section (b), then the longest"
        " mean lead as a fraction of life, ties to the less sensitive setting), scored on the"
        " sixth. Severity raises count every ISO severity alert: FEMTO's 0.1 s snapshots do"
        " not resolve the 10-1000 Hz velocity band, so there must be none.",
        "",
        f"Shipped defaults (health_index.py): alpha {hd['alpha']}, k {hd['k_mad']}, floor"
        f" {hd['min_level']} = the most common fold choice ({hd['folds']} of {hd['of']}"
        " folds).",
        "",
        table(
            ["bearing", "alpha / k / floor", "trend false alarms", "severity raises",
             "lead min (first true trend raise -> failure)"],
            [[b, f"{f['hi']['alpha']} / {f['hi']['k_mad']} / {f['hi']['min_level']}",
              f["alarms"]["trend_false_alarms"], f["alarms"]["severity_raises"],
              f["alarms"]["lead_min"]] for b, f in folds.items()],
        ),
        "",
        f"Trend false alarms on held-out bearings: {sum(fa.values())} in total"
        + (f" ({', '.join(f'{b}: {n}' for b, n in fa.items() if n)})" if any(fa.values()) else "")
        + (f"; lead {min(leads)}-{max(leads)} min." if leads else "."),
        "",
    ]  # fmt: skip
