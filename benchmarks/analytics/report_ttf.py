"""Section (e) of the analytics report: time to failure, from `edge-agent replay` itself."""

from __future__ import annotations

from tables import table
from ttf_replay import OVER_TIME_FROM


def _pt(p: dict) -> str:
    cov = "in" if p["covered"] else "out"
    return (f"{p['hours']:.2f} h [{p['lower_hours']:.2f}, {p['upper_hours']:.2f}] vs "
            f"{p['actual_h']:.2f} h, A={p['A']:.2f} ({p['model']}, bounds {cov})")  # fmt: skip


def _by_model(per: dict) -> str:
    """Where the scored estimates came from, and how they scored (generated)."""
    pts = [p for x in per.values() for p in x["points"]]
    parts = []
    for model in sorted({p["model"] for p in pts}):
        a = [p["A"] for p in pts if p["model"] == model]
        parts.append(f"{model}: {len(a)} points, mean A {sum(a) / len(a):.3f}")
    late = sum(p["hours"] > p["actual_h"] for p in pts)
    return (
        f"Scored estimates by model: {'; '.join(parts)}. {late} of {len(pts)} were late"
        " (an estimate above the actual remaining life, which the PHM score punishes four"
        " times harder than an early one)."
    )


def _tail_check(tt: dict) -> str:
    """The leave-one-bearing-out check of the point's tail (generated)."""
    loo = tt["point_tail_loo"]
    by = ", ".join(f"{t}: {a}" for t, a in loo["score_by_tail"].items())
    ot = ", ".join(f"{t}: {a}" for t, a in loo["over_time_by_tail"].items())
    picks = sorted({f["tail"] for f in loo["folds"].values()})
    return (
        f"The scored point is the agent's default (`--point-tail {tt['point_tail']:g}`: the"
        " geometric mean of the remaining time over the posterior's lowest quarter, about the"
        " remaining L10; the bounds do not depend on it). Checked leave-one-bearing-out: with"
        " the full replays also run at `--point-tail` 0.1, 0.5 and 1, the tail with the best"
        f" mean A on five bearings, scored on the sixth, was {picks} in the six folds, for a"
        f" held-out score of {loo['loo_score']} (all points, by tail: {by}; over time, by"
        f" tail: {ot}). One estimate hits or misses the score's narrow window (A >= 0.5 only"
        " from 0.8 to 1.05 times the actual remaining life), so a handful of cut points"
        " rewards luck: the over-time score is the steadier measure of a change."
    )


def _reference(tt: dict) -> str:
    """The data-free reference, remaining = c x age (generated)."""
    ref = tt["age_rule_reference"]
    by = ", ".join(f"{c}: {a}" for c, a in ref["score_by_ratio"].items())
    ot = ", ".join(f"{c}: {a}" for c, a in ref["over_time_by_ratio"].items())
    return (
        "Reference, not the agent: a rule that knows only the machine's age, remaining ="
        " c x age, with c chosen on five bearings and scored on the sixth, scores"
        f" {ref['loo_score']} over all points (by c: {by}; over time: {ot}). The agent shows"
        " skill on these bearings only where it beats this rule. With one prior life per fold"
        " (the other bearing of the condition, 3x longer or shorter for conditions 1 and 3)"
        " the prior points the wrong way, and FEMTO's degradation shows minutes before"
        " failure for half the bearings, so neither term can know how much life is left."
        " Tried on this model's inputs and not kept (figures in the git log of this file):"
        " an onset-to-failure duration prior, remaining life as a fraction of age after"
        " onset, Weibull shape 2 or 3, more or less weight on the trend, a failure threshold"
        " relative to the baseline, and the point that maximises the expected PHM score: none"
        " beat the shipped model both at the cut points and over time. A length-biased prior"
        " (each fleet life weighted by 1/life, so a long life counts once, not once per hour)"
        " with `--point-tail 0.5` did (about 0.25 at the cut points and 0.18 over time),"
        " but it tells a new machine minutes (a 2.4 h fleet life: 4 min at age 0)."
        " Nor does an earlier trend: the trend term fed from the first snapshot instead of"
        " from the onset scored 0.075 over all points and 0.080 over time (bounds 58 %), an"
        " earlier onset (the health-index alarm at 6 or 4 instead of 10 MADs) 0.134 and"
        " 0.100-0.104 (bounds 65 %): before the onset the failure metric's noise fits"
        " growths that are not there. Also tried and not kept (all points / over time /"
        " bounds at the cut points, anything chosen leave-one-bearing-out on the five"
        " training bearings): the Weibull shape integrated out (log-normal around 1.5, sd"
        " of ln shape 0.15 / 0.3 / 0.5, weighted by survival to the age) 0.177 / 0.132 / 88 %,"
        " 0.176 / 0.120 / 88 % and 0.158 / 0.105 / 88 % (the same grid code with the shape"
        " fixed: 0.178 / 0.135); a point tail per model (prior alone or with the trend)"
        " 0.127 / 0.118 / 88 %; a trend on the health index with the fleet's index at failure"
        " as its threshold (the other bearing's last value) 0.167 / 0.122 / 88 %; the failure"
        " metric as a proportional-hazards covariate of the prior (hazard times exp(w x), x"
        " the share of the log way from the metric's early level to its threshold covered"
        " by the median of its last 6 bins; w and the tail chosen together in-fold, w = 2"
        " and tail 0.5 in all six folds) 0.228 / 0.144 / 90 %, which beats both figures here"
        " but not with the larger fleet below (0.132 / 0.135, bounds 100 %, against 0.162 /"
        " 0.176; chosen in-fold there, w and tail differ fold to fold and score 0.091 /"
        " 0.107), nor with the last 3 bins instead of 6 (0.182 / 0.137), and it loses without"
        " the trend term (0.104-0.130 / 0.094-0.101): a fit to one wrong-way prior life, not"
        " skill. Nor these three, each given as one life (all points / over time / bounds)"
        " and five lives (the same), against 0.184 / 0.132 / 88 % and 0.158 / 0.177 / 98 %"
        " from the same full replays: a hierarchical prior on ln(life), a Student-t"
        " predictive around the fleet's mean ln(life) whose scale shrinks with the number"
        " of lives from the population scatter of a Weibull of shape 1.5 (sd of ln life"
        " 0.855) worth nu0 lives, with nu0 = 10 (a catalogue's weight) 0.162 / 0.162 / 88 %"
        " and 0.187 / 0.177 / 100 %, nu0 = 4 0.160 / 0.156 / 88 % and 0.181 / 0.174 / 100 %,"
        " nu0 = 2 0.133 / 0.146 / 85 % and 0.180 / 0.169 / 100 %, log-normal (nu0 large)"
        " 0.163 / 0.164 / 90 % and 0.192 / 0.177 / 100 % (nu0 = 10 with `--point-tail` 0.1:"
        " 0.119 / 0.132 and 0.130 / 0.113; 0.5: 0.133 / 0.132 and 0.163 / 0.170): its points"
        " move 10-15 % from the Weibull's, enough to move a few cut points in or out of the"
        " score's window, and its bounds hold every point of the larger fleet; a point that"
        " depends on the degradation state before the trend (prior alone: tail 0.25 x"
        " (m - (m - 1) x), x the health index over its alarm level, clipped to 0-1, so"
        " 0.25 m at the baseline and 0.25 at the alarm) m = 2 0.186 / 0.136 / 88 % and"
        " 0.157 / 0.158 / 98 %, m = 1.5 0.160 / 0.117 / 88 % and 0.223 / 0.159 / 98 %; and"
        " the health index as a proportional-hazards covariate of the prior alone (hazard"
        " times exp(w x), x as above, w set, not fitted) w = 1 0.152 / 0.145 / 90 % and"
        " 0.132 / 0.157 / 98 %, w = 2 0.140 / 0.129 / 90 % and 0.096 / 0.142 / 98 %, w = 1"
        " with `--point-tail` 0.5 0.164 / 0.147 / 90 % and 0.196 / 0.161 / 98 %. None"
        " beats the shipped model on both one-life figures without losing with the larger"
        " fleet (or leaving its bounds range): what one gains on a bearing whose one prior"
        " life is shorter than its own it loses on one whose prior life is longer."
    )


def _larger_fleet(tt: dict) -> str:
    """What five prior lives instead of one change (generated)."""
    lf = tt["larger_fleet"]
    return (
        "With a larger fleet: the same command with the lives of all five other bearings as"
        " the prior (any condition, so a mixed class; five lives per fold instead of one)"
        f" scores {lf['score']} over all points and {lf['over_time']} over time, its bounds"
        f" containing the truth at {lf['bounds_coverage']:.0%} of the points (against"
        f" {tt['phm_score']['all points']}, {tt['phm_over_time']} and"
        f" {tt['bounds_coverage_scored_points']:.0%} with one life)."
    )


def _onsets(on: dict) -> str:
    """How long before failure the recordings show degradation (generated)."""
    per = on["bearings"]

    def lead(x: dict | None) -> str:
        return "none" if x is None else f"{x['lead_h']:.2f} h ({x['life_fraction']:.0%})"

    rows = "; ".join(
        f"{b} ({x['life_h']:.2f} h): {lead(x['k4']['earliest_any'])}"
        f" / {lead(x['k6']['earliest_any'])},"
        f" robust {lead(x['k4']['robust_onset'])} / {lead(x['k6']['robust_onset'])},"
        f" false {len(x['k4']['false_departures'])} / {len(x['k6']['false_departures'])}"
        for b, x in per.items()
    )
    conf, false = on["robust_onset_confirmed_before_cut"], on["false_departures_total"]
    return (
        "How long before failure do the recordings show any sign of degradation?"
        " (indicator_onsets.py:"
        f" {on['series']} indicator series, the six waveform features and 8 log band energies"
        " per channel, each smoothed by a causal 6-snapshot median; a departure is the first run of"
        " 30 snapshots outside median +/- k x 1.4826 x MAD of the bearing's healthy baseline, its"
        " first 20 % or 60 min.) Per bearing, at k = 4 / 6: the earliest departure of any series in"
        " either direction, lead before failure (share of life); the robust onset, when at least"
        f" {on['robust_onset_min_series']} series have departed upward; and false departures, the"
        " same rule run inside the baseline (first half as reference, second half tested): "
        f"{rows}. The robust onset was confirmed (its 30-snapshot run complete) before"
        f" {conf['k4']} / {conf['k6']} of the {on['cut_points']} cut points scored above; at the"
        " others the recording holds no robust sign of damage yet, so only the age and the prior"
        " inform the estimate. Earliest departures come hours earlier, but the baseline itself"
        f" fires {false['k4']} / {false['k6']} times, so single early departures are not evidence."
    )


def ttf_section(tt: dict, onsets: dict | None = None) -> list[str]:
    """Markdown lines of section (e), every number from tt (ttf_replay.evaluate()) and
    onsets (indicator_onsets.evaluate())."""
    per, sc = tt["bearings"], tt["phm_score"]
    first = next(iter(per.values()))
    cut = [p for p in first["points"] if p["point"].startswith("cut-off")][:1]
    return [
        "## (e) Time to failure, as a user gets it: `edge-agent replay`",
        "",
        "Every number in this section comes from the JSON Lines of the `edge-agent replay`"
        " command (ttf_replay.py runs it as a subprocess), with only its documented flags;"
        " the prior is the completed lives of the other bearings of the same operating"
        " condition (leave-one-bearing-out: one life per fold here), and nothing is learned,"
        " tuned or added per bearing. A cut at a point of life is `--limit N` (the first N"
        " snapshots); the scored estimate is the summary line's `time_to_failure` (the"
        " asset's shortest channel). For example:",
        "",
        f"    {first['command']}" + (f" --limit {cut[0]['snapshots']}" if cut else ""),
        "",
        "Cut points: 50, 70 and 90 % of life, and the challenge's own cut-off points: the"
        " fraction of life at which each PHM 2012 test bearing of the same condition was"
        " truncated (observed duration / (observed duration + actual RUL)), applied to the"
        " learning bearings of that condition (5 for conditions 1 and 2, 1 for condition 3).",
        "",
        table(
            ["", "PHM 2012 score (mean A)"],
            [[k, v] for k, v in sc.items()]
            + [[f"over time (every snapshot from {OVER_TIME_FROM:.0%} of life)",
                tt["phm_over_time"]]],
        ),
        "",
        _tail_check(tt),
        "",
        _reference(tt),
        "",
        _larger_fleet(tt),
        "",
        *([_onsets(onsets), ""] if onsets else []),
        "95 % bounds contain the actual remaining life at"
        f" {tt['bounds_coverage_scored_points']:.0%} of the scored points, and on average"
        " over every estimate of the whole life at"
        f" {tt['bounds_coverage_over_time_mean']:.0%} (target 85-99 %). Cut replays give the"
        f" same number as the full replay at that time: {tt['cut_replays_match_full_replay']}."
        f" ISO severity alerts from FEMTO's unresolved velocity: {tt['severity_alerts_total']}.",
        "",
        table(
            ["bearing", "life h", "prior lives h", "first alert (lead h)", "replay s (CPU s)",
             "skipped snapshots", "flaps"],
            [[b, x["life_h"], x["prior_life_hours"],
              None if x["first_alert"] is None else
              f"{x['first_alert']['kind']} on {x['first_alert']['channel']}"
              f" ({x['first_alert']['lead_time_hours']:.2f})",
              f"{x['replay_wall_s']} ({x['replay_cpu_s']})",
              sum(x["skipped"].values()),
              sum(n for ch in x["flaps"].values() for n in ch.values())]
             for b, x in per.items()],
        ),
        "",
        _by_model(per),
        "",
        f"Load average during the run: {tt['load_average']} (2 shared cores; the replay"
        " times are wall and CPU seconds of the whole command, start-up included).",
        "",
        table(
            ["bearing", "point", "estimate [95 % bounds] vs actual"],
            [[b, p["point"], _pt(p)] for b, x in per.items() for p in x["points"]],
        ),
        "",
    ]  # fmt: skip
