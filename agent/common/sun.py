"""The sun from latitude, longitude and UTC epoch seconds (NOAA's simplified algorithm).

Shared by ``agent.lighting.astro`` and the lamp node; pure ``math``, no ``datetime``.
"""

import math

#: Elevation of each named event, and whether it happens in the morning.
EVENTS = {
    "sunrise": (-0.833, True), "sunset": (-0.833, False),
    "dawn": (-6.0, True), "dusk": (-6.0, False),
}

#: Below this elevation it is night for the lighting floor (civil twilight has ended).
NIGHT_BELOW_DEG = -6.0


def civil(days):
    """``(year, month, day)`` of ``days`` since 1970-01-01 (proleptic Gregorian)."""
    z = days + 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if m <= 2 else 0), m, d


def day_of_year(t):
    """Day of the year (1 = 1 January) of UTC epoch ``t``."""
    days = int(t // 86400)
    y, m, d = civil(days)
    leap = y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)
    before = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)[m - 1]
    return before + d + (1 if leap and m > 2 else 0)


def solar(t):
    """``(equation of time in minutes, declination in radians)`` at epoch ``t``."""
    t = float(t)
    sec = int(t // 1) % 86400
    hour = sec / 3600
    g = 2 * math.pi / 365 * (day_of_year(t) - 1 + (hour - 12) / 24)
    eqtime = 229.18 * (0.000075 + 0.001868 * math.cos(g) - 0.032077 * math.sin(g)
                       - 0.014615 * math.cos(2 * g) - 0.040849 * math.sin(2 * g))
    decl = (0.006918 - 0.399912 * math.cos(g) + 0.070257 * math.sin(g)
            - 0.006758 * math.cos(2 * g) + 0.000907 * math.sin(2 * g)
            - 0.002697 * math.cos(3 * g) + 0.00148 * math.sin(3 * g))
    return eqtime, decl


def elevation_at(lat, lon, t):
    """Sun's elevation above the horizon in degrees at epoch ``t`` (negative below it)."""
    eqtime, decl = solar(t)
    minutes = (t % 86400) / 60
    ha = math.radians((minutes + eqtime + 4 * lon) / 4 - 180)
    phi = math.radians(lat)
    cos_zenith = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(ha)
    return 90 - math.degrees(math.acos(max(-1.0, min(1.0, cos_zenith))))


def solar_noon(lon, day_utc):
    """Epoch of solar noon at ``lon`` on the solar day that starts at UTC midnight ``day_utc``."""
    noon = day_utc + (720 - 4 * lon) * 60
    for _ in range(2):
        eqtime, _ = solar(noon)
        noon = day_utc + (720 - 4 * lon - eqtime) * 60
    return noon


def event_time(event, lat, lon, day_utc):
    """Epoch of ``event`` (see :data:`EVENTS`) on the solar day of UTC midnight ``day_utc``;
    None when the sun does not cross that elevation that day (polar day or night)."""
    elevation, morning = EVENTS[event]
    noon = solar_noon(lon, day_utc)
    t = noon
    phi = math.radians(lat)
    for _ in range(3):  # refine the declination at the event itself
        _, decl = solar(t)
        cos_ha = (math.sin(math.radians(elevation)) - math.sin(phi) * math.sin(decl)) \
            / (math.cos(phi) * math.cos(decl))
        if not -1.0 <= cos_ha <= 1.0:
            return None
        ha_s = math.degrees(math.acos(cos_ha)) * 240     # 1° of hour angle = 4 minutes
        t = noon - ha_s if morning else noon + ha_s
    return t
