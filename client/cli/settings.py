"""Connection settings from flags, then the environment, then stored logins, then defaults.

The CLI's environment is read here (`main` passes it in): `XFER_SERVER`
(default localhost:50051), `XFER_TOKEN`, `XFER_CACHE`, `XFER_TLS_CA`,
`XFER_TLS_CERT`, `XFER_TLS_KEY`, `XFER_OFFLINE`, `XFER_CONFIG_DIR`,
`XFER_TRUSTED_KEYS` (publisher keys, separated by os.pathsep) and
`XFER_REQUIRE_SIGNED`. The SDK itself reads only the cache location
(`default_cache_dir`), and only when it is given no `cache_dir`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xfer.client.errors import InvalidArgumentError
from xfer.models.files import write_json_atomic

DEFAULT_SERVER = "localhost:50051"
CREDENTIALS_FILE = "credentials.json"
_TRUE = {"1", "true", "yes", "on"}


def add_connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command takes.

    Added to the main parser and again to every subcommand (with SUPPRESS
    defaults there), so `xfer --json models` and `xfer models --json` agree.
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--server",
        default=default(None),
        metavar="HOST:PORT",
        help=f"server address (env XFER_SERVER, default {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--token",
        default=default(None),
        help="bearer token (env XFER_TOKEN or `xfer login`; prefer those, a flag is visible in the process list)",
    )
    group.add_argument("--token-file", default=default(None), metavar="PATH", help="file holding the token")
    group.add_argument(
        "--tls", action="store_true", default=default(False), help="use TLS with the system's root certificates"
    )
    group.add_argument("--tls-ca", default=default(None), metavar="PEM", help="root CA of the server (env XFER_TLS_CA)")
    group.add_argument("--tls-cert", default=default(None), metavar="PEM", help="client certificate for mTLS")
    group.add_argument("--tls-key", default=default(None), metavar="PEM", help="client key for mTLS")
    group.add_argument("--cache-dir", default=default(None), metavar="DIR", help="cache root (env XFER_CACHE)")
    group.add_argument(
        "--offline",
        action="store_true",
        default=default(False),
        help="never contact the server; use what the cache holds (env XFER_OFFLINE=1)",
    )
    group.add_argument(
        "--trusted-keys",
        default=default(None),
        metavar="PATHS",
        help="publisher public keys (.pub files or folders of them, separated by "
        f"'{os.pathsep}'; env XFER_TRUSTED_KEYS)",
    )
    group.add_argument(
        "--require-signed",
        action="store_true",
        default=default(False),
        help="verify each pulled model's signature with the trusted keys; refuse unsigned models "
        "(env XFER_REQUIRE_SIGNED=1)",
    )
    group.add_argument(
        "--timeout", type=float, default=default(30.0), help="deadline of each call in seconds (default 30)"
    )
    group.add_argument("--json", action="store_true", default=default(False), help="print JSON on stdout (for scripts)")
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="log what happens (and tracebacks of unexpected errors)",
    )


def setting(args: argparse.Namespace, name: str, *, environ: Mapping[str, str], env: str, default: Any = None) -> Any:
    """A flag's value if given, else the environment variable's, else `default`."""
    value = getattr(args, name, None)
    if value not in (None, ""):
        return value
    return environ.get(env) or default


def server_target(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    """The server address the command talks to."""
    return str(setting(args, "server", environ=environ, env="XFER_SERVER", default=DEFAULT_SERVER))


def cache_dir(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    """`--cache-dir`, else `$XFER_CACHE`, else `~/.cache/xfer`."""
    from xfer.client.cache import default_cache_dir

    configured = getattr(args, "cache_dir", None)
    return Path(configured).expanduser() if configured else default_cache_dir(environ)


def _flag(args: argparse.Namespace, name: str, environ: Mapping[str, str], env: str) -> bool:
    return bool(getattr(args, name, False)) or environ.get(env, "").strip().lower() in _TRUE


def offline(args: argparse.Namespace, environ: Mapping[str, str]) -> bool:
    """`--offline` or `XFER_OFFLINE=1`."""
    return _flag(args, "offline", environ, "XFER_OFFLINE")


def trusted_keys(args: argparse.Namespace, environ: Mapping[str, str]) -> list[str]:
    """Publisher key paths from `--trusted-keys`, else `$XFER_TRUSTED_KEYS`."""
    value = setting(args, "trusted_keys", environ=environ, env="XFER_TRUSTED_KEYS", default="")
    return [part for part in str(value).split(os.pathsep) if part.strip()]


# -- stored logins -------------------------------------------------------------
def config_dir(environ: Mapping[str, str]) -> Path:
    """`$XFER_CONFIG_DIR`, else `$XDG_CONFIG_HOME/xfer`, else `~/.config/xfer`."""
    if environ.get("XFER_CONFIG_DIR"):
        return Path(environ["XFER_CONFIG_DIR"]).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "xfer"


class Credentials:
    """Tokens saved by `xfer login`, one per server address, in a file only its owner can read (0600)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / CREDENTIALS_FILE

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise InvalidArgumentError(
                f"cannot read the stored logins in {self.path} ({exc}); delete the file and run `xfer login` again"
            ) from None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, dict):
            raise InvalidArgumentError(f"{self.path} is not an xfer credentials file; delete it and log in again")
        return {str(k): str(v) for k, v in tokens.items()}

    def get(self, server: str) -> str | None:
        """The stored token for `server`, if any."""
        return self._read().get(server)

    def servers(self) -> list[str]:
        """Servers with a stored token."""
        return sorted(self._read())

    def save(self, server: str, token: str) -> None:
        """Stores `token` for `server` (temp file with mode 0600, then rename)."""
        tokens = self._read()
        tokens[server] = token
        self._write(tokens)

    def remove(self, server: str) -> bool:
        """Forgets the token for `server`; whether there was one."""
        tokens = self._read()
        if tokens.pop(server, None) is None:
            return False
        self._write(tokens)
        return True

    def _write(self, tokens: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(self.path, {"version": 1, "tokens": tokens})


def token(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """`--token`, else `--token-file`, else `$XFER_TOKEN`, else the login stored for the server."""
    if getattr(args, "token", None):
        return str(args.token)
    token_file = getattr(args, "token_file", None)
    if token_file:
        try:
            return Path(token_file).read_text().strip() or None
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read --token-file {token_file!r}: {exc.strerror}") from None
    if environ.get("XFER_TOKEN"):
        return environ["XFER_TOKEN"]
    return Credentials(config_dir(environ)).get(server_target(args, environ))


def make_client(args: argparse.Namespace, environ: Mapping[str, str]) -> Any:
    """A `Client` configured from flags, then environment, then stored logins, then defaults."""
    from xfer.client.sdk import Client
    from xfer.client.transport import TlsConfig

    ca = setting(args, "tls_ca", environ=environ, env="XFER_TLS_CA")
    cert = setting(args, "tls_cert", environ=environ, env="XFER_TLS_CERT")
    key = setting(args, "tls_key", environ=environ, env="XFER_TLS_KEY")
    tls: TlsConfig | bool | None = None
    if ca or cert or key:
        tls = TlsConfig(
            root_ca=Path(ca) if ca else None,
            client_cert=Path(cert) if cert else None,
            client_key=Path(key) if key else None,
        )
    elif getattr(args, "tls", False):
        tls = True
    return Client(
        server_target(args, environ),
        token=token(args, environ),
        tls=tls,
        cache_dir=cache_dir(args, environ),
        timeout=getattr(args, "timeout", 30.0),
        offline=offline(args, environ),
        trusted_keys=trusted_keys(args, environ),
        require_signed=_flag(args, "require_signed", environ, "XFER_REQUIRE_SIGNED"),
    )
