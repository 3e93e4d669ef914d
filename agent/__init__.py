"""polelink agent: cameras → vehicle counts → aggregates, on a street-light pole computer."""

__version__ = "0.1.0"
