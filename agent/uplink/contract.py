"""The MQTT contract in code: message builders and validation against ``agent/uplink/schemas``.

The JSON Schemas and ``agent/uplink/schemas/asyncapi.yaml`` are the documentation the city
platform reads; every builder here produces messages that validate against them (tests
check every published message), and :func:`validate` is what the platform simulator uses.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

SCHEMA_DIR = Path(__file__).with_name("schemas")
KINDS = ("status", "traffic", "lighting", "health", "event", "command", "response")


@cache
def validator(kind: str) -> Draft202012Validator:
    """The JSON-Schema validator of one message kind."""
    schema = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
    return Draft202012Validator(schema, format_checker=FormatChecker())


def errors(kind: str, message: Any) -> list[str]:
    """Human-readable schema violations of ``message`` (empty when valid)."""
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
            for e in validator(kind).iter_errors(message)]


def kind_of(message: dict[str, Any]) -> str | None:
    """The kind named by a message's ``schema`` field (``polelink/<kind>/1``)."""
    s = message.get("schema") if isinstance(message, dict) else None
    if isinstance(s, str) and s.startswith("polelink/") and s.count("/") == 2:
        k = s.split("/")[1]
        return k if k in KINDS else None
    return None


def traffic_message(rec: dict[str, Any], device: str, site: str, ts: str) -> dict[str, Any]:
    """An interval aggregate record (``agent.vision.aggregates``) as a TALQ-style traffic message."""
    counts = [{"roadUserType": cls, "direction": d, "count": n}
              for d, per in sorted(rec["counts"].items()) for cls, n in sorted(per.items())]
    msg: dict[str, Any] = {
        "schema": "polelink/traffic/1", "device": device, "site": site, "ts": ts,
        "camera": rec["camera"],
        "samplingPeriod": {"start": rec["interval_start"], "end": rec["interval_end"],
                           "seconds": rec["interval_s"], "partial": rec["partial"]},
        "roadUserCounts": counts, "totalCount": rec["total"],
        "quality": {"framesAnalysed": rec["frames_analysed"],
                    "framesExpected": rec.get("frames_expected"),
                    "framesDetected": rec["frames_detected"],
                    "framesDropped": rec["frames_dropped"], "framesLate": rec.get("frames_late", 0),
                    "detectorLatencyMs": rec["detector_latency_ms_mean"],
                    "idSwitches": rec["id_switches"],
                    "cameraBlinded": bool(rec.get("camera_blinded", False)),
                    "cameraFrozen": bool(rec.get("camera_frozen", False))}}
    if "line" in rec:
        msg["line"] = rec["line"]
    else:
        msg["zone"] = rec["zone"]
    return msg


def lighting_message(rec: dict[str, Any], device: str, site: str, ts: str, start: str,
                     safe_pct: float) -> dict[str, Any]:
    """A group controller record (``agent.lighting.controller``) as a TALQ-style lighting message."""
    return {
        "schema": "polelink/lighting/1", "device": device, "site": site, "ts": ts,
        "group": rec["group"],
        "samplingPeriod": {"start": start, "end": rec["time"], "seconds": rec["interval_s"],
                           "partial": False},
        "lampActuator": {"targetLightState": rec["target_level_pct"],
                         "actualLightState": rec.get("actual_level_pct"),
                         "defaultLightState": safe_pct, "mode": rec["mode"],
                         "reasons": list(rec["reasons"])},
        "lampMonitor": {"activePower": rec.get("power_w"), "activeEnergy": rec.get("energy_wh"),
                        "lampFailures": list(rec.get("lamp_failures", []))},
        "energySavedWh": rec["energy_saved_wh"], "energySavedSource": rec["energy_saved_source"],
        "busError": rec["bus_error"]}


def event_message(event: str, severity: str, subject: str, device: str, site: str, ts: str,
                  **detail: Any) -> dict[str, Any]:
    """An event message."""
    return {"schema": "polelink/event/1", "device": device, "site": site, "ts": ts,
            "event": event, "severity": severity, "subject": subject, "detail": detail}


def response_message(device: str, site: str, ts: str, correlation_id: str | None,
                     command: str | None, error: str | None = None,
                     data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A command response: ``result`` is ``ok`` unless ``error`` is given."""
    return {"schema": "polelink/response/1", "device": device, "site": site, "ts": ts,
            "correlation_id": correlation_id, "command": command,
            "result": "error" if error else "ok", "error": error, "data": data or {}}
