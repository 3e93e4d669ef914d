"""The one exception every model check raises, in a module with no imports, so that the
model process (``agent.vision.detect.host``) and the runtimes need neither pydantic nor the
card's schema to raise it."""


class ModelError(Exception):
    """A model could not be loaded or does not match its card."""
