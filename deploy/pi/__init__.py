"""Getting the agent onto a Raspberry Pi offline: pinned requirements, the aarch64 wheelhouse."""
