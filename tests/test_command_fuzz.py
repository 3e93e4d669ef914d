"""10,000 hostile commands through a real mosquitto into the real ``agent run`` process:
every one is answered with a valid response, none raises a traceback, and none of the
refused ones changes anything (no override, no reload, no snapshot, lamps untouched by
commands). The corpus is a seeded mutation fuzzer over valid commands plus raw garbage,
so a failure can be replayed from its seed."""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.uplink.commands import new_command
from agent.uplink.contract import errors
from tests.helpers import wait_until
from tests.mqtt_broker import Collector
from tests.test_delivery import Stack

pytestmark = pytest.mark.slow
N = int(os.environ.get("POLELINK_FUZZ_COMMANDS", "10000"))
TOPIC = "polelink/lab/pole-7/cmd"


def corpus(seed: int, n: int) -> list[tuple[bytes, bool, bool]]:
    """``(payload, retained, may_run)`` × n; ``may_run``: a valid, fresh, new ping."""
    rnd = random.Random(seed)
    out: list[tuple[bytes, bool, bool]] = []
    pings: list[bytes] = []

    def valid(cmd: str = "set_override") -> dict:
        args = {"set_override": {"group": "street", "level_pct": 40, "expires_in_s": 600},
                "clear_override": {"group": "street"}, "request_snapshot": {},
                "reload_config": {}, "ping": {}, "rebirth": {}}[cmd]
        # an hour: the corpus is signed before the run, which may take long on a busy
        # machine; a command must not expire before it is sent
        return new_command(cmd, args or None, ttl_s=3600)

    while len(out) < n:
        kind = rnd.randrange(14)
        if kind == 0:                                   # a valid ping: may run
            b = json.dumps(valid("ping")).encode()
            pings.append(b)
            out.append((b, False, True))
        elif kind == 1 and pings:                       # a replay of one
            out.append((rnd.choice(pings), False, False))
        elif kind == 2:                                 # valid but retained
            out.append((json.dumps(valid(rnd.choice(["set_override", "reload_config"])))
                        .encode(), True, False))
        elif kind == 3:                                 # expired / too far ahead
            m = new_command("set_override", {"level_pct": 5, "expires_in_s": 60},
                            ttl_s=rnd.choice([-5, -86_400, 10 * 86_400]))
            out.append((json.dumps(m).encode(), False, False))
        elif kind == 4:                                 # for another pole or site
            m = {**valid(), rnd.choice(["device", "site"]): rnd.choice(["pole-8", "x", ""])}
            out.append((json.dumps(m).encode(), False, False))
        elif kind == 5:                                 # NaN / Infinity / duplicate keys
            t = json.dumps(valid())
            t = rnd.choice([t.replace("40", "NaN"), t.replace("40", "-Infinity"),
                            t.replace('"command"', '"command": "ping", "command"'),
                            t.replace("{", '{"args": {}, ', 1)])
            out.append((t.encode(), False, False))
        elif kind == 6:                                 # deep nesting, long numbers
            d = rnd.choice([20, 100, 5000])
            t = rnd.choice(["[" * d + "]" * d, '{"a":' * d + "1" + "}" * d,
                            '{"n": ' + "9" * rnd.choice([10, 5000, 20_000]) + "}"])
            out.append((t.encode(), False, False))
        elif kind == 7:                                 # random bytes
            out.append((rnd.randbytes(rnd.randrange(0, 300)), rnd.random() < 0.05, False))
        elif kind == 8:                                 # huge
            out.append((b'{"schema":"' + b"x" * rnd.choice([20_000, 200_000]) + b'"}',
                        False, False))
        elif kind == 9:                                 # the old schema
            m = {**valid("ping"), "schema": "polelink/command/1"}
            out.append((json.dumps(m).encode(), False, False))
        else:                                           # mutate one field of a valid one
            m = valid(rnd.choice(["set_override", "clear_override", "request_snapshot"]))
            path = rnd.choice(["schema", "correlation_id", "command", "expires", "args",
                               "args.level_pct", "args.expires_in_s", "args.group",
                               "args.priority", "extra"])
            val = rnd.choice([None, True, -1, 101, 1e308, "", "*", "x" * 300, [], {},
                              "2020-01-01T00:00:00Z", "tomorrow", "street/../x", "\u0000"])
            if path.startswith("args."):
                m.setdefault("args", {})[path[5:]] = val
            else:
                m[path] = val
            if not errors("command", m):                # a mutation that is still valid
                continue
            out.append((json.dumps(m).encode(), False, False))
    return out


def test_ten_thousand_hostile_commands_through_the_broker(tmp_path: Path, sim_clip) -> None:
    s = Stack(tmp_path, sim_clip)
    col = Collector(s.broker.port, "polelink/lab/pole-7/cmd/response")
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="fuzzer")
    try:
        s.start_agent()
        assert wait_until(lambda: s.platform.store.summary().get("pole-7", {}).get(
            "status") == "online", 40), s.output()[-2000:]
        pub.connect("127.0.0.1", s.broker.port)
        pub.loop_start()
        cases = corpus(seed=20261123, n=N)
        t0 = time.monotonic()
        for i, (payload, retained, _ok) in enumerate(cases):
            pub.publish(TOPIC, payload, qos=1, retain=retained)
            if i % 200 == 199:          # stay within the agent's command queue
                assert wait_until(lambda i=i: len(col.messages) >= i - 600, 60), \
                    (i, len(col.messages), s.output()[-2000:])
        assert wait_until(lambda: len(col.messages) >= N, 120), (len(col.messages),
                                                                 s.output()[-2000:])
        elapsed = time.monotonic() - t0
        time.sleep(2)
        answers = [m for _t, m, _r in col.messages]
        assert len(answers) == N                                  # one answer each
        assert all(errors("response", a) == [] for a in answers)  # each a valid response
        ok = [a for a in answers if a["result"] == "ok"]
        valid = {json.loads(c[0])["correlation_id"] for c in cases if c[2]}
        # a valid command the pole had no room for is answered busy (nothing ran, the
        # platform sends it again): every valid one is run or answered busy, none lost
        busy_answers = [a for a in answers if (a.get("data") or {}).get("busy")]
        assert all(a["result"] == "error" and a["data"]["retryAfterS"] > 0
                   for a in busy_answers)
        busy = {a["correlation_id"] for a in busy_answers}
        ran = {a["correlation_id"] for a in ok}
        assert valid <= ran | busy, len(valid - ran - busy)      # run, or answered busy
        extra = [a for a in ok if a["correlation_id"] not in valid]
        assert len(ok) == len(ran) and not extra, (       # each ran once, only valid ones
            len(ok), len(ran), [(a["correlation_id"], a["command"], a["data"])
                                for a in extra][:3])
        assert {a["command"] for a in ok} == {"ping"}
        assert all(len(json.dumps(a)) < 3000 for a in answers)    # no echo of huge input
        assert not (s.data / "overrides.json").exists()           # no override
        assert not s.events("config_reloaded")                    # no reload
        assert not list((s.data).glob("snapshots/*.png"))         # no snapshot
        assert "Traceback" not in s.output()
        assert s.proc is not None and s.proc.poll() is None
        print(f"{N} commands answered in {elapsed:.0f} s ({N / elapsed:.0f}/s)")
    finally:
        pub.loop_stop()
        pub.disconnect()
        col.close()
        s.close()
