"""Energy saved against full power, accumulated so that it is exact where it can be.

The saving over a span of time is what the luminaires would have used at full output
(their rated power × time) minus what they used. Two sources for "used":

- **measured** (D4i bank 202, a controller's energy register): counters that step in
  whole quanta (1 Wh on D4i gear). One interval's counter delta is mostly quantisation
  noise (a 100 W luminaire uses 0.28 Wh in 10 s), and clipping each interval's saving at
  zero, or charging a delta that spans a read gap to one interval, biases the sum. So
  the account keeps a **baseline** (counter sum and time at the first reading) and
  computes the *cumulative* saving since it, charging rated energy over exactly the
  time the counters covered. Each reported interval gets the difference of the
  cumulative figure at its two ends (between readings the difference is modelled, and
  the next reading corrects it; an interval may then show a small negative saving). The
  cumulative total is exact to within one quantum per counter.
- **modelled** (no counters): rated power × (1 − level), the linear power model of LED
  drivers, integrated over the level actually held.

Rated power comes from the gear where it declares it (D4i bank 1, nominal input
power), else from the config (``rated_power_w × luminaires``). A counter that goes
backwards (gear replaced) or a change of counters rebases the account; what was saved
until then is kept.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnergyFigures:
    """The account's figures at one moment."""

    saved_total_wh: float           # cumulative since the account began
    uncertainty_wh: float | None    # ± on the total (None: modelled, no bound)
    source: str                     # "measured" | "rated_x_level"
    used_wh: float | None           # the counters' sum (None: no counters)


class EnergyAccount:
    """One luminaire group's energy saved; see the module docstring."""

    def __init__(self) -> None:
        self._carried = 0.0                         # saved before the current baseline
        self._base: tuple[float, float, int] | None = None  # (counter sum, mono, counters)
        self._measured_saved = 0.0                  # at the last reading, since the baseline
        self._modelled_since_read = 0.0             # modelled saving since the last reading
        self._quantum = 1.0
        self._used: float | None = None
        self._last_mono: float | None = None

    def hold(self, level_pct: float, rated_w: float, mono: float) -> None:
        """The group held ``level_pct`` from the previous call until ``mono``."""
        if self._last_mono is not None:
            dt = max(0.0, mono - self._last_mono)
            share = min(max(level_pct, 0.0), 100.0) / 100
            self._modelled_since_read += rated_w * (1 - share) * dt / 3600
        self._last_mono = mono

    def reading(self, used_wh: float | None, counters: int, quantum_wh: float,
                rated_w: float, mono: float) -> None:
        """A counter reading at ``mono`` (``used_wh`` None: the gear has no counters)."""
        if used_wh is None or counters <= 0:
            return
        self._quantum = quantum_wh
        base = self._base
        if base is None or used_wh < base[0] or counters != base[2]:
            # first reading, counter went back, or the set of counters changed: rebase
            self._carried += self._measured_saved + self._modelled_since_read
            self._base = (used_wh, mono, counters)
            self._measured_saved = self._modelled_since_read = 0.0
            self._used = used_wh
            return
        full = rated_w * (mono - base[1]) / 3600
        self._measured_saved = full - (used_wh - base[0])
        self._modelled_since_read = 0.0
        self._used = used_wh

    def figures(self) -> EnergyFigures:
        """The cumulative saving now."""
        total = self._carried + self._measured_saved + self._modelled_since_read
        if self._base is None:
            return EnergyFigures(round(total, 4), None, "rated_x_level", None)
        return EnergyFigures(round(total, 4), self._quantum * self._base[2], "measured",
                             self._used)
