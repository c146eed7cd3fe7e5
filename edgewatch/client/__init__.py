"""The training-side hook: measure per step, stream to the daemon, never get in the way."""

from edgewatch.client.attach import attach
from edgewatch.client.monitor import Monitor
from edgewatch.client.options import AttachOptions

__all__ = ["AttachOptions", "Monitor", "attach"]
