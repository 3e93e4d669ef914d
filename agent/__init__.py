"""polelink agent: cameras → vehicle counts → aggregates, on a street-light pole computer."""

__version__ = "0.1.0"

from datetime import UTC, datetime

#: The day this version was built: a wall clock reading earlier than this is not plausible.
BUILD_DATE = datetime(2026, 11, 1, tzinfo=UTC)
