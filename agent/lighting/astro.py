"""The sun from latitude, longitude and UTC time (NOAA's simplified algorithm).

Elevation and event times are accurate to a fraction of a degree / about a minute,
enough to tell day, twilight and deep night and to time a schedule's astro steps.
Times are epoch seconds (UTC) so the schedule needs no date library.

Events (elevation of the sun's centre, refraction included for sunrise/sunset):

====================  ===========  ====================================
event                 elevation    meaning
====================  ===========  ====================================
``sunrise/sunset``    -0.833°      upper limb on the horizon
``dawn/dusk``         -6°          civil twilight begins/ends
====================  ===========  ====================================
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

#: Elevation of each named event, and whether it happens in the morning.
EVENTS: dict[str, tuple[float, bool]] = {
    "sunrise": (-0.833, True), "sunset": (-0.833, False),
    "dawn": (-6.0, True), "dusk": (-6.0, False),
}

#: Below this elevation it is night for the lighting floor (civil twilight has ended).
NIGHT_BELOW_DEG = -6.0


def _solar(t: float) -> tuple[float, float]:
    """``(equation of time in minutes, declination in radians)`` at epoch ``t``."""
    d = datetime.fromtimestamp(t, UTC)
    hour = d.hour + d.minute / 60 + d.second / 3600
    g = 2 * math.pi / 365 * (d.timetuple().tm_yday - 1 + (hour - 12) / 24)
    eqtime = 229.18 * (0.000075 + 0.001868 * math.cos(g) - 0.032077 * math.sin(g)
                       - 0.014615 * math.cos(2 * g) - 0.040849 * math.sin(2 * g))
    decl = (0.006918 - 0.399912 * math.cos(g) + 0.070257 * math.sin(g)
            - 0.006758 * math.cos(2 * g) + 0.000907 * math.sin(2 * g)
            - 0.002697 * math.cos(3 * g) + 0.00148 * math.sin(3 * g))
    return eqtime, decl


def elevation_at(lat: float, lon: float, t: float) -> float:
    """Sun's elevation above the horizon in degrees at epoch ``t`` (negative below it)."""
    eqtime, decl = _solar(t)
    minutes = (t % 86400) / 60
    ha = math.radians((minutes + eqtime + 4 * lon) / 4 - 180)
    phi = math.radians(lat)
    cos_zenith = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(ha)
    return 90 - math.degrees(math.acos(max(-1.0, min(1.0, cos_zenith))))


def solar_elevation(lat: float, lon: float, when: datetime) -> float:
    """Sun's elevation in degrees at ``when`` (an aware datetime)."""
    return elevation_at(lat, lon, when.timestamp())


def local_hour(lon: float, when: datetime) -> float:
    """Mean solar local hour (0–24) at longitude ``lon``: what the dimming model's hour means."""
    t = when.astimezone(UTC)
    return (t.hour + t.minute / 60 + t.second / 3600 + lon / 15) % 24


def solar_noon(lon: float, day_utc: float) -> float:
    """Epoch of solar noon at ``lon`` on the solar day that starts at UTC midnight
    ``day_utc`` (shifted by longitude: the day whose noon is nearest 12:00 local mean time)."""
    noon = day_utc + (720 - 4 * lon) * 60
    for _ in range(2):
        eqtime, _ = _solar(noon)
        noon = day_utc + (720 - 4 * lon - eqtime) * 60
    return noon


def event_time(event: str, lat: float, lon: float, day_utc: float) -> float | None:
    """Epoch of ``event`` (see :data:`EVENTS`) on the solar day of UTC midnight ``day_utc``;
    None when the sun does not cross that elevation that day (polar day or night)."""
    elevation, morning = EVENTS[event]
    noon = solar_noon(lon, day_utc)
    t = noon
    phi = math.radians(lat)
    for _ in range(3):  # refine the declination at the event itself
        _, decl = _solar(t)
        cos_ha = (math.sin(math.radians(elevation)) - math.sin(phi) * math.sin(decl)) \
            / (math.cos(phi) * math.cos(decl))
        if not -1.0 <= cos_ha <= 1.0:
            return None
        ha_s = math.degrees(math.acos(cos_ha)) * 240     # 1° of hour angle = 4 minutes
        t = noon - ha_s if morning else noon + ha_s
    return t
