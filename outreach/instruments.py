"""The registry of outcome measures, and how a change in score is read.

Kept as data in one place so that every report interprets a score the same
way and adding an instrument is one entry. ``mcid`` is the published minimal
clinically important difference (or minimal detectable change) in points;
``mcid_pct`` an alternative threshold in percent of baseline; ``cutoff`` a
risk level (for example the TUG fall-risk cut-off). ``source`` names where
each figure comes from, so a clinician can check it.
"""

from __future__ import annotations

from dataclasses import dataclass


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


_I = Instrument
INSTRUMENTS: dict[str, Instrument] = {
    i.code: i
    for i in (
        _I("LEFS", "Lower Extremity Functional Scale", 0, 80, "points", True, 9,
           "MCID 9 points", "Binkley et al., Phys Ther 1999"),
        _I("ODI", "Oswestry Disability Index", 0, 100, "%", False, 10,
           "MCID 10 points or 30 %", "Ostelo et al., Spine 2008", mcid_pct=30),
        _I("NDI", "Neck Disability Index", 0, 50, "points", False, 7.5,
           "MCID 7.5 points", "Young et al., Spine J 2009"),
        _I("QuickDASH", "QuickDASH", 0, 100, "points", False, 15.9,
           "MCID 15.9 points", "Franchignoni et al., JOSPT 2014"),
        _I("NPRS", "Numeric Pain Rating Scale", 0, 10, "points", False, 2,
           "MCID 2 points or 30 %", "Childs et al., Spine 2005", mcid_pct=30),
        _I("PSFS", "Patient-Specific Functional Scale", 0, 10, "points", True, 2,
           "MCID 2 points", "Abbott & Schmitt, JOSPT 2014"),
        _I("TUG", "Timed Up and Go", 0, None, "s", False, None,
           "fall-risk cut-off 13.5 s", "Shumway-Cook et al., Phys Ther 2000", cutoff=13.5),
        _I("30CST", "30-second chair stand", 0, None, "repetitions", True, 2,
           "2 repetitions; below age/sex norms = fall risk", "Jones et al., RQES 1999"),
        _I("6MWT", "6-minute walk test", 0, None, "m", True, 50,
           "50 m substantial change (20 m small)", "Perera et al., JAGS 2006"),
        _I("BERG", "Berg Balance Scale", 0, 56, "points", True, 5,
           "5 points detectable; below 45 = fall risk", "Donoghue et al., JRM 2009", cutoff=45),
        _I("GAIT", "Gait speed", 0, None, "m/s", True, 0.10,
           "0.10 m/s substantial change; below 1.0 m/s higher risk",
           "Perera et al., JAGS 2006", cutoff=1.0),
    )
}  # fmt: skip

_ALIASES = {code.lower(): code for code in INSTRUMENTS}
_ALIASES.update(
    {
        "30s_chair_stand": "30CST",
        "chair_stand": "30CST",
        "6mwd": "6MWT",
        "berg_balance": "BERG",
        "gait_speed": "GAIT",
        "quick_dash": "QuickDASH",
    }
)


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
