"""The pole's provisioning file: typed settings validated with pydantic v2.

One YAML file per pole (see ``config/example-pole.yaml`` for every key with comments),
which may extend a site file with defaults (``extends: site.yaml``, see
:mod:`agent.settings.layers`) and refer to secrets kept apart (``!secret name``,
``${NAME}``, see :mod:`agent.settings.secrets`). Unknown keys are errors; relative paths
are relative to the folder of the file that writes them; ``pkg:models/<file>`` names a
file shipped with polelink (:mod:`agent.settings.paths`).
Values are typed strictly: a boolean is never a number, a quoted ``'1e3'`` is text, not
1000.0 (a whole number is still fine where a decimal is expected), and no number may be
infinite or NaN. Lists have an upper bound and paths that must be files are checked to be
files (not folders).
Load with :func:`load_config`, which raises :class:`agent.settings.yamlfile.ConfigError` whose
problems name the file, line, field path and what would be valid.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic import Strict as StrictMode

from agent.settings.paths import is_pkg_path, resolve_pkg_path
from agent.settings.yamlfile import ConfigError, Problem, Redact, validate_data
from agent.vision.classes import DEFAULT_COUNTED, ROAD_USER_CLASSES, RoadUserClass

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
NAME_HELP = "lower-case letters, digits, '-' and '_', starting with a letter or digit, at most 63"


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, values are not coerced: a
    boolean or a quoted string is never a number (an int is fine for a float), and numbers
    must be finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def _path_text(v: object) -> object:
    """YAML gives paths as text: make it a :class:`Path` (strict mode takes only a Path);
    an empty or blank path is an error (``Path("")`` would silently mean this folder);
    ``pkg:models/<file>`` is the file shipped with polelink."""
    if isinstance(v, str):
        if not v.strip():
            raise ValueError("a path must not be empty")
        return resolve_pkg_path(v) if is_pkg_path(v) else Path(v)
    return v


#: A path given as text in the file (anything but a non-empty string or a Path is refused).
PathText = Annotated[Path, BeforeValidator(_path_text)]


def _file(v: Path, info: ValidationInfo, what: str, hint: str = "") -> Path:
    """``v`` resolved against the config's folder; ValueError unless it is an existing file."""
    p = _resolve(v, info)
    try:
        if p.is_dir():
            raise ValueError(f"{what} {p} is a directory, not a file: name the file in it")
        if not p.is_file():
            raise ValueError(f"{what} {p} does not exist{hint}")
    except OSError as e:
        raise ValueError(f"{what} {p} cannot be checked: {e.strerror}") from None
    return p


def _output(v: Path, info: ValidationInfo, what: str) -> Path:
    """``v`` resolved; ValueError if it is an existing directory (it must name a file)."""
    p = _resolve(v, info)
    try:
        if p.is_dir():
            raise ValueError(f"{what} {p} is a directory, not a file: give a file name")
    except OSError as e:
        raise ValueError(f"{what} {p} cannot be checked: {e.strerror}") from None
    return p


def _serial_port(v: object) -> object:
    if isinstance(v, str) and (not v.strip() or any(c.isspace() for c in v)):
        raise ValueError(f"a serial port must be a device name such as /dev/ttyS0 or "
                         f"/dev/ttyUSB0, without spaces (got {v!r})")
    return v


#: A serial port: a device path (or pyserial URL), never empty.
SerialPort = Annotated[str, Field(max_length=255), BeforeValidator(_serial_port)]


def _unique_items(v: list) -> list:
    """ValueError naming items given more than once (a list is a set of choices)."""
    seen: set = set()
    dup = []
    for x in v:
        if x in seen and x not in dup:
            dup.append(x)
        seen.add(x)
    if dup:
        raise ValueError(f"each item may be given once; repeated: "
                         f"{', '.join(map(repr, dup[:10]))}")
    return v


def _require_unique(what: str, names: list[str], where: str = "") -> None:
    """ValueError naming the duplicated ``what`` names, if any."""
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{what} names must be unique{where}: {', '.join(dup)}")


def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    return path if path.is_absolute() or base is None else (Path(base) / path).resolve()


class DeviceConfig(Strict):
    """Who this pole is: used in logs, aggregates and (later) MQTT topics."""

    id: Annotated[str, Field(pattern=NAME_PATTERN, description="device id, " + NAME_HELP)]
    site: Annotated[str, Field(pattern=NAME_PATTERN, description="site/city code, " + NAME_HELP)]


class SourceBase(Strict):
    """Reconnect behaviour shared by every camera source."""

    reconnect_initial_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    stall_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0

    @model_validator(mode="after")
    def _backoff(self) -> SourceBase:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError(f"@reconnect_max_s: the longest wait ({self.reconnect_max_s:g} s) "
                             f"must not be shorter than reconnect_initial_s "
                             f"({self.reconnect_initial_s:g} s)")
        return self


class FileSource(SourceBase):
    """A video file (the simulator, or recorded footage)."""

    kind: Literal["file"]
    path: PathText
    loop: bool = False
    realtime: bool = False

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path, info: ValidationInfo) -> Path:
        return _file(v, info, "video file")


class StreamSource(SourceBase):
    """A network camera: RTSP or HTTP (MJPEG, HLS...) URL read through OpenCV's FFMPEG."""

    kind: Literal["stream"]
    url: str

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not re.match(r"^(rtsp|rtsps|http|https)://[^\s/]+", v):
            raise ValueError(f"url must start with rtsp://, rtsps://, http:// or https:// "
                             f"followed by a host (got {v!r})")
        return v


class DeviceSource(SourceBase):
    """A local V4L2 camera, by index (``/dev/video<index>``)."""

    kind: Literal["v4l2"]
    index: Annotated[int, Field(ge=0, le=63)]


Source = Annotated[FileSource | StreamSource | DeviceSource, Field(discriminator="kind")]


class DetectorConfig(Strict):
    """Which model runs and how its detections are filtered."""

    model: PathText = Field(description="model card (.yaml) describing the model file")
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.35
    low_confidence: Annotated[float, Field(gt=0, lt=1)] = 0.1
    nms_iou: Annotated[float, Field(gt=0, lt=1)] = 0.5
    merge_iou: Annotated[float, Field(gt=0, le=1)] = 0.8
    classes: list[RoadUserClass] = Field(default_factory=lambda: list(DEFAULT_COUNTED),
                                         min_length=1, max_length=len(ROAD_USER_CLASSES))
    threads: Annotated[int, Field(ge=1, le=8)] = 1
    run_timeout_s: Annotated[float, Field(ge=1, le=30, description=(
        "seconds one inference may take in the model process before it is taken for hung, "
        "killed and restarted"))] = 15.0

    @field_validator("model")
    @classmethod
    def _card_exists(cls, v: Path, info: ValidationInfo) -> Path:
        return _file(v, info, "model card")

    @field_validator("classes")
    @classmethod
    def _classes_once(cls, v: list[str]) -> list[str]:
        return _unique_items(v)

    @model_validator(mode="after")
    def _order(self) -> DetectorConfig:
        if self.low_confidence > self.confidence:
            raise ValueError(f"low_confidence ({self.low_confidence}) must not exceed "
                             f"confidence ({self.confidence})")
        return self


class GatingConfig(Strict):
    """CPU savers: skip the detector when nothing moves; run it at most every ``stride``
    frames where no count is being decided (``schedule: adaptive``), or on exactly every
    ``stride``-th frame (``schedule: fixed``)."""

    motion: bool = True
    motion_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.001
    motion_width: Annotated[int, Field(ge=32, le=640)] = 160
    stride: Annotated[int, Field(ge=1, le=30)] = 1
    schedule: Literal["adaptive", "fixed"] = "adaptive"
    keepalive_s: Annotated[float, Field(ge=0, le=600)] = 2.0


class QualityConfig(Strict):
    """How the counts' quality is judged (``agent.vision.quality``): motion across each
    counting line that no detection or track explains makes them poor, and poor counts
    never drive adaptive dimming (the step's fallback applies)."""

    window_episodes: Annotated[int, Field(ge=2, le=200)] = Field(12, description=(
        "the verdict weighs the last window_episodes motion episodes ..."))
    window_s: Annotated[float, Field(ge=10, le=86400)] = Field(3600.0, description=(
        "... none older than window_s seconds"))
    min_missed: Annotated[int, Field(ge=1, le=100)] = Field(2, description=(
        "unexplained episodes among them that make the counts poor ..."))
    max_missed: Annotated[float, Field(gt=0, le=1)] = Field(0.5, description=(
        "... provided they are at least this share of them"))
    recover_episodes: Annotated[int, Field(ge=1, le=50)] = Field(3, description=(
        "poor counts are trusted again only once this many latest episodes were all "
        "explained"))
    recover_s: Annotated[float, Field(ge=0, le=3600)] = Field(60.0, description=(
        "a blinded picture's counts are trusted again only after this long without one"))
    band: Annotated[float, Field(gt=0, le=0.3)] = Field(0.05, description=(
        "half-width of the band watched around each line, as a share of the frame height"))
    active: Annotated[float, Field(gt=0, le=0.5)] = Field(0.01, description=(
        "share of a band's pixels that must change for it to count as moving"))


class TrackerConfig(Strict):
    """ByteTrack-style association settings."""

    match_iou: Annotated[float, Field(gt=0, lt=1)] = 0.2
    lost_s: Annotated[float, Field(gt=0, le=30)] = 1.0
    min_hits: Annotated[int, Field(ge=1, le=10)] = 2
    class_settle_s: Annotated[float, Field(ge=0, le=10)] = 1.0


#: A point in frame pixels, written as a two-item YAML list ([x, y]); finite numbers only.
Point = Annotated[tuple[float, float], StrictMode(False)]
#: The most corners a zone polygon may have.
MAX_POLYGON_POINTS = 256


class LineConfig(Strict):
    """A counting line: two points in frame pixels, and names for its two directions."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    points: Annotated[tuple[Point, Point], StrictMode(False)]
    directions: dict[str, Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(default_factory=dict,
                                                                              max_length=2)
    anchor: Literal["center", "bottom_center"] = "center"

    @model_validator(mode="after")
    def _geometry(self) -> LineConfig:
        from agent.vision.geometry import image_directions

        (x1, y1), (x2, y2) = self.points
        if (x1, y1) == (x2, y2):
            raise ValueError("the two points of a line must differ")
        allowed = image_directions(self.points)
        bad = sorted(set(self.directions) - set(allowed))
        if bad:
            raise ValueError(f"directions keys must be {allowed[0]!r} and/or {allowed[1]!r} for "
                             f"this line (it is crossed {allowed[0]}/{allowed[1]} in the image); "
                             f"got {', '.join(map(repr, bad))}")
        names = list(self.directions.values())
        if len(names) == 2 and names[0] == names[1]:
            raise ValueError(f"@directions: both directions are called {names[0]!r}: give "
                             f"each direction its own name, or leave one out")
        return self


def _segments_cross(a: Point, b: Point, c: Point, d: Point) -> bool:
    """Whether segments ab and cd touch or cross (collinear overlaps included)."""
    def orient(p: Point, q: Point, r: Point) -> float:
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    def on(p: Point, q: Point, r: Point) -> bool:  # r on segment pq, given collinear
        return min(p[0], q[0]) <= r[0] <= max(p[0], q[0]) and \
            min(p[1], q[1]) <= r[1] <= max(p[1], q[1])

    o1, o2, o3, o4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
    if ((o1 > 0 > o2) or (o1 < 0 < o2)) and ((o3 > 0 > o4) or (o3 < 0 < o4)):
        return True
    return (o1 == 0 and on(a, b, c)) or (o2 == 0 and on(a, b, d)) \
        or (o3 == 0 and on(c, d, a)) or (o4 == 0 and on(c, d, b))


class ZoneConfig(Strict):
    """A polygon in frame pixels: distinct road users seen inside it are counted by class."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    polygon: Annotated[list[Point], Field(min_length=3, max_length=MAX_POLYGON_POINTS)]

    @field_validator("polygon")
    @classmethod
    def _simple(cls, v: list[Point]) -> list[Point]:
        n = len(v)
        for i in range(n):
            if v[i] == v[(i + 1) % n]:
                raise ValueError(f"corners {i} and {(i + 1) % n} are the same point "
                                 f"{list(v[i])}: give each corner once")
        for i in range(n):
            for j in range(i + 1, n):
                if j == i + 1 or (i == 0 and j == n - 1):
                    continue  # neighbouring edges share a corner
                if _segments_cross(v[i], v[(i + 1) % n], v[j], v[(j + 1) % n]):
                    raise ValueError(
                        f"the polygon crosses itself: edge {i}-{(i + 1) % n} meets edge "
                        f"{j}-{(j + 1) % n}; list the corners in order around the zone")
        area2 = sum(v[i][0] * v[(i + 1) % n][1] - v[(i + 1) % n][0] * v[i][1] for i in range(n))
        if abs(area2) < 1e-9:
            raise ValueError("the polygon has no area (its corners lie on one line)")
        return v


class CameraConfig(Strict):
    """One camera and everything that turns its frames into counts."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    source: Source
    fps_limit: Annotated[float, Field(gt=0, le=60)] | None = None
    detector: DetectorConfig
    gating: GatingConfig = GatingConfig()
    tracker: TrackerConfig = TrackerConfig()
    quality: QualityConfig = QualityConfig()
    lines: list[LineConfig] = Field(default_factory=list, max_length=32)
    zones: list[ZoneConfig] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _unique(self) -> CameraConfig:
        for what, items in (("line", self.lines), ("zone", self.zones)):
            _require_unique(what, [i.name for i in items], " within a camera")
        if not self.lines and not self.zones:
            raise ValueError("a camera needs at least one counting line or zone")
        return self


class AggregatesConfig(Strict):
    """Fixed reporting intervals, aligned to the wall clock."""

    interval_s: Annotated[int, Field(ge=10, le=3600)] = 60
    path: PathText = Field(default=Path("var/aggregates.jsonl"), validate_default=True)

    @field_validator("interval_s")
    @classmethod
    def _divides_day(cls, v: int) -> int:
        if 86400 % v:
            raise ValueError(f"interval_s must divide a day evenly so intervals align to the "
                             f"clock (e.g. 10, 15, 30, 60, 300, 900, 3600); got {v}")
        return v

    @field_validator("path")
    @classmethod
    def _rel(cls, v: Path, info: ValidationInfo) -> Path:
        return _output(v, info, "aggregates file")


class ModbusRegisters(Strict):
    """Where a Modbus dimmer keeps its values (see drivers/modbus.py)."""

    level_register: Annotated[int, Field(ge=0, le=65535)] = 0
    level_scale: Annotated[int, Field(ge=1, le=65535)] = 1000
    onoff_coil: Annotated[int, Field(ge=0, le=65535)] | None = 0
    power_register: Annotated[int, Field(ge=0, le=65535)] | None = 0
    power_scale_w: Annotated[float, Field(gt=0)] = 0.1
    energy_register: Annotated[int, Field(ge=0, le=65534)] | None = 1
    energy_scale_wh: Annotated[float, Field(gt=0)] = 1.0
    status_register: Annotated[int, Field(ge=0, le=65535)] | None = None
    lamp_failure_bit: Annotated[int, Field(ge=0, le=15)] = 0
    failsafe_level_register: Annotated[int, Field(ge=0, le=65535)] | None = None
    power_on_level_register: Annotated[int, Field(ge=0, le=65535)] | None = None


class DaliBusConfig(Strict):
    """A DALI bus behind a serial gateway."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    kind: Literal["dali"]
    port: SerialPort = "/dev/ttyS0"
    codec: Literal["hat", "foxtron"] = "hat"
    parity: Literal["N", "E", "O"] = "N"
    timeout_s: Annotated[float, Field(gt=0, le=5)] = 0.2
    retries: Annotated[int, Field(ge=0, le=10)] = 3


class ModbusBusConfig(Strict):
    """A Modbus RTU lighting controller on RS-485."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    kind: Literal["modbus"]
    port: SerialPort = "/dev/ttyUSB0"
    baudrate: Literal[9600, 19200, 38400, 57600, 115200] = 19200
    unit: Annotated[int, Field(ge=1, le=247)] = 1
    timeout_s: Annotated[float, Field(gt=0, le=5)] = 0.3
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    registers: ModbusRegisters = ModbusRegisters()


LightingBusConfig = Annotated[DaliBusConfig | ModbusBusConfig, Field(discriminator="kind")]


class LuminaireGroupConfig(Strict):
    """Luminaires dimmed together, and the limits of their dimming."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    bus: Annotated[str, Field(min_length=1, max_length=63)]
    address: Annotated[str, Field(max_length=32)] = "broadcast"
    design_class: Literal["M1", "M2", "M3", "M4", "M5", "M6"] = "M3"
    design_peak_vph: Annotated[float, Field(gt=0, le=20000)] = 1200.0
    cameras: list[str] = Field(default_factory=list, max_length=16)
    luminaires: Annotated[int, Field(ge=1, le=64)] = 1
    rated_power_w: Annotated[float, Field(gt=0, le=2000)] = 100.0
    floor_pct: Annotated[float, Field(gt=0, le=100)] | None = None
    ceiling_pct: Annotated[float, Field(gt=0, le=100)] = 100.0
    safe_pct: Annotated[float, Field(gt=0, le=100)] = 100.0
    ramp_down_pct_per_min: Annotated[float, Field(gt=0, le=100)] = 10.0
    ramp_up_pct_per_min: Annotated[float, Field(gt=0, le=1000)] = 100.0
    program: Annotated[str, Field(pattern=NAME_PATTERN)] | None = None

    @property
    def class_number(self) -> int:
        """The design class as a number (M3 → 3)."""
        return int(self.design_class[1])

    @property
    def floor(self) -> float:
        """The effective floor: ``floor_pct``, or the class's deepest adaptive step."""
        from agent.lighting.rule import DEFAULT_FLOOR_PCT

        return self.floor_pct if self.floor_pct is not None \
            else DEFAULT_FLOOR_PCT[self.class_number]

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        from drivers.dali.ops import parse_address

        parse_address(v)
        return v

    @field_validator("cameras")
    @classmethod
    def _cameras_once(cls, v: list[str]) -> list[str]:
        return _unique_items(v)

    @model_validator(mode="after")
    def _limits(self) -> LuminaireGroupConfig:
        from agent.lighting.rule import DEFAULT_FLOOR_PCT, MAX_STEPS

        lowest = DEFAULT_FLOOR_PCT[self.class_number]
        if self.floor_pct is not None and self.floor_pct < lowest:
            raise ValueError(f"@floor_pct: {self.floor_pct:g} % is darker than any level the "
                             f"adaptive rule allows for {self.design_class} ({MAX_STEPS} "
                             f"classes down = {lowest:g} %); use at least {lowest:g}")
        if self.floor > self.ceiling_pct:
            where = "floor_pct" if self.floor_pct is not None else "ceiling_pct"
            raise ValueError(f"@{where}: ceiling_pct ({self.ceiling_pct:g} %) is below the floor "
                             f"({self.floor:g} %"
                             + ("" if self.floor_pct is not None else
                                f", the class floor of {self.design_class}") + ")")
        if self.safe_pct < self.floor:
            raise ValueError(f"@safe_pct: the safe level ({self.safe_pct:g} %) must not be "
                             f"below the class floor ({self.floor:g} % for "
                             f"{self.design_class}): the fail-safe would under-light the road")
        return self


WEEKDAY_NAMES = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ASTRO_EVENTS = ("sunrise", "sunset", "dawn", "dusk")


class AdaptiveConfig(Strict):
    """Traffic-adaptive dimming between ``min`` and ``max`` percent."""

    min: Annotated[float, Field(ge=0, le=100)] = 0.0
    max: Annotated[float, Field(gt=0, le=100)] = 100.0
    fallback: Annotated[float, Field(gt=0, le=100)] | None = None

    @model_validator(mode="after")
    def _order(self) -> AdaptiveConfig:
        if self.min > self.max:
            raise ValueError(f"@min: min ({self.min:g}) must not exceed max ({self.max:g})")
        if self.fallback is not None and not self.min <= self.fallback <= self.max:
            raise ValueError(f"@fallback: the level without trustworthy traffic "
                             f"({self.fallback:g}) must lie between min ({self.min:g}) and "
                             f"max ({self.max:g}): losing the camera must not darken the road")
        return self


class StepConfig(Strict):
    """A control-program step (TALQ FixedTimeStep or AstroClockStep)."""

    at: str | int = Field(description="'HH:MM' local time, or sunset, sunrise, dusk, dawn")
    offset_min: Annotated[float, Field(ge=-720, le=720)] = 0.0
    level: Annotated[float, Field(ge=0, le=100)] | None = None
    adaptive: AdaptiveConfig | None = None

    @field_validator("at", mode="before")
    @classmethod
    def _at(cls, v: object) -> str:
        from agent.lighting.schedule import parse_time_of_day

        if isinstance(v, str) and v.strip().lower() in ASTRO_EVENTS:
            return v.strip().lower()
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise ValueError(f"expected a time 'HH:MM' (quoted) or one of "
                             f"{', '.join(ASTRO_EVENTS)}; got {v!r}")
        if isinstance(v, int) and not 60 <= v < 24 * 60:
            # YAML reads an unquoted 22:00 as 1320 (minutes); 5 or 79200 (22:00:00) are not
            # times anyone meant: ask for quotes
            raise ValueError(f"got the number {v}: write the time quoted, e.g. at: \"05:00\" "
                             f"(YAML reads unquoted times with colons as numbers)")
        return parse_time_of_day(v)

    @model_validator(mode="after")
    def _one(self) -> StepConfig:
        if (self.level is None) == (self.adaptive is None):
            raise ValueError("a step needs exactly one of 'level' (percent, 0 = off) or "
                             "'adaptive' ({min, max, fallback})")
        return self


class CalendarRuleConfig(Strict):
    """Which days a program runs (TALQ Calendar); the first matching rule wins."""

    program: Annotated[str, Field(pattern=NAME_PATTERN)]
    dates: list[str | date] = Field(default_factory=list, max_length=366)
    weekdays: list[WEEKDAY_NAMES] = Field(default_factory=list, max_length=7)
    months: list[Annotated[int, Field(ge=1, le=12)]] = Field(default_factory=list, max_length=12)

    @field_validator("dates", "weekdays", "months")
    @classmethod
    def _once(cls, v: list) -> list:
        return _unique_items(v)

    @field_validator("dates")
    @classmethod
    def _dates(cls, v: list[str | date]) -> list[str | date]:
        from agent.lighting.schedule import calendar_date

        bad = []
        for d in v:
            try:
                calendar_date(d)
            except ValueError:
                bad.append(repr(d))
        if bad:
            raise ValueError(f"dates must be 'MM-DD' (every year) or 'YYYY-MM-DD' and exist; "
                             f"not: {', '.join(bad)}")
        return v


class GnssClockConfig(Strict):
    """A GNSS receiver's NMEA output on a serial port."""

    port: SerialPort
    baudrate: Literal[4800, 9600, 19200, 38400, 57600, 115200] = 9600
    tolerance_s: Annotated[float, Field(gt=0, le=60)] = 2.0


class RtcClockConfig(Strict):
    """A battery-backed RTC, read through sysfs."""

    path: PathText = Path("/sys/class/rtc/rtc0/since_epoch")
    tolerance_s: Annotated[float, Field(gt=0, le=600)] = 5.0

    @field_validator("path")
    @classmethod
    def _not_dir(cls, v: Path, info: ValidationInfo) -> Path:
        # not required to exist: the file is checked on the pole, where the RTC is
        _output(v, info, "RTC file")
        return v


class ClockConfig(Strict):
    """Which time sources may vouch for the wall clock (see agent/lighting/clocktrust.py)."""

    sources: Annotated[list[Literal["kernel", "gnss", "rtc", "assume_synced"]],
                       Field(min_length=1)] = Field(default_factory=lambda: ["kernel"])
    max_error_s: Annotated[float, Field(gt=0, le=60)] = 5.0
    max_jump_s: Annotated[float, Field(gt=0, le=86400)] = 120.0
    kernel_rejoin_s: Annotated[float, Field(ge=0, le=86400)] = 3600.0
    gnss: GnssClockConfig | None = None
    rtc: RtcClockConfig | None = None

    @model_validator(mode="after")
    def _sources(self) -> ClockConfig:
        _require_unique("source", list(self.sources))
        if "gnss" in self.sources and self.gnss is None:
            raise ValueError("@sources: 'gnss' needs a gnss section ({port: /dev/ttyAMA0})")
        return self


class AmbientConfig(Strict):
    """An ambient-light reading in a file (lux), rewritten by a sensor daemon."""

    kind: Literal["file"] = "file"
    path: PathText = Path("/run/polelink/lux")
    dark_below_lux: Annotated[float, Field(gt=0, le=10000)] = 50.0
    max_age_s: Annotated[float, Field(gt=0, le=86400)] = 120.0

    @field_validator("path")
    @classmethod
    def _not_dir(cls, v: Path, info: ValidationInfo) -> Path:
        # not required to exist: the sensor daemon writes it once the pole runs
        _output(v, info, "ambient-light file")
        return v


class LightingConfig(Strict):
    """The pole's luminaires, buses, schedules and dimming."""

    latitude: Annotated[float, Field(ge=-90, le=90)]
    longitude: Annotated[float, Field(ge=-180, le=180)]
    timezone: str | None = None
    model: PathText = Field(default="pkg:models/dimming.md",  # type: ignore[assignment]
                            validate_default=True,
                            description="dimming model card (default: the one shipped with "
                                        "polelink)")
    camera_stale_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    traffic_window_s: Annotated[float, Field(ge=60, le=86400)] = 3600.0
    traffic_min_coverage_s: Annotated[float, Field(ge=0, le=86400)] = 600.0
    tick_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    refresh_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    status_period_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    energy_period_s: Annotated[float, Field(gt=0, le=86400)] = 300.0
    diagnostics_period_s: Annotated[float, Field(gt=0, le=86400)] = 3600.0
    fade_s: Annotated[float, Field(ge=0, le=90)] = 2.0
    configure_gear: bool = True
    overrides_path: PathText = Field(default=Path("var/overrides.json"), validate_default=True)
    ambient: AmbientConfig | None = None
    buses: Annotated[list[LightingBusConfig], Field(min_length=1, max_length=16)]
    groups: Annotated[list[LuminaireGroupConfig], Field(min_length=1, max_length=64)]
    programs: dict[Annotated[str, Field(pattern=NAME_PATTERN)],
                   Annotated[list[StepConfig], Field(min_length=1, max_length=48)]] = Field(
        default_factory=dict, max_length=32)
    calendar: list[CalendarRuleConfig] = Field(default_factory=list, max_length=400)

    @field_validator("model")
    @classmethod
    def _model(cls, v: Path, info: ValidationInfo) -> Path:
        return _file(v, info, "dimming model card")

    @field_validator("overrides_path")
    @classmethod
    def _rel(cls, v: Path, info: ValidationInfo) -> Path:
        return _output(v, info, "overrides file")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # "Asia" is a folder: OSError
            import difflib

            hint = difflib.get_close_matches(v, sorted(available_timezones()), n=1)
            raise ValueError(f"unknown time zone {v!r}: use an IANA name such as "
                             f"Asia/Ho_Chi_Minh" + (f" (did you mean {hint[0]!r}?)"
                                                     if hint else "")) from None
        return v

    @model_validator(mode="after")
    def _refs(self) -> LightingConfig:
        if self.traffic_min_coverage_s > self.traffic_window_s:
            raise ValueError(f"@traffic_min_coverage_s: {self.traffic_min_coverage_s:g} s of "
                             f"coverage can never be reached in a window of "
                             f"{self.traffic_window_s:g} s (traffic_window_s); use at most that")
        _require_unique("bus", [b.name for b in self.buses])
        _require_unique("group", [g.name for g in self.groups])
        buses = {b.name: b for b in self.buses}
        used: dict[str, str] = {}
        for i, g in enumerate(self.groups):
            if g.bus not in buses:
                raise ValueError(f"@groups[{i}].bus: bus {g.bus!r} is not defined; buses: "
                                 f"{', '.join(buses)}")
            if buses[g.bus].kind == "modbus" and g.bus in used:
                raise ValueError(f"@groups[{i}].bus: modbus bus {g.bus!r} drives one controller "
                                 f"output and already belongs to group {used[g.bus]!r}")
            used[g.bus] = g.name
            if g.program is not None and g.program not in self.programs:
                raise ValueError(f"@groups[{i}].program: no program {g.program!r}; programs: "
                                 f"{', '.join(self.programs) or 'none'}")
        for i, rule in enumerate(self.calendar):
            if rule.program not in self.programs:
                raise ValueError(f"@calendar[{i}].program: no program {rule.program!r}; "
                                 f"programs: {', '.join(self.programs) or 'none'}")
        if self.programs and not self.calendar and len(self.programs) > 1 \
                and any(g.program is None for g in self.groups):
            raise ValueError("@calendar: with several programs, a calendar must say which "
                             "runs when (the last rule, with no dates, is the default)")
        for name, steps in self.programs.items():
            seen: dict[object, int] = {}
            for k, st in enumerate(steps):
                if st.at in ASTRO_EVENTS:
                    key: object = (st.at, st.offset_min)
                else:                            # 21:00 + 60 min is 22:00
                    hh, mm = (int(x) for x in st.at.split(":"))
                    key = round(hh * 60 + mm + st.offset_min) % 1440
                if key in seen:
                    raise ValueError(f"@programs.{name}[{k}].at: starts at the same time as "
                                     f"step {seen[key]} of program {name!r}")
                seen[key] = k
                if st.at not in ASTRO_EVENTS and self.timezone is None:
                    raise ValueError(f"@programs.{name}[{k}].at: a fixed-time step "
                                     f"({st.at}) needs lighting.timezone (e.g. Asia/Ho_Chi_Minh)")
                for g in self.groups:
                    if st.level is not None and 0 < st.level < g.floor:
                        raise ValueError(
                            f"@programs.{name}[{k}].level: {st.level:g} % is below the class "
                            f"floor of group {g.name!r} ({g.floor:g} %, {g.design_class}); it "
                            f"would be raised to the floor at night: use 0 (off) or at least "
                            f"{g.floor:g}")
                    if st.adaptive is not None and st.adaptive.min > g.ceiling_pct:
                        raise ValueError(
                            f"@programs.{name}[{k}].adaptive.min: {st.adaptive.min:g} % is "
                            f"above the ceiling of group {g.name!r} ({g.ceiling_pct:g} %): "
                            f"use at most {g.ceiling_pct:g}, or raise the group's ceiling_pct")
                    if st.adaptive is not None and st.adaptive.max < g.floor:
                        raise ValueError(
                            f"@programs.{name}[{k}].adaptive.max: {st.adaptive.max:g} % is "
                            f"below the class floor of group {g.name!r} ({g.floor:g} %)")
                    fb = st.adaptive.fallback if st.adaptive is not None else None
                    if fb is not None and fb < g.floor:
                        raise ValueError(
                            f"@programs.{name}[{k}].adaptive.fallback: {fb:g} % is below the "
                            f"class floor of group {g.name!r} ({g.floor:g} %): losing the "
                            f"camera must not darken the road")
        return self


_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def _hostname(v: str) -> str:
    """``v`` if it is a host name or an IP address literal; ValueError saying so otherwise."""
    want = "a host name (broker.example.net) or an IP address (192.0.2.1, 2001:db8::1)"
    if "://" in v or v.startswith("[") or "/" in v:
        raise ValueError(f"host must be {want}, without a scheme, brackets or path; "
                         f"put the port in 'port' (got {v!r})")
    try:
        ipaddress.ip_address(v)
        return v
    except ValueError:
        pass
    name = v[:-1] if v.endswith(".") else v
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.match(x) for x in labels) \
            or labels[-1].isdigit():
        raise ValueError(f"host must be {want} (got {v!r})")
    return v


class MqttTls(Strict):
    """TLS to the broker: the CA that signs it; our certificate and key for mutual TLS."""

    ca: PathText
    cert: PathText | None = None
    key: PathText | None = None

    @field_validator("ca", "cert", "key")
    @classmethod
    def _exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else _file(v, info, "file")


class CommandsConfig(Strict):
    """How platform commands are checked before anything runs (see docs/platform/index.md)."""

    verify_key: Path | None = Field(None, description=(
        "Ed25519 public key (PEM file) of the site's command signer; when set, every "
        "command must carry a valid signature"))
    max_ttl_s: Annotated[int, Field(strict=True, ge=10, le=7 * 86400)] = 86400
    replay_path: Path | None = Field(None, description=(
        "where executed correlation ids are remembered (default: commands.db beside the outbox)"))
    overrides_per_minute: Annotated[int, Field(strict=True, ge=1, le=600)] = 12
    in_flight: Annotated[int, Field(strict=True, ge=1, le=1000)] = Field(20, description=(
        "commands the broker may send this pole before it has answered them (MQTT 5 "
        "Receive Maximum; a command is acknowledged to the broker once answered): the "
        "broker holds the rest of a burst. Beyond this many waiting in the pole (a busy "
        "main loop), a command is answered busy with a retry-after"))

    @field_validator("verify_key", "replay_path", mode="before")
    @classmethod
    def _path_text(cls, v: object) -> object:
        return _path_text(v)

    @field_validator("replay_path")
    @classmethod
    def _rel(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else _output(v, info, "replay file")

    @field_validator("verify_key")
    @classmethod
    def _key_exists(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else _file(v, info, "file",
                                            " (an Ed25519 public key in PEM)")


class MqttConfig(Strict):
    """The city uplink. Credentials are never written in this file: ``password`` is a
    reference (``!secret mqtt_password`` or ``${NAME}``) resolved from the secrets file or
    the environment; without ``password``, they come from the environment
    (POLELINK_MQTT_USERNAME / POLELINK_MQTT_PASSWORD) or the older ``secrets_file``."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    prefix: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_/-]{0,62}$")] = "polelink"
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    reconnect_min_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    reconnect_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    tls: MqttTls | None = None
    username: Annotated[str, Field(min_length=1, max_length=255)] | None = Field(
        None, description="the broker account (may be a reference like the password)")
    password: SecretStr | None = Field(
        None, json_schema_extra={"secret": True},
        description="the broker password: a reference only (!secret NAME or ${NAME}); "
                    "written inline it is an error")
    secrets_file: Path | None = None
    outbox_path: Path = Field(default=Path("var/outbox.db"), validate_default=True)
    outbox_max_messages: Annotated[int, Field(ge=10, le=10_000_000)] = Field(
        100_000, description="the outbox's cap: beyond it the oldest messages are dropped, "
        "with an outbox_overflow alarm (values below about a day of messages are for tests)")
    primary_host: Annotated[str, Field(pattern=NAME_PATTERN)] | None = Field(None, description=(
        "the platform's host id: data is held in the outbox until the retained "
        "<prefix>/STATE/<primary_host> says the platform is online (Sparkplug-style)"))
    session_expiry_s: Annotated[int, Field(strict=True, ge=0, le=7 * 86400)] = 3600
    ack_window: Annotated[int, Field(ge=1, le=10_000)] = Field(200, description=(
        "with a platform that acknowledges what it stores: at most this many messages sent "
        "and not yet acknowledged (flow control; keep it below the broker's per-client "
        "queue limit)"))
    ack_timeout_s: Annotated[float, Field(ge=1, le=3600)] = Field(30.0, description=(
        "then the unacknowledged messages are sent again (same msg_id); the wait doubles "
        "up to 10x while nothing is acknowledged"))
    takeover_wait_max_s: Annotated[float, Field(ge=1, le=3600)] = Field(60.0, description=(
        "when another client takes this pole's session over (MQTT 5 reason 0x8E: two poles "
        "with one device id), reconnects wait 2, 4, 8, 16 s, then this long (each at most "
        "this long)"))
    state_future_s: Annotated[float, Field(ge=10, le=7 * 86400)] = Field(300.0, description=(
        "a platform STATE whose timestamp is further ahead of this pole's clock is suspect "
        "(forged, or this pole's clock is behind): its timestamp is not remembered, and it "
        "cannot stop sending (offline is ignored); one less far ahead is remembered as of "
        "this pole's clock"))
    commands: CommandsConfig = Field(default_factory=CommandsConfig)

    @field_validator("outbox_path", "secrets_file", mode="before")
    @classmethod
    def _path_text(cls, v: object) -> object:
        return _path_text(v)

    @field_validator("outbox_path")
    @classmethod
    def _rel(cls, v: Path, info: ValidationInfo) -> Path:
        return _output(v, info, "outbox file")

    @field_validator("secrets_file")
    @classmethod
    def _secrets(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        return None if v is None else _file(v, info, "secrets file",
                                            " (YAML with username: and password:)")

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return _hostname(v)

    @field_validator("prefix")
    @classmethod
    def _levels(cls, v: str) -> str:
        if v.endswith("/") or "//" in v:
            raise ValueError(f"prefix {v!r} has an empty topic level: use '/' only between "
                             f"names, e.g. 'polelink' or 'city/polelink'")
        return v

    @model_validator(mode="after")
    def _backoff(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(f"@reconnect_max_s: the longest wait ({self.reconnect_max_s:g} s) "
                             f"must not be shorter than reconnect_min_s "
                             f"({self.reconnect_min_s:g} s)")
        return self


class UpdateConfig(Strict):
    """Remote updates (the ``update`` command) and their rollback; see
    docs/technicians/updates.md."""

    root: Path = Field(Path("/var/lib/polelink"), description=(
        "the releases' root: releases/<version>, the current and previous links, update/ "
        "state; $POLELINK_ROOT when set overrides it"))
    verify_key: Path = Field(description=(
        "Ed25519 public key (PEM) of the bundle signer; a bundle whose manifest it does not "
        "verify is refused"))
    url_hosts: Annotated[list[str], Field(max_length=16)] | None = Field(None, description=(
        "hosts a bundle URL may name (http/https); default: the MQTT broker's host"))
    health_deadline_s: Annotated[int, Field(strict=True, ge=10, le=86400)] = 600
    max_trial_starts: Annotated[int, Field(strict=True, ge=1, le=10)] = 3
    free_margin_mb: Annotated[int, Field(strict=True, ge=0, le=1_000_000)] = 200
    max_bundle_mb: Annotated[int, Field(strict=True, ge=1, le=100_000)] = 1024
    download_timeout_s: Annotated[int, Field(strict=True, ge=5, le=3600)] = 300
    install_timeout_s: Annotated[int, Field(strict=True, ge=10, le=7200)] = 900
    site_packages_from: Path | None = Field(None, description=(
        "development and tests only: a site-packages folder every new release's venv also "
        "sees, so a bundle needs only the agent's wheel; never on a pole"))

    @field_validator("root", "verify_key", "site_packages_from", mode="before")
    @classmethod
    def _path_text(cls, v: object) -> object:
        return _path_text(v)

    @field_validator("root")
    @classmethod
    def _root(cls, v: Path, info: ValidationInfo) -> Path:
        env = os.environ.get("POLELINK_ROOT")
        p = Path(env) if env else _resolve(v, info)
        if p.exists() and not p.is_dir():
            raise ValueError(f"update root {p} is not a folder")
        return p

    @field_validator("verify_key")
    @classmethod
    def _key_exists(cls, v: Path, info: ValidationInfo) -> Path:
        return _file(v, info, "file", " (an Ed25519 public key in PEM)")

    @field_validator("site_packages_from")
    @classmethod
    def _dir(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is None:
            return None
        p = _resolve(v, info)
        if not p.is_dir():
            raise ValueError(f"site_packages_from {p} is not a folder")
        return p

    @field_validator("url_hosts")
    @classmethod
    def _hosts(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            for h in v:
                _hostname(h)
            _require_unique("url host", v)
        return v


class AgentConfig(Strict):
    """The whole provisioning file."""

    device: DeviceConfig
    cameras: Annotated[list[CameraConfig], Field(max_length=16)]
    aggregates: AggregatesConfig = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    clock: ClockConfig = Field(default_factory=ClockConfig)
    lighting: LightingConfig | None = None
    mqtt: MqttConfig | None = None
    update: UpdateConfig | None = None
    extends: str | None = Field(None, description=(
        "the site file this pole file builds on, relative to this file (see "
        "docs/field-crews/index.md); read by the loader, None once loaded"))
    secrets: PathText | None = Field(None, description=(
        "the secrets file for !secret and ${NAME} references, relative to the file that "
        "names it (default: secrets.yaml beside the pole file)"))

    @model_validator(mode="after")
    def _unique_cameras(self) -> AgentConfig:
        names = [c.name for c in self.cameras]
        _require_unique("camera", names)
        if not names and not self.lighting:
            raise ValueError("@cameras: a pole needs a camera to count or a lighting section "
                             "to drive lamps (a lighting-only pole: cameras: [] and lighting:)")
        if not self.lighting:
            return self
        for i, g in enumerate(self.lighting.groups):
            bad = [c for c in g.cameras if c not in names]
            if bad:
                raise ValueError(f"@lighting.groups[{i}].cameras: group {g.name!r} names "
                                 f"unknown camera(s) {', '.join(bad)}; cameras: "
                                 f"{', '.join(names) or 'none (cameras: [])'}")
        if not names:                   # a lighting-only pole: no traffic to adapt to
            for name, steps in self.lighting.programs.items():
                for k, st in enumerate(steps):
                    if st.adaptive is not None:
                        raise ValueError(
                            f"@lighting.programs.{name}[{k}].adaptive: adaptive dimming needs "
                            f"traffic from a camera and this pole has none (cameras: []): "
                            f"give the step a fixed level instead")
        return self

    def camera(self, name: str) -> CameraConfig:
        """The camera called ``name`` (KeyError listing the configured names otherwise)."""
        for c in self.cameras:
            if c.name == name:
                return c
        raise KeyError(f"no camera {name!r}; configured: {', '.join(c.name for c in self.cameras)}")


@dataclass
class LoadedConfig:
    """A loaded provisioning file and what loading it found besides errors."""

    config: AgentConfig
    files: list[Path]                          # the pole file, then each file it extends
    secrets_file: Path | None = None           # the secrets file read, if any
    warnings: list[Problem] = field(default_factory=list)


def load_config_report(path: Path, secrets: Path | None = None,
                       secrets_mode: str = "refuse") -> LoadedConfig:
    """Load a pole file with the files it extends and the secrets it refers to, and
    validate it; raises ``ConfigError`` listing every located problem (each in the file that
    holds the value). ``secrets`` is the ``--secrets`` file; ``secrets_mode`` is ``refuse``
    (a secrets file others may read is an error) or ``warn`` (a warning)."""
    from agent.settings.layers import load_chain, rebase_paths
    from agent.settings.secrets import inline_secrets, resolve_references

    path = Path(path)
    layered = load_chain(path)
    rebase_paths(layered, AgentConfig)
    inline, hidden = inline_secrets(layered, AgentConfig)
    problems, resolved = resolve_references(layered, secrets, secrets_mode != "warn")
    redact = Redact(frozenset(hidden | resolved.locs), tuple(resolved.values))
    problems = inline + problems
    if isinstance(layered.data, dict):
        layered.data.pop("extends", None)
    try:
        cfg = validate_data(layered.data, AgentConfig, layered.marks, layered.key_marks,
                            str(path), context={"base_dir": path.resolve().parent},
                            files=layered.files, redact=redact)
    except ConfigError as e:
        # a reference that failed or a secret written inline is reported once, not again
        # as a wrong type at the same place
        said = {(p.file, p.line, p.field) for p in problems}
        problems += [p for p in e.problems if (p.file, p.line, p.field) not in said]
    if problems:
        raise ConfigError(_in_order(problems, str(path)))
    return LoadedConfig(cfg, layered.chain, resolved.secrets_file, resolved.warnings)


def _in_order(problems: list[Problem], root: str) -> list[Problem]:
    """The pole file's problems first, each file's in line order; one line per problem."""
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.file != root, p.file, p.line, p.column))


def load_config(path: Path, secrets: Path | None = None) -> AgentConfig:
    """Load and validate a provisioning file (raises ``ConfigError`` with located problems);
    see :func:`load_config_report`."""
    return load_config_report(path, secrets).config
