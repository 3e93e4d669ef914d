"""The sun from latitude, longitude and UTC time (NOAA's simplified algorithm).

Elevation and event times are accurate to a fraction of a degree / about a minute,
enough to tell day, twilight and deep night and to time a schedule's astro steps.
Times are epoch seconds (UTC) so the schedule needs no date library. The computation
lives in :mod:`agent.common.sun`, shared with the lamp node (MicroPython).

Events (elevation of the sun's centre, refraction included for sunrise/sunset):

====================  ===========  ====================================
event                 elevation    meaning
====================  ===========  ====================================
``sunrise/sunset``    -0.833°      upper limb on the horizon
``dawn/dusk``         -6°          civil twilight begins/ends
====================  ===========  ====================================
"""

from __future__ import annotations

from datetime import UTC, datetime

from agent.common.sun import EVENTS, NIGHT_BELOW_DEG, elevation_at, event_time, solar_noon

__all__ = ["EVENTS", "NIGHT_BELOW_DEG", "elevation_at", "event_time", "local_hour",
           "solar_elevation", "solar_noon"]


def solar_elevation(lat: float, lon: float, when: datetime) -> float:
    """Sun's elevation in degrees at ``when`` (an aware datetime)."""
    return elevation_at(lat, lon, when.timestamp())


def local_hour(lon: float, when: datetime) -> float:
    """Mean solar local hour (0–24) at longitude ``lon``: what the dimming model's hour means."""
    t = when.astimezone(UTC)
    return (t.hour + t.minute / 60 + t.second / 3600 + lon / 15) % 24
