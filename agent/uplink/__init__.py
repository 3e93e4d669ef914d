"""City uplink: the MQTT contract, the durable outbox, the client and remote commands."""
