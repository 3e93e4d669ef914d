"""The node's one JSON config: load and validate it with clear errors (field names).

Used on the device (``main.py``) and, through ``agent validate``, on a laptop.
"""


from b64 import b64decode

try:
    from agent.common import calrule, tzrule
except ImportError:  # on the node ``common`` is a top-level package (node/manifest.txt)
    from common import calrule, tzrule

REQUIRED = ("device", "site", "latitude", "longitude", "mqtt", "output")
EVENTS = ("sunrise", "sunset", "dawn", "dusk")
DEFAULTS = {"tz_offset_min": 0, "outbox_max": 1024, "report_s": 60, "health_s": 300,
            "tick_s": 1, "max_ttl_s": 86400, "wdt_ms": 8000, "state_dir": ".",
            "rtc_trust_s": 7 * 86400, "retry_s": 5,
            "fixed_program": [{"at": "18:00", "level": 100}, {"at": "07:00", "level": 0}]}
OUTPUT_KINDS = ("pwm", "file", "dali")
#: The largest config read at all, and its deepest nesting (checked before parsing: a
#: 200 KiB or 5,000-level file must not exhaust a small heap).
MAX_CONFIG_BYTES = 8192
MAX_CONFIG_DEPTH = 8
MQTT_KEYS = ("host", "port", "prefix", "keepalive", "timeout_s", "primary_host", "user",
             "password")
SPKI_PREFIX = b"\x30\x2a\x30\x05\x06\x03\x2b\x65\x70\x03\x21\x00"   # Ed25519 public key DER


def public_key(text):
    """The 32-byte Ed25519 key from config text: base64 of the raw key, or of the public-key
    DER, which is the middle line of the ``.pub.pem`` that ``agent bundle keygen`` writes;
    ValueError otherwise."""
    try:
        raw = b64decode(text)
    except ValueError:
        raise ValueError("expected base64 (the middle line of the site's .pub.pem)") from None
    if len(raw) == 44 and raw[:12] == SPKI_PREFIX:
        raw = raw[12:]
    if len(raw) != 32:
        raise ValueError("expected an Ed25519 public key (32 bytes, or its 44-byte DER), got "
                         + str(len(raw)) + " bytes")
    return raw


def _num(cfg, key, lo, hi, errs, where=""):
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        errs.append(where + key + ": expected a number in " + str(lo) + ".." + str(hi)
                    + ", got " + repr(v))


def _digits(s):
    """ASCII digits only (``str.isdigit`` takes '²', which ``int`` refuses)."""
    return 0 < len(s) <= 2 and all(c in "0123456789" for c in s)


def _steps(steps, name, errs):
    if not isinstance(steps, list) or not steps:
        errs.append(name + ": expected a non-empty list of steps")
        return
    for i, s in enumerate(steps):
        where = name + "[" + str(i) + "]."
        if not isinstance(s, dict):
            errs.append(where[:-1] + ": expected an object")
            continue
        at = s.get("at")
        ok = at in EVENTS
        if not ok and isinstance(at, str):
            hh, sep, mm = at.partition(":")
            ok = (sep == ":" and _digits(hh) and _digits(mm) and len(mm) == 2
                  and int(hh) < 24 and int(mm) < 60)
        if not ok:
            errs.append(where + "at: expected 'HH:MM' or one of " + ", ".join(EVENTS)
                        + ", got " + repr(at))
        _num(s, "level", 0, 100, errs, where)
        if "offset_min" in s:
            _num(s, "offset_min", -720, 720, errs, where)
        for k in s:
            if k not in ("at", "level", "offset_min"):
                errs.append(where + k + ": unknown key")


def _calendar(cfg, errs):
    """``programs`` (name → steps) and ``calendar`` (rules, the agent's shape)."""
    progs = cfg.get("programs")
    if "programs" in cfg:
        if not isinstance(progs, dict) or not progs:
            errs.append("programs: expected an object of named programs")
            progs = {}
        for name in progs:
            _steps(progs[name], "programs." + name, errs)
    elif "calendar" in cfg:
        errs.append("calendar: needs programs")
    cal = cfg.get("calendar", [])
    if not isinstance(cal, list):
        errs.append("calendar: expected a list of rules")
        return
    catch_all = False
    for i, rule in enumerate(cal):
        where = "calendar[" + str(i) + "]"
        try:
            r = calrule.from_json(rule)
        except ValueError as e:
            errs.append(where + str(e))
            continue
        if isinstance(progs, dict) and r["program"] not in progs:
            errs.append(where + ".program: no program " + repr(r["program"]) + " in programs")
        catch_all = catch_all or not (r["dates"] or r["weekdays"] or r["months"])
    if isinstance(progs, dict) and len(progs) > 1 and not catch_all:
        errs.append("calendar: with several programs, end with a rule for every day "
                    "({\"program\": NAME} with no dates, weekdays or months): the node "
                    "cannot tell which program in programs comes first")


def plan(cfg):
    """What ``common.schedule`` evaluates for a loaded config: ``program`` (a list of
    steps), or a calendar plan (``programs``, parsed ``calendar``, ``default``)."""
    if "programs" not in cfg:
        return cfg["program"]
    progs = cfg["programs"]
    return {"programs": progs, "calendar": [calrule.from_json(r) for r in cfg.get("calendar", [])],
            "default": next(iter(progs)) if len(progs) == 1 else None}


def validate(cfg):
    """Errors of config dict ``cfg`` as ``field: message`` strings (empty when valid)."""
    if not isinstance(cfg, dict):
        return ["(root): expected a JSON object"]
    errs = []
    for k in REQUIRED:
        if k not in cfg:
            errs.append(k + ": missing")
    for k in ("device", "site"):
        v = cfg.get(k)
        if k in cfg and not (isinstance(v, str) and 0 < len(v) <= 63
                             and all((c.isalpha() and c.lower() == c) or c.isdigit() or c in "-_"
                                     for c in v)):
            errs.append(k + ": expected lowercase letters, digits, - or _ (1-63), got " + repr(v))
    if "latitude" in cfg:
        _num(cfg, "latitude", -90, 90, errs)
    if "longitude" in cfg:
        _num(cfg, "longitude", -180, 180, errs)
    m = cfg.get("mqtt")
    if "mqtt" in cfg:
        if not isinstance(m, dict) or not isinstance(m.get("host"), str):
            errs.append("mqtt.host: expected a host name")
        else:
            for k, lo, hi in (("port", 1, 65535), ("keepalive", 5, 3600),
                              ("timeout_s", 0.05, 10)):
                if k in m:
                    _num(m, k, lo, hi, errs, "mqtt.")
            for k in ("prefix", "primary_host", "user", "password"):
                if k in m and not (isinstance(m[k], str) and 0 < len(m[k]) <= 128):
                    errs.append("mqtt." + k + ": expected a string of 1-128 characters")
            for k in m:
                if k not in MQTT_KEYS:
                    errs.append("mqtt." + k + ": unknown key (one of " + ", ".join(MQTT_KEYS)
                                + ")")
    o = cfg.get("output")
    if "output" in cfg:
        if not isinstance(o, dict) or o.get("kind") not in OUTPUT_KINDS:
            errs.append("output.kind: expected one of " + ", ".join(OUTPUT_KINDS))
        elif o["kind"] == "file" and not isinstance(o.get("path"), str):
            errs.append("output.path: expected a file path (kind file)")
        elif o["kind"] == "pwm" and (isinstance(o.get("pin"), bool)
                                     or not isinstance(o.get("pin"), int)
                                     or not 0 <= o["pin"] <= 48):
            errs.append("output.pin: expected a pin number 0-48 (kind pwm)")
        elif o["kind"] == "pwm" and "freq" in o:
            _num(o, "freq", 1, 1000000, errs, "output.")
        elif o["kind"] == "dali":
            u = o.get("uart", 1)
            if not isinstance(u, int) or isinstance(u, bool) or not 0 <= u <= 3:
                errs.append("output.uart: expected a UART id 0-3 (kind dali)")
            if "port" in o and not isinstance(o["port"], str):
                errs.append("output.port: expected a serial device path (kind dali)")
            if o.get("codec", "hat") not in ("hat", "foxtron"):
                errs.append("output.codec: expected hat or foxtron (kind dali)")
            a = o.get("address")
            if a is not None and (isinstance(a, bool) or not isinstance(a, int)
                                  or not 0 <= a <= 63):
                errs.append("output.address: expected a short address 0-63, or none for "
                            "broadcast (kind dali)")
    if "program" in cfg:
        _steps(cfg["program"], "program", errs)
        if "programs" in cfg or "calendar" in cfg:
            errs.append("program: give program, or programs and calendar, not both")
    elif "programs" not in cfg:
        errs.append("program: missing (or programs and calendar)")
    _calendar(cfg, errs)
    if "fixed_program" in cfg:
        _steps(cfg["fixed_program"], "fixed_program", errs)
        for i, s in enumerate(cfg["fixed_program"] if isinstance(cfg["fixed_program"], list)
                              else ()):
            if isinstance(s, dict) and s.get("at") in EVENTS:
                errs.append("fixed_program[" + str(i) + "].at: astro steps need a trusted "
                            "clock; the fixed program takes 'HH:MM' only")
    if "command_key" in cfg:
        try:
            public_key(cfg["command_key"])
        except ValueError as e:
            errs.append("command_key: " + str(e))
    if "tz" in cfg:
        if "tz_offset_min" in cfg:
            errs.append("tz: give tz or tz_offset_min, not both (tz_offset_min is for old "
                        "configs: a fixed offset with no daylight-saving change)")
        try:
            tzrule.parse(cfg["tz"])
        except ValueError as e:
            errs.append("tz: expected a POSIX TZ rule like CET-1CEST,M3.5.0,M10.5.0/3 or "
                        "<+07>-7 (" + str(e) + ")")
    for k, lo, hi in (("tz_offset_min", -720, 840), ("outbox_max", 16, 20000),
                      ("report_s", 1, 86400), ("health_s", 1, 86400), ("tick_s", 0.01, 60),
                      ("max_ttl_s", 1, 7 * 86400), ("wdt_ms", 0, 600000),
                      ("rtc_trust_s", 0, 365 * 86400), ("retry_s", 0.1, 3600)):
        if k in cfg:
            _num(cfg, k, lo, hi, errs)
    wdt, tick = cfg.get("wdt_ms", DEFAULTS["wdt_ms"]), cfg.get("tick_s", DEFAULTS["tick_s"])
    if isinstance(wdt, (int, float)) and isinstance(tick, (int, float)) and wdt \
            and wdt < tick * 1000 + 3000:
        errs.append("wdt_ms: expected 0 (off) or at least tick_s x 1000 + 3000 = "
                    + str(int(tick * 1000 + 3000)) + " (the watchdog would reset the node "
                    "between two loop passes), got " + repr(wdt))
    known = REQUIRED + tuple(DEFAULTS) + ("clock", "command_key", "tz", "program", "programs",
                                          "calendar")
    for k in cfg:
        if k not in known:
            errs.append(k + ": unknown key")
    return errs


def prepare(cfg):
    """What the loop needs from this module, computed once (the node then unloads it): the
    command key's bytes (``_key``), the parsed time zone (``_tz``) and plan (``_plan``)."""
    key = cfg.get("command_key")
    cfg["_key"] = None if key is None else public_key(key)
    cfg["_tz"] = zone(cfg)
    cfg["_plan"] = plan(cfg)


def zone(cfg):
    """The time zone of a loaded config for ``common.schedule``: the parsed ``tz`` rule,
    else ``tz_offset_min`` as seconds."""
    if "tz" in cfg:
        return tzrule.parse(cfg["tz"])
    return cfg.get("tz_offset_min", 0) * 60


def load(path):
    """The validated config at ``path`` with defaults filled in; ValueError with one line
    per problem (``path: field: message``)."""
    import os
    try:
        size = os.stat(path)[6]
        if size > MAX_CONFIG_BYTES:
            raise ValueError(path + ": " + str(size) + " bytes (a node config may have at most "
                             + str(MAX_CONFIG_BYTES) + ")")
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ValueError(path + ": cannot read (" + str(e) + ")") from None
    try:
        cfg = loads_strict(raw)
    except ValueError as e:
        raise ValueError(path + ": not valid JSON (" + str(e) + ")") from None
    errs = validate(cfg)
    if errs:
        raise ValueError("\n".join(path + ": " + e for e in errs))
    for k in DEFAULTS:
        cfg.setdefault(k, DEFAULTS[k])
    cfg["mqtt"].setdefault("port", 1883)
    cfg["mqtt"].setdefault("prefix", "polelink")
    cfg["mqtt"].setdefault("keepalive", 30)
    cfg["mqtt"].setdefault("timeout_s", 0.5)
    return cfg


def loads_strict(raw):
    """Strict JSON of at most :data:`MAX_CONFIG_DEPTH` levels (the node's checker on the
    node, CPython's json with a depth check on a laptop)."""
    import strictjson
    return strictjson.loads(raw, MAX_CONFIG_DEPTH)


def salvage_output(path):
    """The ``output`` section of a refused config when it is valid on its own (so the lamp
    can be driven at 100 %), else None."""
    try:
        import os
        if os.stat(path)[6] > MAX_CONFIG_BYTES:
            return None
        with open(path, "rb") as f:
            cfg = loads_strict(f.read(MAX_CONFIG_BYTES + 1))
        o = cfg.get("output") if isinstance(cfg, dict) else None
        probe = {"output": o}
        errs = []
        if isinstance(o, dict):
            errs = [e for e in validate(probe) if e.startswith("output")]
        return o if isinstance(o, dict) and not errs else None
    except Exception:
        return None
