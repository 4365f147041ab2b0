"""The `xfer` command: list, inspect, pull, register, curate, fine-tune, report.

Environment (read here and nowhere else in the client): `XFER_SERVER`
(default localhost:50051), `XFER_TOKEN`, `XFER_CACHE`, `XFER_TLS_CA`,
`XFER_TLS_CERT`, `XFER_TLS_KEY`. Flags win over the environment.

Output: aligned tables for people; `--json` prints one JSON document on
stdout and nothing else. Failures print one line, `xfer: error: ...`, on
stderr and exit with the error kind's code (see client/errors.py: 3 invalid
argument, 4 not found, 5 already exists, 6 unauthenticated, 7 permission
denied, 8 unavailable, 9 deadline, 10 too large, 11 data loss, 12
unimplemented, 13 server error; 2 is a usage error, 130 an interrupt).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from xfer.client.errors import XferError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
DEFAULT_SERVER = "localhost:50051"


class _Exit(Exception):
    """Ends the command with `code` (argparse's own exits are turned into this too)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclasses.dataclass
class Io:
    """Where a command writes; injected so tests run the CLI in-process."""

    out: TextIO
    err: TextIO

    def print(self, text: str = "") -> None:
        """A line on stdout."""
        self.out.write(text + "\n")

    def json(self, value: Any) -> None:
        """One JSON document on stdout."""
        self.out.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


# -- formatting ----------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns aligned by their widest cell; numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) and bool(rows) for i in range(len(headers))]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [r[i].rjust(widths[i]) if numeric[i] else r[i].ljust(widths[i]) for i in range(len(headers))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def _num(value: float) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


# -- arguments -----------------------------------------------------------------
def _connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Added to the main parser and again to every subcommand (with SUPPRESS
    # defaults there), so `xfer --json models` and `xfer models --json` agree.
    default = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("connection and output")
    group.add_argument("--server", default=default, metavar="HOST:PORT",
                       help=f"server address (env XFER_SERVER, default {DEFAULT_SERVER})")
    group.add_argument("--token", default=default, help="bearer token (env XFER_TOKEN; prefer the env or "
                       "--token-file, a flag is visible in the process list)")
    group.add_argument("--token-file", default=default, metavar="PATH", help="file holding the token")
    group.add_argument("--tls", action="store_true", default=argparse.SUPPRESS if suppress else False,
                       help="use TLS with the system's root certificates")
    group.add_argument("--tls-ca", default=default, metavar="PEM", help="root CA of the server (env XFER_TLS_CA)")
    group.add_argument("--tls-cert", default=default, metavar="PEM", help="client certificate for mTLS")
    group.add_argument("--tls-key", default=default, metavar="PEM", help="client key for mTLS")
    group.add_argument("--cache-dir", default=default, metavar="DIR", help="cache root (env XFER_CACHE)")
    group.add_argument("--timeout", type=float, default=argparse.SUPPRESS if suppress else 30.0,
                       help="deadline of each call in seconds (default 30)")
    group.add_argument("--json", action="store_true", default=argparse.SUPPRESS if suppress else False,
                       help="print JSON on stdout (for scripts)")
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS if suppress else False,
                       help="log what happens (and tracebacks of unexpected errors)")


class _Parser(argparse.ArgumentParser):
    """Raises instead of calling sys.exit, so in-process callers get a return code."""

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            self._print_message(message, sys.stderr)
        raise _Exit(status)

    def error(self, message: str) -> None:  # type: ignore[override]
        # One line like every other failure, instead of argparse's usage block.
        self.exit(EXIT_USAGE, f"xfer: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `xfer` argument parser."""
    parser = _Parser(prog="xfer", description="Pull, adapt and report on privacy-preserving source models.",
                     epilog="References: MODEL (alias latest), MODEL:VERSION or MODEL@ALIAS.")
    _connection_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, handler: Callable[..., int] | None, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, **kwargs)
        if kwargs.get("add_help", True):
            _connection_options(p, suppress=True)
        p.set_defaults(handler=handler)
        return p

    command("models", cmd_models, "list source models")
    p = command("versions", cmd_versions, "list the versions of a model, newest first")
    p.add_argument("model", metavar="MODEL")
    p = command("show", cmd_show, "show a version's card and artifacts")
    p.add_argument("ref", metavar="REF")
    p = command("pull", cmd_pull, "download an artifact into the cache (verified, resumable)")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--format", default="safetensors", choices=["safetensors", "onnx"])
    p = command("register", cmd_register, "upload a new version (operator)")
    p.add_argument("folder", metavar="FOLDER", help="as written by `python -m xfer.models.train --out FOLDER`")
    p.add_argument("--model", required=True, metavar="ID", help="model id, e.g. digits-convnet")
    p = command("alias", cmd_alias, "point an alias at a version (operator)")
    p.add_argument("ref", metavar="REF")
    p.add_argument("alias", metavar="ALIAS")
    p = command("deprecate", cmd_deprecate, "flag a version as deprecated (operator)")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--message", "-m", default="", help="shown to clients, e.g. 'use @stable'")
    p = command("delete", cmd_delete, "delete one version (operator)")
    p.add_argument("ref", metavar="REF", help="MODEL:VERSION or MODEL@ALIAS (a bare id is refused)")
    # The finetune options belong to client/finetune; they are parsed in
    # cmd_finetune so other commands never import torch training code.
    p = command("finetune", None, "pull a model, adapt it to local data, save it, report the run",
                add_help=False, prefix_chars="\0")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p = command("runs", cmd_runs, "list reported runs, newest first")
    p.add_argument("--model", default=None, metavar="REF", help="MODEL (all versions) or MODEL:VERSION")
    p.add_argument("--strategy", default=None)
    p = command("leaderboard", cmd_leaderboard, "per version and strategy: count, mean, std, best of a metric")
    p.add_argument("--metric", default="accuracy")
    p.add_argument("--model", default=None, metavar="REF")
    p.add_argument("--goal", default="maximize", choices=["maximize", "minimize"])
    return parser


# -- settings from flags + environment ----------------------------------------
def _setting(args: argparse.Namespace, name: str, environ: Mapping[str, str], env: str,
             default: Any = None) -> Any:
    value = getattr(args, name, None)
    if value not in (None, ""):
        return value
    return environ.get(env) or default


def _token(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    if getattr(args, "token", None):
        return args.token
    token_file = getattr(args, "token_file", None)
    if token_file:
        try:
            return Path(token_file).read_text().strip() or None
        except OSError as exc:
            from xfer.client.errors import InvalidArgumentError

            raise InvalidArgumentError(f"cannot read --token-file {token_file!r}: {exc.strerror}") from None
    return environ.get("XFER_TOKEN") or None


def make_client(args: argparse.Namespace, environ: Mapping[str, str]):
    """A `Client` configured from flags, then environment, then defaults."""
    from xfer.client.cache import default_cache_dir
    from xfer.client.sdk import Client
    from xfer.client.transport import TlsConfig

    ca = _setting(args, "tls_ca", environ, "XFER_TLS_CA")
    cert = _setting(args, "tls_cert", environ, "XFER_TLS_CERT")
    key = _setting(args, "tls_key", environ, "XFER_TLS_KEY")
    tls: TlsConfig | bool | None = None
    if ca or cert or key:
        tls = TlsConfig(root_ca=Path(ca) if ca else None, client_cert=Path(cert) if cert else None,
                        client_key=Path(key) if key else None)
    elif getattr(args, "tls", False):
        tls = True
    cache_dir = getattr(args, "cache_dir", None) or default_cache_dir(environ)
    return Client(_setting(args, "server", environ, "XFER_SERVER", DEFAULT_SERVER), token=_token(args, environ),
                  tls=tls, cache_dir=cache_dir, timeout=getattr(args, "timeout", 30.0))


def _progress(args: argparse.Namespace, io: Io, label: str, *, unit: str = "bytes"):
    from xfer.client.progress import ProgressBar

    # On stderr, so it never disturbs --json output on stdout.
    return ProgressBar(label, stream=io.err, unit=unit)


# -- commands ------------------------------------------------------------------
def cmd_models(args: argparse.Namespace, io: Io, client: Any, environ: Mapping[str, str]) -> int:
    """`xfer models`"""
    models = client.list_models()
    if args.json:
        io.json([m.to_dict() for m in models])
        return EXIT_OK
    if not models:
        io.print("no models registered yet (an operator adds one with `xfer register`)")
        return EXIT_OK
    rows = []
    for m in models:
        card = m.latest_card
        aliases = ", ".join(f"{a}={v}" for a, v in m.aliases.items() if a != "latest")
        rows.append([m.model, m.version_count, m.latest_version.rsplit("/", 1)[-1], aliases or "-",
                     card.architecture if card else "-", card.num_classes if card else "-",
                     "yes" if card and card.private else "no", _when(m.update_time)])
    io.print(table(["MODEL", "VERSIONS", "LATEST", "ALIASES", "ARCH", "CLASSES", "DP", "UPDATED"], rows))
    return EXIT_OK


def cmd_versions(args: argparse.Namespace, io: Io, client: Any, environ: Mapping[str, str]) -> int:
    """`xfer versions MODEL`"""
    versions = client.list_versions(args.model)
    if args.json:
        io.json([v.to_dict() for v in versions])
        return EXIT_OK
    rows = [[v.ref, ", ".join(v.aliases) or "-", _when(v.create_time),
             " ".join(f"{a.format.value}" for a in v.artifacts),
             f"deprecated: {v.deprecation_message}" if v.deprecated else ""] for v in versions]
    io.print(table(["VERSION", "ALIASES", "CREATED", "ARTIFACTS", "STATUS"], rows))
    return EXIT_OK


def cmd_show(args: argparse.Namespace, io: Io, client: Any, environ: Mapping[str, str]) -> int:
    """`xfer show REF`"""
    from xfer.client.progress import human_bytes

    v = client.get(args.ref)
    if args.json:
        io.json(v.to_dict())
        return EXIT_OK
    c = v.card
    privacy = f"DP-SGD, epsilon={c.dp_epsilon:g}, delta={c.dp_delta:g}" if c.private else "none (not trained with DP)"
    norm = (f"mean={list(c.input_mean)} std={list(c.input_std)}" if c.input_mean else "none")
    fields = [
        ("name", v.name),
        ("version", f"{v.ref}  (aliases: {', '.join(v.aliases) or '-'})"),
        ("created", _when(v.create_time)),
    ]
    if v.deprecated:
        fields.append(("DEPRECATED", v.deprecation_message or "yes"))
    fields += [
        ("architecture", f"{c.architecture} {json.dumps(c.architecture_config, sort_keys=True)}"),
        ("input", f"{list(c.input_shape)} {c.input_dtype}, normalisation {norm}"
                  + (f", {c.preprocessing}" if c.preprocessing else "")),
        ("output", f"{c.num_classes} classes" + (f": {', '.join(c.label_names)}" if c.label_names else "")),
        ("blocks", " -> ".join(c.blocks) + f"  (head: {c.head})"),
        ("source task", c.source_task or "-"),
        ("source privacy", privacy),
        ("license", c.license),
        ("frameworks", ", ".join(f"{k} {val}" for k, val in sorted(c.framework_versions.items())) or "-"),
    ]
    if c.description:
        fields.append(("description", c.description))
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        io.print(f"{key.ljust(width)}  {value}")
    io.print()
    io.print(table(["FORMAT", "SIZE", "SHA256", "DERIVED"],
                   [[a.format.value, human_bytes(a.size_bytes), a.sha256, "yes" if a.derived else "no"]
                    for a in v.artifacts]))
    return EXIT_OK


def cmd_pull(args: argparse.Namespace, io: Io, client: Any, environ: Mapping[str, str]) -> int:
    """`xfer pull REF [--format F]`"""
    from xfer.client.progress import human_bytes

    bar = _progress(args, io, f"pull {args.ref}")
    try:
        result = client.pull(args.ref, args.format, progress=bar)
    finally:
        bar.close()
    if args.json:
        io.json({"ref": result.model_version.ref, "model_version": result.model_version.name,
                 "format": result.format.value, "path": str(result.path), "blob_path": str(result.blob_path),
                 "sha256": result.sha256, "size_bytes": result.size_bytes, "cache_hit": result.cache_hit,
                 "transferred_bytes": result.transferred_bytes, "resumed_from": result.resumed_from,
                 "deprecated": result.model_version.deprecated})
        return EXIT_OK
    how = ("already cached" if result.cache_hit else
           f"resumed at {human_bytes(result.resumed_from)}" if result.resumed_from else "downloaded")
    io.print(f"{result.model_version.ref} {result.format.value} {human_bytes(result.size_bytes)} "
             f"sha256:{result.sha256[:12]} ({how}, verified)")
    io.print(str(result.path))
    return EXIT_OK


def cmd_register(args: argparse.Namespace, io: Io, client: Any, environ: Mapping[str, str]) -> int:
    """`xfer register FOLDER --model ID`"""
    from xfer.client.progress import human_bytes

    bar = _progress(args, io, f"upload {args.model}")
    try:
        version = client.register(args.folder, args.model, progress=bar)
    finally:
        bar.close()
    if args.json:
        io.json(version.to_dict())
        return EXIT_OK
    artifacts = ", ".join(f"{a.format.value} {human_bytes(a.size_bytes)}" + (" (derived)" if a.derived else "")
                          for a in version.artifacts)
    io.print(f"registered {version.ref} ({artifacts}); aliases: {', '.join(version.aliases) or '-'}")
    return EXIT_OK


def cmd_alias(args: argparse.Namespace, io: Io, client: Any, environ: Mapping[str, str]) -> int:
    """`xfer alias REF ALIAS`"""
    version = client.set_alias(args.ref, args.alias)
    if args.json:
        io.json(version.to_dict())
    else:
        io.print(f"{version.model}@{args.alias} -> {version.ref}")
    return EXIT_OK


def cmd_deprecate(args: argparse.Namespace, io: Io, client: Any, environ: Mapping[str, str]) -> int:
    """`xfer deprecate REF --message M`"""
    version = client.deprecate(args.ref, args.message)
    if args.json:
        io.json(version.to_dict())
    else:
        io.print(f"deprecated {version.ref}" + (f": {version.deprecation_message}" if version.deprecation_message else ""))
    return EXIT_OK


def cmd_delete(args: argparse.Namespace, io: Io, client: Any, environ: Mapping[str, str]) -> int:
    """`xfer delete REF`"""
    from xfer.client.refs import parse_ref

    ref = parse_ref(args.ref)
    client.delete(ref)
    if args.json:
        io.json({"deleted": ref.version_name})
    else:
        io.print(f"deleted {ref}")
    return EXIT_OK


def cmd_runs(args: argparse.Namespace, io: Io, client: Any, environ: Mapping[str, str]) -> int:
    """`xfer runs [--model REF] [--strategy S]`"""
    runs = client.list_runs(model=args.model, strategy=args.strategy)
    if args.json:
        io.json([r.to_dict() for r in runs])
        return EXIT_OK
    if not runs:
        io.print("no runs reported yet")
        return EXIT_OK
    rows = []
    for r in runs:
        version = r.model_version.removeprefix("models/").replace("/versions/", ":")
        metrics = _metrics_cell(r.metrics)
        dp = f"eps={r.privacy.epsilon_spent:.2f}" if r.privacy.dp else "no"
        rows.append([r.run_id, version, r.strategy, dp, metrics, r.train_examples_pow2, r.device_kind.value,
                     f"{r.wall_seconds:.1f}s", _when(r.create_time)])
    io.print(table(["RUN", "VERSION", "STRATEGY", "DP", "METRICS", "N(2^k)", "DEVICE", "WALL", "CREATED"], rows))
    return EXIT_OK


def _metrics_cell(metrics: Mapping[str, float], *, limit: int = 3) -> str:
    # Top-level metrics first (accuracy, loss, ...); per-class ones like class/3/accuracy
    # would make the table unreadable, so they are only counted (all are in --json).
    ordered = sorted(metrics, key=lambda k: ("/" in k, k != "accuracy", k))
    shown = " ".join(f"{k}={_num(metrics[k])}" for k in ordered[:limit])
    rest = len(ordered) - limit
    return f"{shown} (+{rest})" if rest > 0 else shown


def cmd_leaderboard(args: argparse.Namespace, io: Io, client: Any, environ: Mapping[str, str]) -> int:
    """`xfer leaderboard [--metric M] [--model REF]`"""
    board = client.summarize_runs(metric=args.metric, model=args.model, goal=args.goal)
    if args.json:
        io.json(board.to_dict())
        return EXIT_OK
    if not board.entries:
        io.print(f"no runs report {board.metric or args.metric!r} yet")
        return EXIT_OK
    rows = [[i, e.model_version.removeprefix("models/").replace("/versions/", ":"), e.strategy,
             "yes" if e.dp else "no", e.count, f"{e.mean:.4f}", f"{e.std:.4f}", f"{e.best:.4f}", e.best_run_id]
            for i, e in enumerate(board.entries, 1)]
    io.print(f"metric: {board.metric or args.metric} ({args.goal})")
    io.print(table(["#", "VERSION", "STRATEGY", "DP", "RUNS", "MEAN", "STD", "BEST", "BEST RUN"], rows))
    return EXIT_OK


def cmd_finetune(rest: list[str], io: Io, base: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`xfer finetune REF DATA ...`: pull, adapt with client/finetune, save locally, report.

    Parsed here, with the options client/finetune/command.py declares, so
    that other commands never import the training code.
    """
    try:
        from xfer.client.finetune import command as finetune_command
    except ImportError as exc:
        from xfer.client.errors import UnimplementedError

        raise UnimplementedError(f"fine-tuning is not available in this installation ({exc})") from None
    from xfer.client.cache import default_cache_dir
    from xfer.client.domain import Run

    parser = _Parser(prog="xfer finetune", description="Pull REF, adapt it to local DATA, save it, report the run.")
    parser.add_argument("ref", metavar="REF")
    finetune_command.add_arguments(parser)
    parser.add_argument("--no-report", action="store_true", help="adapt and save, but report nothing")
    parser.add_argument("--run-id", default=None, help="id of the report (default: a random one)")
    _connection_options(parser, suppress=True)
    args = parser.parse_args(rest)
    for key, value in vars(base).items():
        if not hasattr(args, key):
            setattr(args, key, value)
    with make_client(args, environ) as client:
        download = _progress(args, io, f"pull {args.ref}")
        try:
            loaded = client.load_torch(args.ref, progress=download)
        finally:
            download.close()
        as_json = getattr(args, "json", False)
        # Per-epoch progress only for a person watching (and never into --json output).
        live = not as_json and bool(getattr(io.err, "isatty", lambda: False)())
        outcome = finetune_command.run(args, model=loaded.module, card=loaded.card,
                                       cache_dir=Path(getattr(args, "cache_dir", None) or default_cache_dir(environ)),
                                       progress=live)
        reported = None
        if not args.no_report:
            run = Run.from_report_fields(
                dict(outcome.report_fields()), model_version=loaded.model_version.name,
                run_id=args.run_id or f"{loaded.model_version.model}-{uuid.uuid4().hex[:16]}",
            )
            reported = client.report(run)
    paths = getattr(outcome, "paths", None)
    if as_json:
        io.json({"model_version": loaded.model_version.name,
                 "outputs": _jsonable(paths) if paths is not None else None,
                 "report_fields": _jsonable(outcome.report_fields()),
                 "run": reported.run.to_dict() if reported else None,
                 "duplicate": reported.duplicate if reported else None})
    else:
        if not live and hasattr(outcome, "summary"):
            io.print(outcome.summary())  # printed by the engine itself when live
        if reported:
            io.print(f"reported run {reported.run.run_id} on {loaded.model_version.ref}")
    return EXIT_OK


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.name.startswith("_")}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


# -- entry point ---------------------------------------------------------------
class _Formatter(logging.Formatter):
    """`xfer: warning: ...`, matching the `xfer: error: ...` lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"xfer: {record.levelname.lower()}: {record.getMessage()}"


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def main(argv: Sequence[str] | None = None, *, environ: Mapping[str, str] | None = None,
         stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Runs `xfer` with `argv` and returns the exit status (the console script exits with it)."""
    environ = os.environ if environ is None else environ
    io = Io(out=stdout or sys.stdout, err=stderr or sys.stderr)
    argv = list(sys.argv[1:] if argv is None else argv)
    secret: str | None = None
    try:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = io.out, io.err  # argparse prints help/usage to sys.*
        try:
            args = build_parser().parse_args(argv)
        finally:
            sys.stdout, sys.stderr = old_out, old_err
    except _Exit as exc:
        return exc.code
    handler = logging.StreamHandler(io.err)
    handler.setFormatter(_Formatter())
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[handler], force=True)
    try:
        secret = _token(args, environ)
        if args.command == "finetune":
            old_out, old_err = sys.stdout, sys.stderr
            sys.stdout, sys.stderr = io.out, io.err
            try:
                return cmd_finetune(args.rest, io, args, environ)
            finally:
                sys.stdout, sys.stderr = old_out, old_err
        with make_client(args, environ) as client:
            return args.handler(args, io, client, environ)
    except _Exit as exc:
        return exc.code
    except XferError as exc:
        io.err.write(f"xfer: error: {_redact(str(exc), secret)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        io.err.write("xfer: interrupted (a partial download is kept; run the command again to resume)\n")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001  (one line, never a traceback, unless -v)
        if not _expected(exc):
            if args.verbose:
                traceback.print_exc(file=io.err)
            io.err.write(f"xfer: error: unexpected {type(exc).__name__}: {_redact(str(exc), secret)} "
                         f"(run with -v for details)\n")
            return EXIT_FAILURE
        # Errors of models/, client/finetune and local files: already written for people.
        if args.verbose:
            traceback.print_exc(file=io.err)
        io.err.write(f"xfer: error: {_redact(str(exc), secret)}\n")
        return EXIT_FAILURE


def _expected(exc: BaseException) -> bool:
    # Errors raised on purpose, with messages meant for people (vs. bugs).
    module = type(exc).__module__
    return isinstance(exc, (ValueError, LookupError, OSError)) or module.startswith(("xfer.models", "xfer.client.finetune"))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
