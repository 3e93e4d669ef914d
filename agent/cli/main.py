"""The ``agent`` command: validate, count, snapshot, run.

Exit codes: 0 success, 1 invalid input (config, model card, video), 2 usage error,
3 runtime failure (camera gave no frame, a model that does not match its card or fails to
run or decode, etc.), 4 ``agent count`` on a damaged video: the counts were printed but
cover only the frames that could be decoded, 5 ``agent validate --simulate`` found
warnings only (a line near an edge or that never fired on its clip, weak detections).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.settings.yamlfile import ConfigError

if TYPE_CHECKING:
    from agent.settings.schema import CameraConfig

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_RUNTIME, EXIT_CORRUPT, EXIT_WARNINGS = 0, 1, 2, 3, 4, 5


def _positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is below 1")
    return n


def _err(msg: str) -> None:
    print(f"agent: error: {msg}", file=sys.stderr)


def cmd_validate(a: argparse.Namespace) -> int:
    """``agent validate FILE``: check a provisioning file; list every problem."""
    from agent.settings.schema import load_config_report

    if a.date is not None and _day(a.date) is None:
        _err(f"--date must be YYYY-MM-DD between 1971 and 2199, got {a.date!r}")
        return EXIT_USAGE
    rc = EXIT_OK
    for path in a.files:
        from agent.cli.nodecheck import is_node_config

        if is_node_config(path):
            rc = _worst(rc, _validate_node(a, path))
            continue
        try:
            loaded = load_config_report(Path(path), Path(a.secrets) if a.secrets else None,
                                        secrets_mode="warn")
        except ConfigError as e:
            for p in e.problems:
                print(p, file=sys.stderr)
            print(f"{path}: INVALID ({len(e.problems)} problem"
                  f"{'s' if len(e.problems) != 1 else ''})", file=sys.stderr)
            rc = EXIT_INVALID
            continue
        cfg = loaded.config
        for w in loaded.warnings:
            print(w, file=sys.stderr)
        file_rc = EXIT_OK
        for cam in cfg.cameras:
            if a.check_models:
                file_rc = max(file_rc, _check_camera_model(path, cam))
            else:
                _print_model_view(cam)
        if file_rc == EXIT_OK:
            cams = ", ".join(f"{c.name} ({len(c.lines)} line{'s' if len(c.lines) != 1 else ''})"
                             for c in cfg.cameras)
            print(f"{path}: OK: device {cfg.device.id} at {cfg.device.site}; cameras: {cams}")
            if len(loaded.files) > 1 or loaded.secrets_file:
                print(f"  files: {' extends '.join(map(str, loaded.files))}"
                      + (f"; secrets: {loaded.secrets_file}" if loaded.secrets_file else ""))
        from agent.cli.simulate import clip_map

        clips, problem = clip_map(a.clip, cfg)
        if problem:
            _err(problem)
            return EXIT_USAGE
        weak = 0
        if clips:
            clip_rc, weak = _validate_clip(path, cfg, clips, a.clip_frames)
            file_rc = max(file_rc, clip_rc)
        if a.simulate and file_rc in (EXIT_OK, EXIT_RUNTIME):
            from agent.cli.simulate import simulate

            sim_rc = simulate(path, cfg, clips, a.date, Path(a.snapshots or
                                                             f"simulate-{cfg.device.id}"),
                              a.max_frames, a.quiet, [str(w) for w in loaded.warnings])
            if weak and sim_rc == EXIT_OK:
                sim_rc = EXIT_WARNINGS
            file_rc = _worst(file_rc, sim_rc)
        rc = _worst(rc, file_rc)
    return rc


def _validate_node(a: argparse.Namespace, path: str) -> int:
    """``agent validate NODE.json``: a lamp node's config, with the node's own rules."""
    from agent.cli import nodecheck

    if a.simulate or a.clip or a.check_models:
        _err(f"{path}: --simulate, --clip and --check-models are for pole configs (YAML), "
             "not lamp node configs")
        return EXIT_USAGE
    try:
        problems, cfg = nodecheck.check(path)
    except OSError as e:
        _err(str(e))
        return EXIT_RUNTIME
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{path}: INVALID ({len(problems)} problem{'s' if len(problems) != 1 else ''})",
              file=sys.stderr)
        return EXIT_INVALID
    assert cfg is not None
    print(f"{path}: OK: lamp node {cfg['device']} at {cfg['site']}; output "
          f"{cfg['output']['kind']}; program {len(cfg['program'])} steps; commands "
          + ("signed only (command_key)" if "command_key" in cfg else
             "not signed (no command_key)"))
    return EXIT_OK


def _worst(a: int, b: int) -> int:
    """The exit code that says more: 1 (invalid) over 3 (runtime) over 5 (warnings) over 0."""
    order = {EXIT_INVALID: 3, EXIT_RUNTIME: 2, EXIT_WARNINGS: 1, EXIT_OK: 0}
    return max(a, b, key=lambda c: order.get(c, 4))


def _day(text: str) -> object:
    """A ``--date`` as a date between 1971 and 2199, or None."""
    from datetime import date

    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return day if 1971 <= day.year <= 2199 else None


def _validate_clip(path: str, cfg: object, clips: dict[str, Path], frames: int
                   ) -> tuple[int, int]:
    """``agent validate --clip``: each camera's model over its clip; weak detections are a
    warning (exit 0), a clip that is not a video or a model that fails an error (1).
    Returns the exit code and the number of weak cameras."""
    from agent.vision.clipcheck import check_clip, warning
    from agent.vision.detect import ModelError, load_detector
    from agent.vision.videofile import VideoError, quiet_ffmpeg

    quiet_ffmpeg()
    rc = EXIT_OK
    weak = 0
    for cam in cfg.cameras:  # type: ignore[attr-defined]
        clip = clips.get(cam.name)
        if clip is None:
            continue
        d = cam.detector
        try:
            det = load_detector(d.model, set(d.classes), d.confidence, d.nms_iou, d.merge_iou,
                                d.threads)
            fig = check_clip(det, clip, cam.name, d.confidence, list(d.classes), frames)
        except (ModelError, ConfigError) as e:
            print(f"{path}: cameras.{cam.name}.detector.model: {str(e).splitlines()[0]}",
                  file=sys.stderr)
            rc = EXIT_INVALID
            continue
        except VideoError as e:
            _err(str(e))
            return EXIT_INVALID, weak
        print(f"{path}: camera {cam.name}, model {fig.model}, clip {clip}: {fig.summary()}")
        if fig.weak:
            weak += 1
            print(f"{path}: WARNING: {warning(fig, det.card, d.model)}", file=sys.stderr)
    return rc, weak


def _print_model_view(cam: CameraConfig) -> None:
    """Print the view a camera's model is fit for, where its card can be read (no hashing)."""
    from agent.settings.modelcard import ModelError, load_card

    try:
        card = load_card(cam.detector.model, verify_hash=False)
    except (ModelError, ConfigError):
        return  # reported by --check-models
    print(f"  camera {cam.name}: model {card.name}, "
          f"fit for {card.view_text()}")


def _check_camera_model(path: str, cam: CameraConfig) -> int:
    """``--check-models`` for one camera: load its model, run it on a synthetic frame and
    check what its head reads; one located line per failure. Returns the exit code."""
    from agent.vision.detect import ModelError, load_detector
    from agent.vision.detect.selfcheck import check_model

    where = f"{path}: cameras.{cam.name}.detector.model"
    d = cam.detector
    try:
        det = load_detector(d.model, set(d.classes), d.confidence, d.nms_iou, d.merge_iou)
        summary = check_model(det)
    except ConfigError as e:             # one located line per problem, at the card's entry
        for line in str(e).splitlines():
            print(f"{line} (the model card of {where})", file=sys.stderr)
        return EXIT_RUNTIME
    except ModelError as e:
        print(f"{where}: {str(e).splitlines()[0]}", file=sys.stderr)
        return EXIT_RUNTIME
    print(f"  camera {cam.name}: model {det.card.name}: {summary}; "
          f"fit for {det.card.view_text()}")
    return EXIT_OK


def cmd_count(a: argparse.Namespace) -> int:
    """``agent count VIDEO``: count a video file offline and print totals."""
    from agent.vision.detect import ModelError, load_detector
    from agent.vision.offline import (
        VideoError,
        count_video,
        lines_from_args,
        lookahead_for,
        stderr_progress,
    )
    from agent.vision.pipeline import PipelineSettings
    from agent.vision.videofile import check_video_path, quiet_ffmpeg

    try:
        lines = lines_from_args(a.line)
    except ValueError as e:
        _err(str(e))
        return EXIT_USAGE
    if not a.verbose:
        quiet_ffmpeg()
    try:
        check_video_path(Path(a.video))
    except VideoError as e:
        _err(str(e))
        return EXIT_INVALID
    try:
        from agent.settings.paths import path_from_text

        det = load_detector(path_from_text(a.model),
                            set(a.classes.split(",")) if a.classes else None,
                            confidence=a.confidence, threads=a.threads)
    except ConfigError as e:             # one located line per problem, at the card's entry
        for line in str(e).splitlines():
            print(f"{line} (model card)", file=sys.stderr)
        # a card that is not there is a wrong argument (1); one that is wrong, exit 3
        return EXIT_INVALID if not Path(a.model).is_file() else EXIT_RUNTIME
    except ValueError as e:  # a pkg: path that names nothing shipped
        _err(str(e))
        return EXIT_USAGE
    except ModelError as e:
        _err(str(e).splitlines()[0])
        return EXIT_RUNTIME
    settings = PipelineSettings(lines=lines, confidence=a.confidence, stride=a.stride,
                                motion=a.motion, schedule=a.schedule)
    try:
        res = count_video(Path(a.video), det, settings, Path(a.annotate) if a.annotate else None,
                          a.max_frames, None if a.quiet else stderr_progress(),
                          depth=a.lookahead or lookahead_for(a.stride))
    except VideoError as e:
        _err(str(e))
        return EXIT_INVALID
    except ModelError as e:  # decode-time: the model's outputs do not fit its card
        _err(str(e).splitlines()[0])
        return EXIT_RUNTIME
    doc = res.to_json()
    doc.update({"model": det.card.name, "stride": a.stride, "schedule": a.schedule,
                "motion_gating": a.motion})
    damaged = res.integrity is not None and not res.integrity.complete
    if damaged:
        _err(f"video {a.video} is damaged: {res.integrity.describe()}")  # type: ignore[union-attr]
    rc = EXIT_CORRUPT if damaged else EXIT_OK
    if a.json:
        print(json.dumps(doc, indent=1))
        return rc
    print(f"{res.video}: {res.frames} frames ({res.frames_detected} through the detector), "
          f"{res.processing_fps:.1f} frames/s, model {det.card.name}")
    for name, info in doc["lines"].items():
        dirs = ", ".join(f"{d} {n}" for d, n in info["by_direction"].items())
        print(f"  line {name}: {info['total']} ({dirs})")
        for cls, per in sorted(info["by_class"].items()):
            print(f"    {cls:<10} " + "  ".join(f"{d} {n}" for d, n in per.items()))
    print("  stage ms/frame: " + ", ".join(f"{k} {v}" for k, v in res.stage_ms.items()))
    if a.annotate:
        print(f"  annotated video: {a.annotate}")
    if damaged:
        print(f"  DAMAGED VIDEO: {res.integrity.describe()}")  # type: ignore[union-attr]
    return rc


def cmd_snapshot(a: argparse.Namespace) -> int:
    """``agent snapshot``: one annotated frame from a configured camera."""
    from agent.vision.snapshot import SnapshotError, take_snapshot

    try:
        info = take_snapshot(Path(a.config), a.camera, Path(a.output), a.timeout)
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return EXIT_INVALID
    except SnapshotError as e:
        _err(str(e))
        return e.exit_code
    print(f"wrote {a.output}: camera {a.camera}, frame {info['width']}x{info['height']}, "
          f"{info['detections']} detections, lines: {', '.join(info['lines']) or 'none'}")
    return EXIT_OK


def cmd_schema(a: argparse.Namespace) -> int:
    """``agent schema``: the JSON Schema of the provisioning file, for editors."""
    from agent.settings.cardref import card_reference_markdown, card_schema
    from agent.settings.editor_schema import provisioning_schema

    if a.markdown and not a.card:
        _err("--markdown goes with --card (the model card's reference page)")
        return EXIT_USAGE
    if a.card and a.site:
        _err("--site and --card are two different files: give one")
        return EXIT_USAGE
    if a.card:
        print(card_reference_markdown() if a.markdown else json.dumps(card_schema(), indent=1))
    else:
        print(json.dumps(provisioning_schema(site=a.site), indent=1))
    return EXIT_OK


def cmd_run(a: argparse.Namespace) -> int:
    """``agent run --config FILE``: run every camera, write aggregates, show live counts."""
    from agent.runner import run_agent

    if a.secrets:  # the loader, and every reload, reads it from here
        from agent.settings.secrets import SECRETS_ENV

        os.environ[SECRETS_ENV] = str(Path(a.secrets).resolve())

    return run_agent(Path(a.config), duration=a.duration, live=not a.quiet)


def build_parser() -> argparse.ArgumentParser:
    """The ``agent`` argument parser (every command and option, with help)."""
    p = argparse.ArgumentParser(prog="agent", description="polelink street-light pole agent")
    p.add_argument("--version", action="version", version=f"polelink agent {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check provisioning files (exit 0 valid, 1 invalid, "
                       "3 a model check failed)")
    v.add_argument("files", nargs="+", metavar="FILE")
    v.add_argument("--check-models", action="store_true",
                   help="also load each camera's model, check it against its card and run it "
                        "on a synthetic frame (scores in [0, 1], boxes inside the input)")
    v.add_argument("--clip", metavar="[CAMERA=]VIDEO", action="append",
                   help="run each camera's model over this clip and warn when it detects "
                        "little (a model unfit for the view; a warning, exit 0); "
                        "CAMERA=VIDEO for one camera; repeat for several")
    v.add_argument("--clip-frames", type=_positive_int, default=120, metavar="N",
                   help="frames taken from the clip, evenly spread (120)")
    v.add_argument("--secrets", metavar="FILE",
                   help="the secrets file for !secret and ${NAME} references (default: the "
                        "file's secrets: key, else secrets.yaml beside it)")
    v.add_argument("--simulate", action="store_true",
                   help="also print tonight's lighting profile, check each camera's lines "
                        "against its frame and replay its clip (--clip, or its video file) "
                        "through the counting pipeline with an annotated snapshot; exit 5 "
                        "when there are warnings only")
    v.add_argument("--date", metavar="YYYY-MM-DD",
                   help="--simulate: the night to show (default: today at the pole)")
    v.add_argument("--snapshots", metavar="DIR",
                   help="--simulate: where the annotated snapshots go "
                        "(default: ./simulate-<device id>)")
    v.add_argument("--max-frames", type=_positive_int, metavar="N",
                   help="--simulate: replay at most N frames of each clip (default: all)")
    v.add_argument("-q", "--quiet", action="store_true", help="--simulate: no progress output")
    v.set_defaults(func=cmd_validate)

    sc = sub.add_parser("schema", help="print the JSON Schema of the provisioning file "
                        "or of a model card (for editors)")
    sc.add_argument("--site", action="store_true",
                    help="the schema of a site file: the same keys, none required")
    sc.add_argument("--card", action="store_true",
                    help="the schema of a model card instead")
    sc.add_argument("--markdown", action="store_true",
                    help="with --card: the card reference page (docs/models/card-reference.md)")
    sc.set_defaults(func=cmd_schema)

    c = sub.add_parser("count", help="count road users crossing lines in a video file")
    c.add_argument("video", metavar="VIDEO")
    c.add_argument("--model", required=True, metavar="CARD", help="model card (.yaml)")
    c.add_argument("--line", action="append", required=True, metavar="X1,Y1,X2,Y2[,NAME]",
                   help="counting line in frame pixels; repeat for several lines")
    c.add_argument("--json", action="store_true", help="print one JSON document")
    c.add_argument("--annotate", metavar="OUT.mp4", help="write a video with boxes, ids, lines")
    c.add_argument("--confidence", type=float, default=0.35, help="detection threshold (0.35)")
    c.add_argument("--classes", metavar="C1,C2", help="classes to count "
                   "(default car,motorbike,bus,truck,bicycle)")
    c.add_argument("--stride", type=int, default=1,
                   help="run the detector at most every Nth frame where no count is being "
                        "decided (1: every frame)")
    c.add_argument("--schedule", choices=("adaptive", "fixed"), default="adaptive",
                   help="adaptive: detect every frame near the lines, --stride elsewhere "
                        "(default); fixed: exactly every --stride-th frame")
    c.add_argument("--motion", action=argparse.BooleanOptionalAction, default=False,
                   help="skip the detector on frames without motion (default off offline)")
    c.add_argument("--threads", type=int, default=1, help="onnxruntime/TFLite threads (1)")
    c.add_argument("--lookahead", type=_positive_int, metavar="N",
                   help="frames the detector may run ahead of the tracker (default: stride - 1, "
                        "at least 1); 1 plans every frame on the freshest tracks")
    c.add_argument("--max-frames", type=int, help="stop after N frames")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    c.set_defaults(func=cmd_count)

    s = sub.add_parser("snapshot", help="save one annotated frame from a configured camera")
    s.add_argument("--config", required=True, metavar="FILE")
    s.add_argument("--camera", required=True, metavar="NAME")
    s.add_argument("-o", "--output", required=True, metavar="OUT.png")
    s.add_argument("--timeout", type=float, default=15.0,
                   help="seconds to wait for a frame (15)")
    s.set_defaults(func=cmd_snapshot)

    from agent.cli.lights import add_parser as add_lights

    add_lights(sub)

    from agent.cli.acl import add_parser as add_broker_acl

    add_broker_acl(sub)

    from agent.cli.service import add_parser as add_service_exit

    add_service_exit(sub)

    from agent.cli.bundle import add_parser as add_bundle

    add_bundle(sub)

    r = sub.add_parser("run", help="run the agent: cameras, counting, aggregates")
    r.add_argument("--config", required=True, metavar="FILE")
    r.add_argument("--duration", type=float, help="stop after this many seconds")
    r.add_argument("--secrets", metavar="FILE",
                   help="the secrets file (default: the config's secrets: key, else "
                        "secrets.yaml beside it); sets POLELINK_SECRETS")
    r.add_argument("-q", "--quiet", action="store_true", help="no live status line")
    r.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``agent`` console script."""
    p = build_parser()
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(a, "stride", 1) < 1:
        p.error("--stride must be at least 1")
    try:
        return a.func(a)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (``agent count ... | head``): not an error worth a traceback;
        # stdout is pointed at /dev/null so the interpreter's final flush stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
