"""CURVE on the ingest socket: encryption, and an allow-list of client keys through ZAP.

ZeroMQ's CURVE (RFC 26, CurveZMQ) encrypts each connection to the daemon's key pair; a
ZAP handler (pyzmq's ThreadAuthenticator, RFC 27) admits only clients whose public key
has a certificate in the ``curve_clients`` folder. A refused client never gets a
message through; the socket monitor reports the failed handshake, which is counted in
``edgewatch_messages_rejected_total`` with reason ``unauthorized`` (a key not allowed)
or ``handshake`` (no CURVE, or a wrong server key).

Certificates: ``edgewatch/keys.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from edgewatch.errors import ConfigError
from edgewatch.keys import load_keys
from edgewatch.schemas import Reject

HANDSHAKE_EVENTS: dict[int, Reject] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: Reject.UNAUTHORIZED,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: Reject.HANDSHAKE,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: Reject.HANDSHAKE,
}


class CurveServer:
    """Makes ``socket`` a CURVE server and starts the ZAP allow-list for ``context``."""

    def __init__(self, context: zmq.Context[Any], socket: zmq.Socket[Any], secret_key: str,
                 clients: str) -> None:  # fmt: skip
        if not Path(clients).is_dir():
            raise ConfigError(f"curve_clients={clients!r} is not a folder of NAME.key files")
        public, private = load_keys(secret_key, secret=True)
        self.authenticator = ThreadAuthenticator(context)
        self.authenticator.start()
        self.authenticator.configure_curve(domain="*", location=clients)
        socket.curve_secretkey = private
        socket.curve_publickey = public
        socket.curve_server = True
        self.monitor = socket.get_monitor_socket(sum(HANDSHAKE_EVENTS))  # a bit mask

    def failed_handshakes(self) -> list[Reject]:
        """Reasons of the handshakes refused since the last call (non-blocking)."""
        reasons: list[Reject] = []
        while True:
            try:
                message = self.monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return reasons
            event = int(parse_monitor_message(message)["event"])
            reasons.append(HANDSHAKE_EVENTS.get(event, Reject.HANDSHAKE))

    def stop(self) -> None:
        self.monitor.close(linger=0)
        self.authenticator.stop()
