"""TLS to a real mosquitto: right CA connects, wrong CA is refused with a clear error,
mutual TLS works with a client certificate. Certificates are made here with openssl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.uplink.mqtt import TlsSettings, Uplink, UplinkSettings
from agent.uplink.outbox import Outbox
from tests.mqtt_broker import Broker, wait_until

OPENSSL = shutil.which("openssl")


def ca(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.crt"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return key, crt


def signed(d: Path, name: str, ca_key: Path, ca_crt: Path, san: str | None = None
           ) -> tuple[Path, Path]:
    key, csr, crt = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.crt"
    subprocess.run([OPENSSL, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                    "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True)
    ext = d / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    subprocess.run([OPENSSL, "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey",
                    str(ca_key), "-CAcreateserial", "-days", "2", "-out", str(crt),
                    "-extfile", str(ext)], check=True, capture_output=True)
    return key, crt


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_crt = ca(d, "city-ca")
    _, other_crt = ca(d, "other-ca")
    srv_key, srv_crt = signed(d, "broker", ca_key, ca_crt, "IP:127.0.0.1,DNS:localhost")
    cli_key, cli_crt = signed(d, "pole-1", ca_key, ca_crt)
    return {"ca": ca_crt, "other": other_crt, "srv_key": srv_key, "srv_crt": srv_crt,
            "cli_key": cli_key, "cli_crt": cli_crt}


def tls_broker(tmp: Path, pki: dict[str, Path], mutual: bool) -> Broker:
    b = Broker(tmp, extra=f"cafile {pki['ca']}\ncertfile {pki['srv_crt']}\n"
                          f"keyfile {pki['srv_key']}\nrequire_certificate {str(mutual).lower()}\n")
    return b.start()


def test_right_ca_connects_wrong_ca_is_refused_clearly(tmp_path: Path, pki) -> None:
    b = tls_broker(tmp_path, pki, mutual=False)
    try:
        bad = Uplink(UplinkSettings(port=b.port, reconnect_min_s=0.2, reconnect_max_s=0.4,
                                    tls=TlsSettings(pki["other"])),
                     "pole-1", "city", Outbox(tmp_path / "a.db", "pole-1")).start()
        assert wait_until(lambda: "certificate verify failed" in bad.stats.last_error, 10), \
            bad.stats.last_error
        assert not bad.wait_connected(0.5) and bad.stats.connects == 0
        bad.stop()
        good = Uplink(UplinkSettings(port=b.port, tls=TlsSettings(pki["ca"])), "pole-1", "city",
                      Outbox(tmp_path / "b.db", "pole-1")).start()
        assert good.wait_connected(10)
        good.stop()
    finally:
        b.stop()


def test_mutual_tls(tmp_path: Path, pki) -> None:
    b = tls_broker(tmp_path, pki, mutual=True)
    try:
        anon = Uplink(UplinkSettings(port=b.port, reconnect_min_s=0.2, reconnect_max_s=0.4,
                                     tls=TlsSettings(pki["ca"])), "pole-1", "city",
                      Outbox(tmp_path / "a.db", "pole-1")).start()
        assert wait_until(lambda: anon.stats.last_error != "", 15)   # no client certificate
        assert anon.stats.connects == 0
        anon.stop()
        ob = Outbox(tmp_path / "b.db", "pole-1")
        up = Uplink(UplinkSettings(port=b.port, tls=TlsSettings(pki["ca"], pki["cli_crt"],
                                                                pki["cli_key"])),
                    "pole-1", "city", ob).start()
        assert up.wait_connected(10)
        ob.put(up.topic("event"), {"x": 1})
        assert wait_until(lambda: len(ob) == 0, 10)
        up.stop()
    finally:
        b.stop()
