"""Settings: the provisioning file's schema, located YAML errors and model cards."""
