"""The training-side hook: measure per step, stream to the daemon, never get in the way."""

from edgewatch.client.monitor import Monitor, attach

__all__ = ["Monitor", "attach"]
