"""The worker: one scheduler owns the batch, one runner executes it on the device."""
