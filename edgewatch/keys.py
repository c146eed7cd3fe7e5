"""CURVE certificates: ``edgewatch keygen NAME`` writes NAME.key (public, to share) and
NAME.key_secret (keep private), in ZeroMQ's zcert format (pyzmq ``zmq.auth``). Used by
the daemon (``server/security.py``) and by the client (``attach(server_key=, client_key=)``).
"""

from __future__ import annotations

from pathlib import Path

import zmq.auth

from edgewatch.errors import ConfigError


def load_keys(path: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) keys from a certificate file, with a clear error."""
    try:
        public, private = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CURVE certificate {path!r}: {exc}") from exc
    if secret and private is None:
        raise ConfigError(f"{path!r} holds a public key only; use the NAME.key_secret file")
    return public, private


def keygen(name: str, folder: str) -> tuple[Path, Path]:
    """Write NAME.key and NAME.key_secret into ``folder``; refuses to overwrite."""
    directory = Path(folder)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise ConfigError(f"{path} exists; remove it or choose another name")
    made_public, made_secret = zmq.auth.create_certificates(str(directory), name)
    Path(made_secret).chmod(0o600)
    return Path(made_public), Path(made_secret)
