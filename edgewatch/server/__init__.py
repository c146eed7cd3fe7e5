"""The edgewatch daemon: ZeroMQ ingest, SQLAlchemy storage, Prometheus and JSON over HTTP.

Nothing under ``edgewatch.server`` imports torch: the daemon runs where torch is absent.
"""

from edgewatch.server.config import Settings, load_settings
from edgewatch.server.daemon import Daemon, serve

__all__ = ["Daemon", "Settings", "load_settings", "serve"]
