"""Ray token authentication for the clusters facs starts and the jobs it submits; never prints a token.

Ray (>= 2.52) enforces a shared bearer token on the dashboard / Jobs API and on its internal RPCs when
``RAY_AUTH_MODE=token``. Ray looks the token up in this order, and so does ``facs submit``:
``RAY_AUTH_TOKEN`` (the token itself), ``RAY_AUTH_TOKEN_PATH`` (a file holding it), then
``~/.ray/auth_token`` (what ``ray get-auth-token --generate`` writes).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"


class TokenError(RuntimeError):
    """No usable Ray authentication token where one was expected."""


@dataclass(frozen=True)
class AuthToken:
    """A token and where it came from; ``repr`` and ``str`` never show the secret."""

    secret: str
    source: str

    def __repr__(self) -> str:
        return f"AuthToken(source={self.source!r})"

    __str__ = __repr__

    def http_headers(self) -> dict[str, str]:
        """The header the Ray dashboard's token middleware checks."""
        return {"Authorization": f"Bearer {self.secret}"}


def default_token_path() -> Path:
    return Path.home() / ".ray" / "auth_token"


def read_token_file(path: str | Path, source: str | None = None) -> AuthToken:
    """The token stored in ``path``; an empty or unreadable file is an error, as it is for Ray."""
    path = Path(path).expanduser()
    try:
        secret = path.read_text().strip()
    except OSError as error:
        raise TokenError(f"cannot read the Ray auth token file {path}: {error.strerror}") from None
    if not secret:
        raise TokenError(f"the Ray auth token file {path} is empty")
    return AuthToken(secret, source or str(path))


def resolve_token(cluster_token_path: str | Path | None = None) -> AuthToken | None:
    """The token to send, from Ray's standard sources (or the local cluster's file when given).

    ``cluster_token_path`` is the token file of a cluster started by ``facs cluster up``: when we
    submit to that cluster we know which token it checks, so it wins over ``~/.ray/auth_token``
    (which Ray may have generated for some other local cluster); ``RAY_AUTH_TOKEN`` and
    ``RAY_AUTH_TOKEN_PATH`` still win, as the user set them on purpose.
    """
    if os.environ.get(TOKEN_ENV, "").strip():
        return AuthToken(os.environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}")
    if os.environ.get(TOKEN_PATH_ENV):
        return read_token_file(os.environ[TOKEN_PATH_ENV], f"${TOKEN_PATH_ENV}")
    if cluster_token_path is not None and Path(cluster_token_path).is_file():
        return read_token_file(cluster_token_path)
    if default_token_path().is_file():
        return read_token_file(default_token_path())
    return None


def ensure_token_file(path: str | Path) -> Path:
    """A token file readable by its owner only, with 256 random bits if it does not exist yet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    read_token_file(path)  # refuse an empty file now rather than when Ray aborts on it
    return path


def token_auth_env(token_path: str | Path) -> dict[str, str]:
    """Environment that makes Ray processes enforce and use the token stored at ``token_path``."""
    return {AUTH_MODE_ENV: "token", TOKEN_PATH_ENV: str(Path(token_path).resolve())}
