"""``agent validate --simulate``: what a crew checks before leaving the pole.

For a valid pole file it prints, in order:

1. tonight's lighting profile at the pole's coordinates and date (``--date``): sunset,
   sunrise and every group's steps with levels and programs, from the same schedule the
   lighting service runs (:mod:`agent.lighting.tonight`);
2. for every camera, where its lines and zones sit in its frame
   (:mod:`agent.vision.linecheck`), the frame size taken from the camera's clip (``--clip``)
   or its video file, or said to be unknown;
3. for every camera with a clip (``--clip FILE`` for all cameras, ``--clip CAMERA=FILE``
   for one; a camera whose source is a video file replays that file), the clip replayed
   through the real counting pipeline: counts per line and direction, and an annotated
   snapshot (PNG) per camera in ``--snapshots DIR``.

Exit codes: 0 all good; 1 an error (a line outside its frame, a clip that is not a video,
a model card that cannot be read); 3 a model that fails to run; **5 warnings only** (a
line near an edge, a line that never fired on its clip, weak detections): a script sees
them, and they never hide behind a 0.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from agent.settings.schema import AgentConfig, CameraConfig
    from agent.vision.pipeline import FrameResult

EXIT_OK, EXIT_INVALID, EXIT_RUNTIME, EXIT_WARNINGS = 0, 1, 3, 5


@dataclass
class Findings:
    """Errors and warnings collected over a simulation (printed as they are found)."""

    errors: int = 0
    runtime: int = 0
    warnings: list[str] = field(default_factory=list)

    def exit_code(self) -> int:
        """1 if any error, 3 if a model failed, 5 if only warnings, else 0."""
        if self.errors:
            return EXIT_INVALID
        if self.runtime:
            return EXIT_RUNTIME
        return EXIT_WARNINGS if self.warnings else EXIT_OK


def clip_map(specs: list[str] | None, cfg: AgentConfig) -> tuple[dict[str, Path], str]:
    """``--clip`` options as {camera: clip}: ``FILE`` for every camera, ``CAMERA=FILE`` for
    one. Returns the map and an error message ("" if none)."""
    names = [c.name for c in cfg.cameras]
    every: Path | None = None
    own: dict[str, Path] = {}
    for spec in specs or []:
        name, eq, rest = spec.partition("=")
        if eq and name in names:
            own[name] = Path(rest)
        elif eq and name and "/" not in name and not Path(spec).exists():
            return {}, f"--clip {spec}: no camera {name!r}; cameras: {', '.join(names)}"
        elif every is not None:
            return {}, "--clip FILE (for every camera) may be given once; use CAMERA=FILE"
        else:
            every = Path(spec)
    out = {n: own.get(n, every) for n in names}
    return {k: v for k, v in out.items() if v is not None}, ""


def simulate(path: str, cfg: AgentConfig, clips: dict[str, Path], day: str | None,
             snapshots: Path, max_frames: int | None, quiet: bool,
             warnings: list[str] | None = None) -> int:
    """Run the checks in the module docstring for one loaded pole file; the exit code.
    ``warnings`` are those loading the file already printed (they count for exit 5)."""
    found = Findings(warnings=list(warnings or []))
    _tonight(cfg, day, found)
    for cam in cfg.cameras:
        _camera(path, cam, clips.get(cam.name), snapshots, max_frames, quiet, found)
    n = len(found.warnings)
    verdict = ("errors: see above" if found.errors or found.runtime else
               f"{n} warning{'s' if n != 1 else ''}" if n else "all checks passed")
    print(f"{path}: simulate: {verdict} (exit {found.exit_code()})")
    return found.exit_code()


def _tonight(cfg: AgentConfig, day_text: str | None, found: Findings) -> None:
    from datetime import date, datetime
    from zoneinfo import ZoneInfo

    from agent.lighting.tonight import NO_STEP, night_profile

    lt = cfg.lighting
    if lt is None:
        print("lighting: none configured (this pole drives no lamps)")
        return
    tz = ZoneInfo(lt.timezone or "UTC")
    day = date.fromisoformat(day_text) if day_text else datetime.now(tz).date()
    prof = night_profile(lt, day, bool(cfg.cameras))
    sunset = prof.sunset.strftime("%H:%M") if prof.sunset else "none (polar day or night)"
    sunrise = prof.sunrise.strftime("%H:%M %a") if prof.sunrise else "none (polar day or night)"
    print(f"tonight: {day} at {lt.latitude:.4f}, {lt.longitude:.4f} ({tz}): sunset {sunset}, "
          f"sunrise {sunrise}")
    for g in lt.groups:
        print(f"  group {g.name} ({g.luminaires} x {g.rated_power_w:g} W on bus {g.bus}, "
              f"{g.design_class}: floor {g.floor:g} %, ceiling {g.ceiling_pct:g} %, "
              f"safe {g.safe_pct:g} %):")
        steps = prof.groups[g.name]
        for s in steps:
            print(f"    {s.time.strftime('%a %H:%M')}  {s.step}  [{s.program}]")
        if not steps:
            print(f"    {NO_STEP}")


def _camera(path: str, cam: CameraConfig, clip: Path | None, snapshots: Path,
            max_frames: int | None, quiet: bool, found: Findings) -> None:
    from agent.settings.schema import FileSource
    from agent.vision.linecheck import check_lines, frame_size
    from agent.vision.videofile import VideoError, check_video_path

    if clip is None and isinstance(cam.source, FileSource):
        clip = cam.source.path
        origin = f"its video file {clip}"
    else:
        origin = f"clip {clip}"
    size, size_from = None, f"{cam.source.kind} camera, no --clip"
    if clip is not None:
        try:
            check_video_path(clip)
            size = frame_size(clip)
        except VideoError as e:
            print(f"{path}: camera {cam.name}: {e}", file=sys.stderr)
            found.errors += 1
            return
        if size is None:
            print(f"{path}: camera {cam.name}: {origin} has no readable frame", file=sys.stderr)
            found.errors += 1
            return
        size_from = origin
    res = check_lines(cam, size, size_from)
    where = f"{size[0]}x{size[1]} from {size_from}" if size else "size unknown"
    print(f"camera {cam.name}: frame {where}")
    for e in res.errors:
        print(f"{path}: cameras.{cam.name}: ERROR: {e}", file=sys.stderr)
    for w in res.warnings:
        print(f"{path}: cameras.{cam.name}: WARNING: {w}", file=sys.stderr)
    for n in res.notes:
        print(f"  note: {n}")
    found.errors += len(res.errors)
    found.warnings += res.warnings
    if not res.errors and not res.warnings and size is not None:
        print(f"  lines {', '.join(ln.name for ln in cam.lines) or 'none'}: inside the frame, "
              f"away from the edges they are crossed towards")
    if clip is not None and not res.errors:
        _replay(path, cam, clip, snapshots, max_frames, quiet, found)


def _replay(path: str, cam: CameraConfig, clip: Path, snapshots: Path,
            max_frames: int | None, quiet: bool, found: Findings) -> None:
    """Replay ``clip`` through the camera's pipeline; print counts; write a snapshot."""
    import cv2

    from agent.settings.yamlfile import ConfigError
    from agent.vision.annotate import draw_overlay
    from agent.vision.detect import ModelError, load_detector
    from agent.vision.offline import count_video, lookahead_for, stderr_progress
    from agent.vision.videofile import VideoError
    from agent.vision.worker import settings_for

    d = cam.detector
    where = f"{path}: cameras.{cam.name}.detector.model"
    try:
        det = load_detector(d.model, set(d.classes), d.confidence, d.nms_iou, d.merge_iou,
                            d.threads)
    except ConfigError as e:             # one located line per problem, at the card's entry
        for line in str(e).splitlines():
            print(f"{line} (the model card of {where})", file=sys.stderr)
        found.runtime += 1
        return
    except ModelError as e:
        print(f"{where}: {str(e).splitlines()[0]}", file=sys.stderr)
        found.runtime += 1
        return
    settings = settings_for(cam, 15.0)
    running: dict[str, dict[str, dict[str, int]]] = {
        ln.name: {dn: {} for dn in ln.names} for ln in settings.lines}
    best: dict[str, object] = {"score": (-1, -1), "image": None}

    def keep(frame: np.ndarray, r: FrameResult) -> None:
        for e in r.events:
            per = running.setdefault(e.line, {}).setdefault(e.direction, {})
            per[e.cls] = per.get(e.cls, 0) + 1
        score = (len(r.events), sum(1 for t in r.tracks if t.confirmed))
        if score > best["score"]:  # type: ignore[operator]
            img = frame.copy()
            draw_overlay(img, r.tracks, settings.lines, None, r.detections, settings.zones)
            best.update(score=score, image=img)

    try:
        result = count_video(clip, det, settings, max_frames=max_frames,
                             progress=None if quiet else stderr_progress(),
                             depth=lookahead_for(cam.gating.stride), on_frame=keep)
    except VideoError as e:
        print(f"{path}: camera {cam.name}: {e}", file=sys.stderr)
        found.errors += 1
        return
    except ModelError as e:
        print(f"{where}: {str(e).splitlines()[0]}", file=sys.stderr)
        found.runtime += 1
        return
    print(f"  replay of {clip}: {result.frames} frames, model {det.card.name}")
    for ln in settings.lines:
        by_dir = result.totals.get(ln.name, {})
        total = sum(sum(per.values()) for per in by_dir.values())
        dirs = ", ".join(f"{dn} {sum(by_dir.get(dn, {}).values())}" for dn in ln.names)
        print(f"    line {ln.name}: {total} ({dirs})")
        if total == 0:
            msg = (f"line {ln.name} never fired in {result.frames} frames of {clip}: check "
                   f"that it crosses the lanes where vehicles pass (see the snapshot) and "
                   f"that the clip shows traffic")
            print(f"{path}: cameras.{cam.name}: WARNING: {msg}", file=sys.stderr)
            found.warnings.append(msg)
    image = best["image"]
    if image is None:
        return
    draw_overlay(image, [], [], result.totals)  # type: ignore[arg-type]  # the final counts
    out = snapshots / f"{cam.name}.png"
    try:
        snapshots.mkdir(parents=True, exist_ok=True)
        written = cv2.imwrite(str(out), image)  # type: ignore[arg-type]
    except (OSError, cv2.error):
        written = False
    if written:
        print(f"    snapshot: {out}")
    else:
        print(f"{path}: camera {cam.name}: cannot write the snapshot {out}", file=sys.stderr)
        found.errors += 1
