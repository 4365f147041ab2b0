"""The xfer SDK: discover, pull, load and report on source models.

    from xfer.client import Client

    with Client("localhost:50051", token=...) as xfer:
        for model in xfer.list_models():
            print(model.model, model.latest_version)
        loaded = xfer.load_torch("digits-convnet@stable")   # LoadedModel(module, card, ...)
        session = xfer.load_onnx("digits-convnet:3")         # onnxruntime.InferenceSession

References follow client/refs.py (`model`, `model:3`, `model@alias`; the
default alias is `latest`). Errors are the typed, builtin-compatible
classes of client/errors.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from xfer.client import convert, signing
from xfer.client.cache import Cache, CachedRef, default_cache_dir
from xfer.client.domain import (
    Artifact,
    ArtifactFormat,
    Leaderboard,
    LoadedModel,
    ManifestSignature,
    ModelSummary,
    ModelVersion,
    PullResult,
    ReportedRun,
    Run,
)
from xfer.client.download import Progress, fetch_artifact
from xfer.client.errors import (
    InvalidArgumentError,
    NotFoundError,
    OfflineError,
    SignatureError,
    UnavailableError,
)
from xfer.client.policy import ModelPolicy
from xfer.client.refs import ModelRef, parse_ref, validate_alias, validate_model_id
from xfer.client.transport import RetryPolicy, TlsConfig, Transport, UploadDeclaration
from xfer.models.card import ModelCard, validate_card
from xfer.models.errors import ModelError
from xfer.models.files import sha256_file

log = logging.getLogger(__name__)

DEFAULT_TARGET = "localhost:50051"
#: Bytes per upload message: well under gRPC's default 4 MiB receive limit.
UPLOAD_CHUNK_BYTES = 1 << 20
CARD_FILE = "card.json"
_SUFFIX_FORMATS = {
    ".safetensors": ArtifactFormat.SAFETENSORS,
    ".onnx": ArtifactFormat.ONNX,
    ".pt": ArtifactFormat.TORCH_STATE_DICT,
    ".pth": ArtifactFormat.TORCH_STATE_DICT,
}


class Client:
    """A connection to one xfer server plus the local cache.

    `tls`: None for plaintext (loopback, tests), True for TLS with the
    system's root CAs, or a `TlsConfig` (private root CA, mTLS cert/key).
    `cache_dir` defaults to `$XFER_CACHE` or `~/.cache/xfer`. `timeout` is
    the deadline of every unary call in seconds; pulls and uploads stream
    without one (`stream_timeout` sets one for pulls).

    `offline=True` (the CLI sets it from `XFER_OFFLINE=1`, like
    `HF_HUB_OFFLINE`) never contacts the server: references resolve from
    what this cache recorded when they were last pulled, pulls of cached
    artifacts succeed, and everything else raises `OfflineError`.

    `trusted_keys` are publisher public keys (PEM files, or folders of
    `*.pub`); with `require_signed=True` every pull first verifies the
    version's signed manifest against them and raises `SignatureError`,
    having downloaded and cached nothing, when it is missing, made by an
    untrusted key, or does not match the card and digests the server sent.

    `policy` (a `ModelPolicy`: maximum DP epsilon, maximum membership-
    inference AUC, audit required) is checked on the card before every pull
    and load; a model that misses it raises `PolicyError` having downloaded
    nothing. `pull`/`load_*` take a `policy` of their own that replaces it.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: TlsConfig | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        stream_timeout: float | None = None,
        offline: bool = False,
        trusted_keys: Sequence[str | os.PathLike] = (),
        require_signed: bool = False,
        policy: ModelPolicy = ModelPolicy(),
    ) -> None:
        if stream_timeout is not None and not 0 < stream_timeout < float("inf"):  # NaN fails too
            raise InvalidArgumentError(f"stream_timeout must be a positive number of seconds, got {stream_timeout}")
        self.target = target
        self.cache = Cache(default_cache_dir(os.environ) if cache_dir is None else cache_dir)
        self.retry = retry
        self.stream_timeout = stream_timeout
        self.offline = offline
        self.require_signed = require_signed
        self.policy = policy
        self.trusted_keys = signing.load_trusted_keys(trusted_keys) if trusted_keys else ()
        self._transport = Transport(target, token=token, tls=tls, timeout=timeout, retry=retry)

    def __repr__(self) -> str:  # the token stays out of reprs, logs and tracebacks
        return f"Client(target={self.target!r}, cache={str(self.cache.root)!r})"

    def close(self) -> None:
        """Closes the channel."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _online(self, what: str) -> Transport:
        if self.offline:
            raise OfflineError(
                f"offline mode (XFER_OFFLINE=1): {what} needs the server; unset XFER_OFFLINE "
                "to reach it, or use a model already in the cache"
            )
        return self._transport

    # -- discovery --------------------------------------------------------------
    def list_models(self, *, policy: ModelPolicy | None = None) -> list[ModelSummary]:
        """Every model on the server, ordered by id (all pages); with `policy`, those whose latest card meets it."""
        models: list[ModelSummary] = []
        token = ""
        while True:
            page = self._online("listing models").list_models(page_token=token)
            models.extend(convert.model_from_pb(m) for m in page.models)
            token = page.next_page_token
            if not token:
                return models if policy is None else [m for m in models if policy.allows(m.latest_card)]

    def list_versions(self, model: str | ModelRef) -> list[ModelVersion]:
        """Every version of `model` (a model id or reference; its version part is ignored), newest first."""
        ref = parse_ref(model)
        versions: list[ModelVersion] = []
        token = ""
        while True:
            page = self._online("listing versions").list_model_versions(ref.model_name, page_token=token)
            versions.extend(convert.version_from_pb(v) for v in page.model_versions)
            token = page.next_page_token
            if not token:
                return versions

    def get(self, ref: str | ModelRef) -> ModelVersion:
        """The version `ref` names (its card, artifacts with sizes and digests, aliases).

        Offline, the version as this cache last resolved it.
        """
        if self.offline:
            return self._resolve(parse_ref(ref))
        version = convert.version_from_pb(
            self._online("resolving a reference").get_model_version(parse_ref(ref).version_name)
        )
        if version.deprecated:
            log.warning("%s is deprecated: %s", version.ref, version.deprecation_message or "(no message)")
        return version

    # -- pulling ----------------------------------------------------------------
    def pull(
        self,
        ref: str | ModelRef,
        fmt: ArtifactFormat | str = ArtifactFormat.SAFETENSORS,
        *,
        progress: Progress | None = None,
        require_signed: bool | None = None,
        policy: ModelPolicy | None = None,
    ) -> PullResult:
        """Downloads (or finds in the cache) one artifact of `ref`, verified by sha256.

        A second pull of the same digest transfers nothing; an interrupted
        pull resumes from its partial file; while the server is unreachable,
        a reference pulled before is served from the cache (with a warning).
        `progress(done, total)` is called as bytes arrive. `require_signed`
        (default: the client's setting) verifies the signed manifest first;
        `policy` (default: the client's) is checked on the card before any byte moves.
        """
        parsed = parse_ref(ref)
        fmt = ArtifactFormat.parse(fmt)
        version = self._resolve(parsed)
        artifact = version.artifact(fmt)
        if artifact is None:
            have = ", ".join(a.format.value for a in version.artifacts) or "none"
            raise NotFoundError(f"{version.ref} has no {fmt.value} artifact (available: {have})")
        if self.require_signed if require_signed is None else require_signed:
            self.verify_signature(version, fmt)
        (self.policy if policy is None else policy).enforce(version.card, what=version.ref)
        if self.offline and not self.cache.has_blob(artifact.sha256, size_bytes=artifact.size_bytes):
            raise OfflineError(
                f"offline mode (XFER_OFFLINE=1): the {fmt.value} artifact of {version.ref} is not "
                "in the cache; pull it once while online"
            )
        outcome = fetch_artifact(
            transport=self._transport,
            cache=self.cache,
            version_name=version.name,
            fmt=fmt,
            sha256=artifact.sha256,
            size_bytes=artifact.size_bytes,
            retry=self.retry,
            progress=progress,
            stream_timeout=self.stream_timeout,
        )
        self._remember(parsed, version)
        path = self.cache.link_snapshot(
            model=version.model, version=version.version, filename=f"model{fmt.suffix}", sha256=artifact.sha256
        )
        return PullResult(
            path=path,
            blob_path=outcome.blob_path,
            model_version=version,
            format=fmt,
            sha256=artifact.sha256,
            size_bytes=artifact.size_bytes,
            cache_hit=outcome.cache_hit,
            transferred_bytes=outcome.transferred_bytes,
            resumed_from=outcome.resumed_from,
            restarts=outcome.restarts,
        )

    def _resolve(self, ref: ModelRef) -> ModelVersion:
        # Online, the server says what `ref` means. Offline, or when it cannot be
        # reached, a reference this cache resolved before still works, so an edge
        # device keeps loading the models it has; anything not cached still fails.
        if self.offline:
            cached = self._cached_version(ref)
            if cached is None:
                raise OfflineError(f"offline mode (XFER_OFFLINE=1): {ref} was never pulled into {self.cache.root}")
            return cached
        try:
            return self.get(ref)
        except UnavailableError as exc:
            cached = self._cached_version(ref)
            if cached is None:
                raise
            log.warning("%s; using %s as this cache last resolved it", exc, ref)
            return cached

    def _cached_version(self, ref: ModelRef) -> ModelVersion | None:
        cached = self.cache.read_ref(model=ref.model, selector=ref.selector)
        if cached is None or cached.card is None:
            return None
        return ModelVersion(
            name=cached.model_version,
            model=ref.model,
            version=cached.version,
            card=ModelCard.from_dict(cached.card),
            artifacts=tuple(
                Artifact(
                    format=ArtifactFormat.parse(fmt),
                    size_bytes=int(a["size_bytes"]),
                    sha256=a["sha256"],
                    derived=bool(a.get("derived", False)),
                )
                for fmt, a in cached.artifacts.items()
            ),
            deprecated=cached.deprecated,
            deprecation_message=cached.deprecation_message,
            signatures=tuple(ManifestSignature.from_dict(d) for d in cached.signatures),
        )

    def verify_signature(self, version: ModelVersion, fmt: ArtifactFormat | str | None = None) -> str:
        """Verifies `version`'s signed manifest against the trusted keys; returns the signing key's id.

        With `fmt`, that artifact must also be one the operator signed (not one
        the server derived). Raises `SignatureError` saying what failed.
        """
        if fmt is not None:
            artifact = version.artifact(fmt)
            if artifact is not None and artifact.derived:
                raise SignatureError(
                    f"the {artifact.format.value} artifact of {version.ref} was derived by the "
                    "server, so the operator's signature does not cover it; pull a signed format "
                    "(e.g. safetensors) or ask the operator to upload and sign this one"
                )
        manifest = signing.manifest_bytes(
            model=version.model,
            card=version.card,
            artifacts={a.format.value: (a.sha256, a.size_bytes) for a in version.artifacts if not a.derived},
        )
        return signing.verify(
            manifest, signatures=version.signatures, trusted=self.trusted_keys, what=version.ref
        ).key_id

    def _remember(self, ref: ModelRef, version: ModelVersion) -> None:
        entry = CachedRef(
            model_version=version.name,
            version=version.version,
            artifacts={
                a.format.value: {"sha256": a.sha256, "size_bytes": a.size_bytes, "derived": a.derived}
                for a in version.artifacts
            },
            signatures=[sig.to_dict() for sig in version.signatures],
            card=version.card.to_dict(),
            deprecated=version.deprecated,
            deprecation_message=version.deprecation_message,
        )
        for selector in {ref.selector, str(version.version)}:
            self.cache.write_ref(model=version.model, selector=selector, ref=entry)

    def load_torch(
        self,
        ref: str | ModelRef,
        *,
        progress: Progress | None = None,
        require_signed: bool | None = None,
        policy: ModelPolicy | None = None,
    ) -> LoadedModel:
        """Pulls the safetensors artifact and rebuilds the module from `models/`, loaded strictly, in eval mode."""
        from xfer.models.weights import load_safetensors, model_from_card, require_weights_fit

        pulled = self.pull(
            ref, ArtifactFormat.SAFETENSORS, progress=progress, require_signed=require_signed, policy=policy
        )
        card = pulled.model_version.card
        require_weights_fit(card, artifact_bytes=pulled.blob_path.stat().st_size)
        module = load_safetensors(model_from_card(card), pulled.blob_path)
        module.eval()
        return LoadedModel(module=module, card=card, model_version=pulled.model_version, path=pulled.path)

    def load_onnx(
        self,
        ref: str | ModelRef,
        *,
        providers: Sequence[str] | None = None,
        progress: Progress | None = None,
        require_signed: bool | None = None,
        policy: ModelPolicy | None = None,
    ) -> Any:
        """Pulls the ONNX artifact and opens an `onnxruntime.InferenceSession` on it (CPU by default)."""
        import onnxruntime as ort

        pulled = self.pull(ref, ArtifactFormat.ONNX, progress=progress, require_signed=require_signed, policy=policy)
        return ort.InferenceSession(str(pulled.blob_path), providers=list(providers or ["CPUExecutionProvider"]))

    # -- metrics ----------------------------------------------------------------
    def report(self, run: Run) -> ReportedRun:
        """Reports an adaptation run; idempotent on `run.run_id` (a retry returns the stored run)."""
        name = parse_ref(run.model_version).version_name
        return convert.reported_from_pb(self._online("reporting a run").report_run(run, model_version=name))

    def list_runs(self, *, model: str | ModelRef | None = None, strategy: str | None = None) -> list[Run]:
        """Reported runs, newest first; `model` is a model id (all versions) or a versioned reference."""
        runs: list[Run] = []
        token = ""
        while True:
            page = self._online("listing runs").list_runs(
                model=_filter_name(model), strategy=strategy or "", page_token=token
            )
            runs.extend(convert.run_from_pb(r) for r in page.runs)
            token = page.next_page_token
            if not token:
                return runs

    def summarize_runs(
        self, *, metric: str = "accuracy", model: str | ModelRef | None = None, goal: str = "maximize"
    ) -> Leaderboard:
        """The leaderboard of `metric` per (version, strategy, dp), best mean first."""
        reply = self._online("the leaderboard").summarize_runs(metric=metric, model=_filter_name(model), goal=goal)
        return convert.leaderboard_from_pb(reply)

    # -- operator calls ---------------------------------------------------------
    def register(
        self,
        source: str | os.PathLike | Sequence[str | os.PathLike],
        model_id: str,
        *,
        card: ModelCard | None = None,
        progress: Progress | None = None,
        chunk_size: int = UPLOAD_CHUNK_BYTES,
        signing_key: str | os.PathLike | None = None,
    ) -> ModelVersion:
        """Uploads a new version of `model_id` (operator token needed).

        `source` is a folder as `python -m xfer.models.train` writes it
        (card.json, model.safetensors, optionally model.onnx) or a list of
        such files; `.pt` state dicts are accepted and converted by the
        server. Files are hashed, then streamed in `chunk_size` pieces, never
        read whole into memory.
        """
        validate_model_id(model_id)
        files = _upload_files(source)
        if card is None:
            card = _read_card(files.card)
        declarations = [
            UploadDeclaration(format=fmt, size_bytes=path.stat().st_size, sha256=sha256_file(path))
            for fmt, path in files.artifacts.items()
        ]
        total = sum(d.size_bytes for d in declarations)
        signatures = []
        if signing_key is not None:
            manifest = signing.manifest_bytes(
                model=model_id, card=card, artifacts={d.format.value: (d.sha256, d.size_bytes) for d in declarations}
            )
            signatures.append(signing.sign(manifest, signing.load_private_key(signing_key)))
        reply = self._online("registering").create_model_version(
            parent=f"models/{model_id}",
            card=card,
            declarations=declarations,
            chunks=_chunks(files.artifacts, chunk_size=chunk_size, total=total, progress=progress),
            signatures=signatures,
        )
        return convert.version_from_pb(reply)

    def set_alias(self, ref: str | ModelRef, alias: str) -> ModelVersion:
        """Points `alias` at the version `ref` names (moving it if it exists)."""
        validate_alias(alias)
        return convert.version_from_pb(self._online("setting an alias").set_alias(parse_ref(ref).version_name, alias))

    def deprecate(self, ref: str | ModelRef, message: str = "") -> ModelVersion:
        """Flags the version as deprecated; it stays readable and clients see `message`."""
        return convert.version_from_pb(self._online("deprecating").deprecate(parse_ref(ref).version_name, message))

    def delete(self, ref: str | ModelRef) -> None:
        """Deletes one version and its aliases. `ref` must name the version or alias explicitly."""
        parsed = parse_ref(ref)
        if not parsed.explicit:
            # A bare id would mean `latest`: too easy to delete the wrong thing by accident.
            raise InvalidArgumentError(f"say which version to delete, e.g. {parsed.model}:3 or {parsed.model}@latest")
        self._online("deleting").delete(parsed.version_name)


def _filter_name(model: str | ModelRef | None) -> str:
    if model is None or model == "":
        return ""
    ref = parse_ref(model)
    return ref.version_name if ref.explicit else ref.model_name


@dataclasses.dataclass(frozen=True)
class _UploadFiles:
    card: Path | None
    artifacts: dict[ArtifactFormat, Path]


def _upload_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> _UploadFiles:
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.exists():
            raise InvalidArgumentError(f"{str(root)!r} does not exist")
        paths = sorted(p for p in root.iterdir() if p.is_file()) if root.is_dir() else [root]
        strict = not root.is_dir()
    else:
        paths = [Path(p) for p in source]
        strict = True
    card: Path | None = None
    artifacts: dict[ArtifactFormat, Path] = {}
    for path in paths:
        if path.name == CARD_FILE or (strict and path.suffix == ".json"):
            card = path
            continue
        fmt = _SUFFIX_FORMATS.get(path.suffix)
        if fmt is None:
            if strict:
                raise InvalidArgumentError(
                    f"cannot tell the format of {str(path)!r}: expected .safetensors, .onnx, .pt or card.json"
                )
            continue  # a folder may hold logs, plots, ...
        if fmt in artifacts:
            raise InvalidArgumentError(f"two {fmt.value} files: {str(artifacts[fmt])!r} and {str(path)!r}")
        if not path.is_file():
            raise InvalidArgumentError(f"{str(path)!r} is not a readable file")
        artifacts[fmt] = path
    if not artifacts:
        raise InvalidArgumentError(
            f"no model weights found in {source!s}: expected model.safetensors "
            f"(and optionally model.onnx), as `python -m xfer.models.train` writes them"
        )
    return _UploadFiles(card, artifacts)


def _read_card(path: Path | None) -> ModelCard:
    if path is None:
        raise InvalidArgumentError(
            f"no {CARD_FILE} found; pass the folder `python -m xfer.models.train` wrote, or the card explicitly"
        )
    try:
        card = ModelCard.from_dict(json.loads(path.read_text()))
        validate_card(card)  # the server's own rules, before any byte is uploaded
        return card
    except json.JSONDecodeError as exc:
        raise InvalidArgumentError(f"{str(path)!r} is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidArgumentError(f"{str(path)!r} is not a model card: its JSON is nested too deeply") from None
    except ModelError as exc:
        raise InvalidArgumentError(f"{str(path)!r}: {exc}") from None
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read {str(path)!r}: {exc.strerror}") from None


def _chunks(
    artifacts: Mapping[ArtifactFormat, Path],
    *,
    chunk_size: int,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> Iterator[tuple[ArtifactFormat, bytes]]:
    sent = 0
    for fmt, path in artifacts.items():
        with open(path, "rb") as f:
            while block := f.read(chunk_size):
                yield fmt, block
                sent += len(block)
                if progress is not None:
                    progress(sent, total)
