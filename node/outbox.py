"""A small outbox ring in flash: messages wait in a file until the broker acknowledged them.

Each line is one JSON ``[topic, payload, retain]``. When more than ``size`` wait, the
oldest goes (counted in ``dropped``: reported in health). The file is rewritten on each
change (small: ``size`` lines); a corrupt file is set aside as ``.corrupt``.
"""

import json
import os


class Outbox:
    """See the module docstring."""

    def __init__(self, path, size):
        self.path = path
        self.size = size
        self.dropped = 0
        self.items = []
        try:
            with open(path) as f:
                for line in f:
                    if line.strip():
                        self.items.append(json.loads(line))
        except OSError:
            pass
        except ValueError:
            self.items = []
            try:  # noqa: SIM105
                os.rename(path, path + ".corrupt")
            except OSError:
                pass

    def _save(self):
        with open(self.path + ".tmp", "w") as f:
            for it in self.items:
                f.write(json.dumps(it))
                f.write("\n")
        os.rename(self.path + ".tmp", self.path)

    def put(self, topic, payload, retain=False):
        """Queue one message (durable on return)."""
        self.items.append([topic, payload, retain])
        while len(self.items) > self.size:
            self.items.pop(0)
            self.dropped += 1
        self._save()

    def flush(self, publish):
        """Send waiting messages in order with ``publish(topic, payload, retain)`` (which
        raises when it could not deliver); returns how many went."""
        n = 0
        while self.items:
            topic, payload, retain = self.items[0]
            publish(topic, payload, retain)
            self.items.pop(0)
            self._save()
            n += 1
        return n
