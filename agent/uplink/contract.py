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

from agent.records import (
    DiagnosticsRecord,
    EventRecord,
    HealthRecord,
    LightingRecord,
    TrafficRecord,
    iso,
)

SCHEMA_DIR = Path(__file__).with_name("schemas")
KINDS = ("status", "traffic", "lighting", "health", "event", "command", "response",
         "diagnostics", "node-lighting", "node-health", "ack")
"""Every message kind (``polelink/<kind>/1``), one schema file each; ``node-*`` are a lamp
node's own forms (``node/app.py``), which also publishes ``status`` and ``response``;
``ack`` is the platform's (acknowledgement of what it stored, to the device)."""


@cache
def validator(kind: str) -> Draft202012Validator:
    """The JSON-Schema validator of one message kind."""
    schema = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
    return Draft202012Validator(schema, format_checker=FormatChecker())


def errors(kind: str, message: Any) -> list[str]:
    """Human-readable schema violations of ``message`` (empty when valid). A long offending
    value is not echoed: the message names the rule it fails instead."""
    out = []
    for e in validator(kind).iter_errors(message):
        text = e.message
        if len(text) > 200:
            value = repr(e.validator_value)
            text = (f"{e.validator} {value[:80] + '…' if len(value) > 80 else value} not met "
                    f"(a {type(e.instance).__name__} of {len(repr(e.instance))} characters)")
        out.append(f"{'/'.join(map(str, e.absolute_path))[:120] or '(root)'}: {text}")
    return out


def kind_of(message: dict[str, Any]) -> str | None:
    """The kind named by a message's ``schema`` field (``polelink/<kind>/1``)."""
    s = message.get("schema") if isinstance(message, dict) else None
    if isinstance(s, str) and s.startswith("polelink/") and s.count("/") == 2:
        k = s.split("/")[1]
        return k if k in KINDS else None
    return None


def traffic_message(rec: TrafficRecord, ts: str) -> dict[str, Any]:
    """An interval's traffic record as a TALQ-style traffic message."""
    counts = [{"roadUserType": cls, "direction": d, "count": n}
              for d, per in sorted(rec.counts.items()) for cls, n in sorted(per.items())]
    msg: dict[str, Any] = {
        "schema": "polelink/traffic/1", "device": rec.device, "site": rec.site, "ts": ts,
        "camera": rec.camera,
        "samplingPeriod": {"start": iso(rec.start), "end": iso(rec.end),
                           "seconds": rec.interval_s, "partial": rec.partial,
                           **({"partialReason": rec.partial_reason}
                              if rec.partial_reason else {})},
        "roadUserCounts": counts, "totalCount": rec.total,
        "quality": {"framesAnalysed": rec.frames_analysed, "framesExpected": rec.frames_expected,
                    "framesDetected": rec.frames_detected, "framesGood": rec.frames_good,
                    "detectorRunsPerS": rec.detector_runs_per_s,
                    "framesDropped": rec.frames_dropped, "framesLate": rec.frames_late,
                    "detectorLatencyMs": rec.detector_latency_ms_mean,
                    "idSwitches": rec.id_switches, "cameraBlinded": rec.camera_blinded,
                    "cameraFrozen": rec.camera_frozen, "cameraState": rec.camera_state,
                    **(rec.quality or {})}}
    if rec.line is not None:
        msg["line"] = rec.line
    else:
        msg["zone"] = rec.zone
    return msg


_FAILURE_NAMES = {"lamp_failure": "lamp", "gear_failure": "gear", "no_answer": "no answer"}


def lighting_message(rec: LightingRecord, device: str, site: str, ts: str) -> dict[str, Any]:
    """A group's lighting record as a TALQ-style lighting message."""
    o = rec.override
    return {
        "schema": "polelink/lighting/1", "device": device, "site": site, "ts": ts,
        "group": rec.group,
        "samplingPeriod": {"start": iso(rec.start), "end": iso(rec.end),
                           "seconds": round(max(0.0, rec.end - rec.start), 3),
                           "partial": rec.partial},
        "lampActuator": {"targetLightState": rec.target_pct, "actualLightState": rec.actual_pct,
                         "defaultLightState": rec.safe_pct, "mode": rec.mode,
                         "reasons": list(rec.reasons), "step": rec.step,
                         "override": {"levelPct": o["level_pct"], "priority": o["priority"],
                                      "until": iso(o["until"])} if o else None},
        "lampMonitor": {"activePower": rec.power_w, "activeEnergy": rec.energy_wh,
                        "lampFailures": [{"address": lamp.address,
                                          "failure": _FAILURE_NAMES.get(lamp.state, lamp.state)}
                                         for lamp in rec.lamps if lamp.state != "ok"],
                        "lamps": [{"address": lamp.address, "state": lamp.state,
                                   "levelPct": lamp.level_pct} for lamp in rec.lamps]},
        "energySavedWh": rec.energy_saved_wh, "energySavedSource": rec.energy_saved_source,
        "energySavedTotalWh": rec.energy_saved_total_wh,
        "energySavedUncertaintyWh": rec.energy_saved_uncertainty_wh,
        "busError": rec.bus_error, "clockTrusted": rec.clock_trusted}


def diagnostics_message(rec: DiagnosticsRecord, device: str, site: str, ts: str
                        ) -> dict[str, Any]:
    """A group's luminaire diagnostics (D4i) as a diagnostics message."""
    return {"schema": "polelink/diagnostics/1", "device": device, "site": site, "ts": ts,
            "group": rec.group,
            "luminaires": [{"address": d.address, **d.values} for d in rec.luminaires]}


def event_message(rec: EventRecord, device: str, site: str, ts: str) -> dict[str, Any]:
    """An event message."""
    return {"schema": "polelink/event/1", "device": device, "site": site, "ts": ts,
            "event": rec.event, "severity": rec.severity, "subject": rec.subject,
            "detail": rec.detail}


def health_message(rec: HealthRecord, device: str, site: str, ts: str) -> dict[str, Any]:
    """A health message."""
    return {"schema": "polelink/health/1", "device": device, "site": site, "ts": ts,
            **rec.system, "uptimeS": round(rec.uptime_s, 1), "outbox": rec.outbox,
            "cameras": rec.cameras, "clock": rec.clock, "lighting": rec.lighting,
            **({"uplink": rec.uplink} if rec.uplink else {}), **rec.service,
            **({"countQuality": rec.count_quality} if rec.count_quality else {})}


def response_message(device: str, site: str, ts: str, correlation_id: str | None,
                     command: str | None, error: str | None = None,
                     data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A command response: ``result`` is ``ok`` unless ``error`` is given."""
    return {"schema": "polelink/response/1", "device": device, "site": site, "ts": ts,
            "correlation_id": correlation_id, "command": command,
            "result": "error" if error else "ok", "error": error, "data": data or {}}
