"""Lamp output behind one small interface: ``set(level_pct)`` and ``level``.

- ``pwm``: a ``machine.PWM`` pin (PWM dimming input or a 0-10 V interface driven by PWM;
  ``invert`` for interfaces where a high duty means dim).
- ``file``: a stand-in for the unix port (no ``machine.PWM``/``UART`` there): the level is
  written to a file, which the tests read. Not for a device.
- ``dali``: not implemented yet on the node (see README "Lamp nodes"); refused at start.
"""


class FileOutput:
    """Writes the level (percent, text) to ``path`` on every change."""

    def __init__(self, path):
        self.path = path
        self.level = None

    def set(self, level):
        """Drive the lamp to ``level`` percent."""
        level = max(0, min(100, level))
        with open(self.path + ".tmp", "w") as f:
            f.write(str(level) + "\n")
        import os
        os.rename(self.path + ".tmp", self.path)
        self.level = level


class PwmOutput:
    """Duty cycle of a ``machine.PWM`` pin."""

    def __init__(self, pin, freq=1000, invert=False):
        import machine
        self.pwm = machine.PWM(machine.Pin(pin), freq=freq)
        self.invert = invert
        self.level = None

    def set(self, level):
        """Drive the lamp to ``level`` percent."""
        level = max(0, min(100, level))
        duty = int(level * 65535 // 100)
        self.pwm.duty_u16(65535 - duty if self.invert else duty)
        self.level = level


def make(cfg):
    """The output the ``output`` config names."""
    kind = cfg["kind"]
    if kind == "file":
        return FileOutput(cfg["path"])
    if kind == "pwm":
        return PwmOutput(cfg["pin"], cfg.get("freq", 1000), cfg.get("invert", False))
    raise ValueError("output.kind: " + kind + " is not supported by this node build")
