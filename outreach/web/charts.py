"""A client's scores on one instrument as a small SVG chart, drawn on the server.

Inline SVG in the page: no JavaScript, nothing fetched, nothing for the
Content-Security-Policy to refuse (presentation attributes such as ``fill``
and ``stroke``, no ``style``). x is the date, y the score; the points are
joined; the baseline (the first score) is a dashed line; the band around it
spans the baseline plus and minus the instrument's threshold (its MCID, or
its percent-of-baseline threshold where that is smaller, as
``instruments.Outcome`` reads a change), so a score inside the band has not
changed by a clinically important amount. An instrument with a risk cut-off
(TUG, Berg, gait speed) shows it as a dotted line. The chart says all of
this in words too (``role="img"``, ``<title>`` and ``aria-label``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

from markupsafe import Markup

from outreach.instruments import Instrument, format_score
from outreach.timeline import Series

WIDTH, HEIGHT = 380, 200
LEFT, RIGHT, TOP, BOTTOM = 48, 14, 26, 34  # margins: the legend and the axis labels live there
LINE, BAND, BASELINE, CUTOFF, AXIS, TEXT = "#1f5f8b", "#dbe9f4", "#5b6673", "#a3261b", "#9aa4ae", "#1d2733"
NICE = (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10)  # tops of a scale without an upper bound
STEPS = (1, 2, 5, 10)  # gridline steps


@dataclass(frozen=True)
class Threshold:
    """How far from the baseline a change must go to count: half the band's height, and its name."""

    points: float
    label: str  # "MCID of 9 points"


def _unit_word(instrument: Instrument) -> str:
    """A difference in a percent-scored instrument (ODI) is in points, not percent."""
    return "points" if instrument.unit == "%" else instrument.unit


def threshold(instrument: Instrument, baseline: float) -> Threshold | None:
    """The instrument's threshold around this baseline (the smaller, where it has two); None if none."""
    unit = _unit_word(instrument)
    options: list[Threshold] = []
    if instrument.mcid is not None:
        options.append(Threshold(instrument.mcid, f"MCID of {format_score(instrument.mcid)} {unit}"))
    if instrument.mcid_pct is not None and baseline:
        share = abs(baseline) * instrument.mcid_pct / 100
        label = f"MCID of {format_score(instrument.mcid_pct)} % of baseline ({format_score(share)} {unit})"
        options.append(Threshold(share, label))
    return min(options, key=lambda t: t.points) if options else None


def describe(series: Series) -> str:
    """The chart in words: where the scores went and how that reads clinically."""
    ins, outcome = series.instrument, series.outcome
    first_on, last_on = series.points[0][0], series.points[-1][0]
    if outcome.count < 2:
        return (
            f"{ins.code} baseline {format_score(outcome.baseline)} {ins.unit} on {first_on}; one score so far"
        )
    parts = [f"{ins.code} from {format_score(outcome.baseline)} to {format_score(outcome.latest)} {ins.unit}"]
    band = threshold(ins, outcome.baseline)
    if band is not None:
        if outcome.meaningful:
            parts.append(f"improvement beyond the {band.label}")
        elif outcome.worsened:
            parts.append(f"worse by more than the {band.label}")
        else:
            parts.append(f"change within the {band.label}")
    if outcome.risk_note:
        parts.append(f"now {outcome.risk_note}")
    parts.append(f"{outcome.count} scores, {first_on} to {last_on}")
    return "; ".join(parts)


def _nice_top(value: float) -> float:
    """A round number at or above ``value`` (the top of a scale with no upper bound)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in NICE if m * power >= value - 1e-12)


def _ticks(low: float, high: float) -> list[float]:
    """Three to six round values between ``low`` and ``high`` for the y axis."""
    raw = (high - low) / 4
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in STEPS if m * power >= raw - 1e-12)
    first = math.ceil(low / step - 1e-9) * step
    count = math.floor((high - first) / step + 1e-9) + 1
    return [first + n * step for n in range(count)]


def _y_range(series: Series, band: Threshold | None) -> tuple[float, float]:
    """The instrument's range; an open-ended one up to a round number above every mark drawn."""
    ins = series.instrument
    low = ins.low
    if ins.high is not None:
        return low, ins.high
    marks = [score for _, score in series.points]
    if band is not None:
        marks.append(series.points[0][1] + band.points)
    if ins.cutoff is not None:
        marks.append(ins.cutoff)
    top = _nice_top(max(marks) * 1.15)
    return low, max(top, low + 1)


def svg(series: Series) -> Markup:
    """The chart as inline SVG markup (every text in it escaped)."""
    ins = series.instrument
    baseline = series.points[0][1]
    band = threshold(ins, baseline)
    low, high = _y_range(series, band)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    first_day, last_day = series.points[0][0], series.points[-1][0]
    span = (last_day - first_day).days

    def x(day: date) -> float:
        if span == 0:
            return LEFT + plot_w / 2
        return LEFT + plot_w * (day - first_day).days / span

    def y(score: float) -> float:
        clipped = min(max(score, low), high)
        return TOP + plot_h * (high - clipped) / (high - low)

    words = describe(series)
    unit = ins.unit
    parts = [
        Markup(
            '<svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img" width="{w}" height="{h}" '
            'viewBox="0 0 {w} {h}" aria-label="{label}" font-size="11" font-family="sans-serif">'
        ).format(w=WIDTH, h=HEIGHT, label=words),
        Markup("<title>{}</title>").format(words),
    ]
    if band is not None:
        top, bottom = y(baseline + band.points), y(baseline - band.points)
        parts.append(
            Markup(
                '<rect class="chart-band" x="{}" y="{:.1f}" width="{}" height="{:.1f}" fill="{}"/>'
            ).format(LEFT, top, plot_w, bottom - top, BAND)
        )
        parts.append(  # its legend, above the plot where no point can hide it
            Markup(
                '<rect x="{l}" y="6" width="14" height="10" fill="{f}"/>'
                '<text x="{tx}" y="15" fill="{c}" font-size="10">baseline ± {v} {u} ({name})</text>'
            ).format(
                l=LEFT,
                f=BAND,
                tx=LEFT + 18,
                c=BASELINE,
                v=format_score(band.points),
                u=_unit_word(ins),
                name="MCID",
            )
        )
    for tick in _ticks(low, high):  # gridlines and the y axis labels
        parts.append(
            Markup(
                '<line x1="{l}" x2="{r}" y1="{y:.1f}" y2="{y:.1f}" stroke="{c}" stroke-width="0.5"/>'
                '<text x="{tx}" y="{ty:.1f}" text-anchor="end" fill="{t}">{v}</text>'
            ).format(
                l=LEFT,
                r=LEFT + plot_w,
                y=y(tick),
                c=AXIS,
                tx=LEFT - 6,
                ty=y(tick) + 4,
                t=TEXT,
                v=format_score(tick),
            )
        )
    parts.append(
        Markup(
            '<text x="12" y="{my:.1f}" text-anchor="middle" fill="{t}" transform="rotate(-90 12 {my:.1f})">'
            "{code} ({unit})</text>"
        ).format(my=TOP + plot_h / 2, t=TEXT, code=ins.code, unit=unit)
    )
    if ins.cutoff is not None and low <= ins.cutoff <= high:
        parts.append(
            Markup(
                '<line class="chart-cutoff" x1="{l}" x2="{r}" y1="{y:.1f}" y2="{y:.1f}" stroke="{c}" '
                'stroke-dasharray="2 3"/>'
                '<text x="{r}" y="15" text-anchor="end" fill="{c}" font-size="10">'
                "⋯ risk cut-off {v} {u}</text>"
            ).format(l=LEFT, r=LEFT + plot_w, y=y(ins.cutoff), c=CUTOFF, v=format_score(ins.cutoff), u=unit)
        )
    parts.append(
        Markup(
            '<line class="chart-baseline" x1="{l}" x2="{r}" y1="{y:.1f}" y2="{y:.1f}" stroke="{c}" '
            'stroke-dasharray="6 4"/>'
            '<text x="{r}" y="{ty:.1f}" text-anchor="end" fill="{c}" font-size="10">baseline {v}</text>'
        ).format(
            l=LEFT,
            r=LEFT + plot_w,
            y=y(baseline),
            ty=y(baseline) + (12 if series.points[-1][1] > baseline else -4),  # away from the last point
            c=BASELINE,
            v=format_score(baseline),
        )
    )
    parts.append(  # the axes
        Markup(
            '<line x1="{l}" x2="{l}" y1="{t}" y2="{b}" stroke="{c}"/><line x1="{l}" x2="{r}" y1="{b}" y2="{b}" stroke="{c}"/>'
        ).format(l=LEFT, r=LEFT + plot_w, t=TOP, b=TOP + plot_h, c=AXIS)
    )
    points = " ".join(f"{x(day):.1f},{y(score):.1f}" for day, score in series.points)
    parts.append(
        Markup('<polyline class="chart-line" points="{}" fill="none" stroke="{}" stroke-width="2"/>').format(
            points, LINE
        )
    )
    for day, score in series.points:
        parts.append(
            Markup(
                '<circle cx="{:.1f}" cy="{:.1f}" r="3.5" fill="{}"><title>{}: {} {}</title></circle>'
            ).format(x(day), y(score), LINE, day, format_score(score), unit)
        )
    label_y = TOP + plot_h + 16
    if span == 0:
        parts.append(
            Markup('<text x="{:.1f}" y="{}" text-anchor="middle" fill="{}">{}</text>').format(
                x(first_day), label_y, TEXT, first_day
            )
        )
    else:
        parts.append(
            Markup(
                '<text x="{l}" y="{y}" text-anchor="start" fill="{t}">{a}</text>'
                '<text x="{r}" y="{y}" text-anchor="end" fill="{t}">{b}</text>'
            ).format(l=LEFT, r=LEFT + plot_w, y=label_y, t=TEXT, a=first_day, b=last_day)
        )
    parts.append(
        Markup('<text x="{:.1f}" y="{}" text-anchor="middle" fill="{}">date</text>').format(
            LEFT + plot_w / 2, label_y + 14, BASELINE
        )
    )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)
