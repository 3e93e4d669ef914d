"""Solar elevation from latitude, longitude and UTC time (NOAA's simplified algorithm).

Accurate to a fraction of a degree, enough to tell day, twilight and deep night.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime


def solar_elevation(lat: float, lon: float, when: datetime) -> float:
    """Sun's elevation above the horizon in degrees (negative below it)."""
    t = when.astimezone(UTC)
    day = t.timetuple().tm_yday
    hour = t.hour + t.minute / 60 + t.second / 3600
    g = 2 * math.pi / 365 * (day - 1 + (hour - 12) / 24)
    eqtime = 229.18 * (0.000075 + 0.001868 * math.cos(g) - 0.032077 * math.sin(g)
                       - 0.014615 * math.cos(2 * g) - 0.040849 * math.sin(2 * g))
    decl = (0.006918 - 0.399912 * math.cos(g) + 0.070257 * math.sin(g)
            - 0.006758 * math.cos(2 * g) + 0.000907 * math.sin(2 * g)
            - 0.002697 * math.cos(3 * g) + 0.00148 * math.sin(3 * g))
    true_solar_min = hour * 60 + eqtime + 4 * lon
    ha = math.radians(true_solar_min / 4 - 180)
    phi = math.radians(lat)
    cos_zenith = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(ha)
    return 90 - math.degrees(math.acos(max(-1.0, min(1.0, cos_zenith))))


def local_hour(lon: float, when: datetime) -> float:
    """Mean solar local hour (0–24) at longitude ``lon``: what the model's hour means."""
    t = when.astimezone(UTC)
    return (t.hour + t.minute / 60 + t.second / 3600 + lon / 15) % 24
