"""Updates that roll back: signed bundles (``bundle``), the steps of an update run by the
agent (``install``), the trial a new release must pass (``trial``) and the stable guard,
outside the releases, that rolls back a release that fails it (``guard``)."""
