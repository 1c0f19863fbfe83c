"""The registry of outcome measures, and how a change in score is read.

Kept as data in one place, ``instruments.toml``, so that every report
interprets a score the same way and adding an instrument is one entry.
``mcid`` is the published minimal clinically important difference (or
minimal detectable change) in points; ``mcid_pct`` an alternative threshold
in percent of baseline; ``cutoff`` a risk level (for example the TUG
fall-risk cut-off). ``source`` names where each figure comes from, so a
clinician can check it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib.resources import files


@dataclass(frozen=True)
class Instrument:
    code: str
    name: str
    low: float
    high: float | None  # None: no upper bound (timed tests, distances)
    unit: str
    higher_is_better: bool
    mcid: float | None
    threshold_label: str
    source: str
    mcid_pct: float | None = None
    cutoff: float | None = None  # risk level; the bad side depends on direction

    def in_range(self, score: float) -> bool:
        return score >= self.low and (self.high is None or score <= self.high)

    @property
    def range_text(self) -> str:
        if self.high is None:
            return f"{self.low:g} or more"
        return f"{self.low:g} to {self.high:g}"

    def at_risk(self, score: float) -> bool | None:
        """Whether a score is on the risk side of the cut-off (None: no cut-off)."""
        if self.cutoff is None:
            return None
        return score < self.cutoff if self.higher_is_better else score > self.cutoff


def _registry() -> tuple[dict[str, Instrument], dict[str, str]]:
    """The instruments in ``instruments.toml`` by code, and every name users write for each."""
    text = files("outreach").joinpath("instruments.toml").read_text(encoding="utf-8")
    instruments, aliases = {}, {}
    for entry in tomllib.loads(text)["instrument"]:
        names = entry.pop("aliases", [])
        instrument = Instrument(**{"high": None, "mcid": None, **entry})
        instruments[instrument.code] = instrument
        aliases.update(dict.fromkeys([instrument.code.lower(), *names], instrument.code))
    return instruments, aliases


INSTRUMENTS, _ALIASES = _registry()


def lookup(name: str) -> Instrument | None:
    """The instrument for a code as users write it (case-insensitive)."""
    code = _ALIASES.get(name.strip().lower())
    return INSTRUMENTS.get(code) if code else None


MEANINGFUL_IMPROVEMENT = "clinically meaningful improvement"
MEANINGFUL_DECLINE = "worsened beyond the threshold"
WITHIN_THRESHOLD = "unchanged within the threshold"


@dataclass(frozen=True)
class Outcome:
    """Baseline against latest for one instrument, read clinically."""

    instrument: Instrument
    baseline: float
    latest: float
    baseline_on: object
    latest_on: object
    count: int

    @property
    def change(self) -> float:
        return self.latest - self.baseline

    @property
    def change_pct(self) -> float | None:
        return None if self.baseline == 0 else 100 * self.change / abs(self.baseline)

    @property
    def improvement(self) -> float:
        """Change in the good direction (negative when worse)."""
        return self.change if self.instrument.higher_is_better else -self.change

    def _beyond_threshold(self, amount: float) -> bool:
        ins = self.instrument
        if ins.mcid is not None and amount >= ins.mcid - 1e-9:
            return True
        if ins.mcid_pct is not None and self.baseline:
            return 100 * amount / abs(self.baseline) >= ins.mcid_pct - 1e-9
        return False

    @property
    def meaningful(self) -> bool:
        if self.instrument.mcid is None and self.instrument.mcid_pct is None:
            return bool(self.crossed_cutoff)
        return self._beyond_threshold(self.improvement)

    @property
    def worsened(self) -> bool:
        if self.instrument.mcid is None and self.instrument.mcid_pct is None:
            return self.crossed_cutoff is False
        return self._beyond_threshold(-self.improvement)

    @property
    def crossed_cutoff(self) -> bool | None:
        """True: moved out of the risk zone; False: moved into it; None: neither."""
        before = self.instrument.at_risk(self.baseline)
        after = self.instrument.at_risk(self.latest)
        if before is None or before == after:
            return None
        return before and not after

    @property
    def interpretation(self) -> str:
        if self.count < 2:
            return "baseline"
        if self.meaningful:
            return MEANINGFUL_IMPROVEMENT
        if self.worsened:
            return MEANINGFUL_DECLINE
        return WITHIN_THRESHOLD

    @property
    def risk_note(self) -> str:
        """A short note about the risk cut-off where the instrument has one."""
        ins = self.instrument
        if ins.cutoff is None:
            return ""
        side = "below" if self.latest < ins.cutoff else "above"
        risky = ins.at_risk(self.latest)
        return f"{side} the {ins.cutoff:g} {ins.unit} cut-off ({'at risk' if risky else 'not at risk'})"


def format_score(value: float) -> str:
    """Scores as clinicians write them: no trailing .0, at most two decimals."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def format_change(value: float) -> str:
    return ("+" if value > 0 else "") + format_score(value)
