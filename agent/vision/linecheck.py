"""Where a camera's counting lines and zones sit in its frame: the check ``agent validate
--simulate`` makes before a crew leaves the pole.

With the frame size known (from the camera's video file, or a clip recorded from it):

- every point of a line or zone must lie inside the frame (an **error**: such a line is
  drawn for another resolution, and part of it can never be crossed);
- a line must sit away from the edges it is crossed towards (a **warning**): a vehicle is
  counted when the tracked box's anchor crosses the line, so it must be seen, whole, for
  some frames on both sides. For a line crossed up/down (mostly horizontal) both ends must
  lie at least :data:`EDGE_SHARE` of the frame height from the top and bottom edges; for a
  line crossed left/right, that share of the width from the left and right edges. A line
  may run from one side edge to the other: that is how roads are crossed.

Without a frame size (a stream or V4L2 camera and no clip) only what needs no size is
checked (points not negative), and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.settings.schema import CameraConfig
from agent.vision.geometry import image_directions

#: How far from the edges it is crossed towards a line must stay, as a share of the frame.
EDGE_SHARE = 0.05


@dataclass
class LineCheck:
    """What the check found for one camera."""

    camera: str
    size: tuple[int, int] | None                      # width, height
    size_from: str                                    # where the size came from, or why none
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def frame_size(video: Path) -> tuple[int, int] | None:
    """The (width, height) of a video file's first frame; None if it cannot be read."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    try:
        ok, img = cap.read()
        return (int(img.shape[1]), int(img.shape[0])) if ok and img is not None else None
    finally:
        cap.release()


def check_lines(cam: CameraConfig, size: tuple[int, int] | None, size_from: str) -> LineCheck:
    """Check ``cam``'s lines and zones against a frame of ``size`` (see the module docstring)."""
    out = LineCheck(cam.name, size, size_from)
    for ln in cam.lines:
        pts = ", ".join(f"({x:g},{y:g})" for x, y in ln.points)
        neg = [p for p in ln.points if p[0] < 0 or p[1] < 0]
        if neg:
            out.errors.append(f"line {ln.name}: point(s) {pts} have negative coordinates: "
                              f"frame pixels start at (0,0) top left")
            continue
        if size is None:
            continue
        w, h = size
        outside = [p for p in ln.points if not (0 <= p[0] <= w - 1 and 0 <= p[1] <= h - 1)]
        if outside:
            out.errors.append(
                f"line {ln.name}: point(s) " + ", ".join(f"({x:g},{y:g})" for x, y in outside)
                + f" lie outside the {w}x{h} frame (x 0..{w - 1}, y 0..{h - 1}): is the line "
                  f"drawn for another resolution?")
            continue
        crossed = image_directions(ln.points)
        if crossed[0] in ("up", "down"):
            margin = EDGE_SHARE * h
            lo, hi = min(p[1] for p in ln.points), max(p[1] for p in ln.points)
            if lo < margin or hi > h - 1 - margin:
                out.warnings.append(
                    f"line {ln.name} ({pts}) is crossed up/down but reaches within "
                    f"{margin:.0f} px ({EDGE_SHARE:.0%} of the height) of the top or bottom "
                    f"edge: vehicles there are cut off and may not be counted; move it "
                    f"towards the middle (y {margin:.0f}..{h - 1 - margin:.0f})")
        else:
            margin = EDGE_SHARE * w
            lo, hi = min(p[0] for p in ln.points), max(p[0] for p in ln.points)
            if lo < margin or hi > w - 1 - margin:
                out.warnings.append(
                    f"line {ln.name} ({pts}) is crossed left/right but reaches within "
                    f"{margin:.0f} px ({EDGE_SHARE:.0%} of the width) of the left or right "
                    f"edge: vehicles there are cut off and may not be counted; move it "
                    f"towards the middle (x {margin:.0f}..{w - 1 - margin:.0f})")
    for z in cam.zones:
        if size is None:
            if any(x < 0 or y < 0 for x, y in z.polygon):
                out.errors.append(f"zone {z.name}: corners with negative coordinates")
            continue
        w, h = size
        outside = [p for p in z.polygon if not (0 <= p[0] <= w - 1 and 0 <= p[1] <= h - 1)]
        if outside:
            out.warnings.append(f"zone {z.name}: {len(outside)} corner(s) outside the {w}x{h} "
                                f"frame, e.g. ({outside[0][0]:g},{outside[0][1]:g}); only its "
                                f"part inside the frame can see anything")
    if size is None:
        out.notes.append(f"frame size unknown ({size_from}): checked only that points are not "
                         f"negative; give --clip with a recording from this camera, or check "
                         f"with agent snapshot at the pole")
    return out
