"""`xfer models | versions | show | pull`: what the server offers, and getting it."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from xfer.client.cli.context import Context
from xfer.client.cli.output import Io, fields, table, when
from xfer.client.progress import ProgressBar, human_bytes
from xfer.errors import EXIT_CODES, XferError

EXIT_OK = 0


def register(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Declares the commands of this module."""
    p = command("models", cmd_models, "list source models")
    _policy_options(p, "list only models whose latest version")
    p = command("versions", cmd_versions, "list the versions of a model, newest first")
    p.add_argument("model", metavar="MODEL")
    p = command("show", cmd_show, "show a version's card and artifacts")
    p.add_argument("ref", metavar="REF")
    p = command("pull", cmd_pull, "download an artifact into the cache (verified, resumable)")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--format", default="safetensors", choices=["safetensors", "onnx"])
    _policy_options(p, "refuse (exit 16) unless the model")


def _policy_options(p: argparse.ArgumentParser, what: str) -> None:
    group = p.add_argument_group("privacy policy (judged on the model card)")
    group.add_argument(
        "--max-epsilon", type=float, default=None, metavar="EPS", help=f"{what} was trained with DP at epsilon <= EPS"
    )
    group.add_argument(
        "--max-mia-auc",
        type=float,
        default=None,
        metavar="AUC",
        help=f"{what} carries a membership-inference audit with AUC <= AUC",
    )
    group.add_argument("--require-audit", action="store_true", help=f"{what} carries a membership-inference audit")


def _policy(args: argparse.Namespace) -> Any:
    from xfer.client.policy import ModelPolicy

    try:
        return ModelPolicy(max_epsilon=args.max_epsilon, max_mia_auc=args.max_mia_auc, require_audit=args.require_audit)
    except ValueError as exc:
        raise PolicyOptionError(f"{exc} (--max-epsilon, --max-mia-auc)") from None


class PolicyOptionError(XferError):
    """A privacy-policy option out of range."""

    exit_code = EXIT_CODES["usage"]


def cmd_models(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer models`"""
    client = ctx.client
    policy = _policy(args)
    models = client.list_models(policy=policy if policy.active else None)
    if args.json:
        io.json([m.to_dict() for m in models])
        return EXIT_OK
    if not models and policy.active:
        io.print("no model meets the privacy policy given (its latest version's card is judged)")
        return EXIT_OK
    if not models:
        io.print("no models registered yet (an operator adds one with `xfer register`)")
        return EXIT_OK
    rows = []
    for m in models:
        card = m.latest_card
        aliases = ", ".join(f"{a}={v}" for a, v in m.aliases.items() if a != "latest")
        rows.append(
            [
                m.model,
                m.version_count,
                m.latest_version.rsplit("/", 1)[-1],
                aliases or "-",
                card.architecture if card else "-",
                card.num_classes if card else "-",
                f"eps {card.dp_epsilon:.3g}" if card and card.private else "no",
                f"{card.audit.max_auc:.3f}" if card and card.audit and card.audit.max_auc is not None else "-",
                when(m.update_time),
            ]
        )
    io.print(table(["MODEL", "VERSIONS", "LATEST", "ALIASES", "ARCH", "CLASSES", "DP", "MIA AUC", "UPDATED"], rows))
    return EXIT_OK


def cmd_versions(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer versions MODEL`"""
    client = ctx.client
    versions = client.list_versions(args.model)
    if args.json:
        io.json([v.to_dict() for v in versions])
        return EXIT_OK
    rows = [
        [
            v.ref,
            ", ".join(v.aliases) or "-",
            when(v.create_time),
            " ".join(f"{a.format.value}" for a in v.artifacts),
            f"deprecated: {v.deprecation_message}" if v.deprecated else "",
        ]
        for v in versions
    ]
    io.print(table(["VERSION", "ALIASES", "CREATED", "ARTIFACTS", "STATUS"], rows))
    return EXIT_OK


def cmd_show(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer show REF`"""
    client = ctx.client
    v = client.get(args.ref)
    if args.json:
        io.json(v.to_dict())
        return EXIT_OK
    c = v.card
    privacy = f"DP-SGD, epsilon={c.dp_epsilon:g}, delta={c.dp_delta:g}" if c.private else "none (not trained with DP)"
    norm = f"mean={list(c.input_mean)} std={list(c.input_std)}" if c.input_mean else "none"
    rows: list[tuple[str, Any]] = [
        ("name", v.name),
        ("version", f"{v.ref}  (aliases: {', '.join(v.aliases) or '-'})"),
        ("created", when(v.create_time)),
    ]
    if v.deprecated:
        rows.append(("DEPRECATED", v.deprecation_message or "yes"))
    rows += [
        ("architecture", f"{c.architecture} {json.dumps(c.architecture_config, sort_keys=True)}"),
        (
            "input",
            f"{list(c.input_shape)} {c.input_dtype}, normalisation {norm}"
            + (f", {c.preprocessing}" if c.preprocessing else ""),
        ),
        ("output", f"{c.num_classes} classes" + (f": {', '.join(c.label_names)}" if c.label_names else "")),
        ("blocks", " -> ".join(c.blocks) + f"  (head: {c.head})"),
        ("source task", c.source_task or "-"),
        ("source privacy", privacy),
        ("license", c.license),
        ("frameworks", ", ".join(f"{k} {val}" for k, val in sorted(c.framework_versions.items())) or "-"),
    ]
    if c.description:
        rows.append(("description", c.description))
    rows += _audit_rows(c.audit)
    rows.append(("signatures", _signature_status(client, v)))
    io.print(fields(rows))
    io.print()
    io.print(
        table(
            ["FORMAT", "SIZE", "SHA256", "DERIVED"],
            [[a.format.value, human_bytes(a.size_bytes), a.sha256, "yes" if a.derived else "no"] for a in v.artifacts],
        )
    )
    return EXIT_OK


def _audit_rows(audit: Any) -> list[tuple[str, Any]]:
    if audit is None:
        return [("privacy audit", "none (ask the operator for `python -m xfer.models.train --audit`)")]
    rows: list[tuple[str, Any]] = [
        ("privacy audit", f"{audit.date}, {audit.method}; intervals at {audit.confidence:.0%} confidence")
    ]
    for a in audit.attacks:
        tprs = ", ".join(f"TPR@{p.fpr:g} FPR {p.tpr:.4f} [{p.tpr_low:.4f}, {p.tpr_high:.4f}]" for p in a.tpr_at_fpr)
        refs = f", {a.reference_models} reference models" if a.reference_models else ""
        rows.append(
            (
                f"  {a.attack}",
                f"AUC {a.auc:.3f} [{a.auc_low:.3f}, {a.auc_high:.3f}]; {tprs}; "
                f"{a.members} members / {a.non_members} non-members{refs}",
            )
        )
    if audit.dp is not None:
        d = audit.dp
        rows.append(
            (
                "  DP audit",
                f"epsilon >= {d.epsilon_lower_bound:.3f} measured (claimed {d.claimed_epsilon:.3f},"
                f" delta {d.delta:.1e}); {d.correct}/{d.guesses} guesses right, {d.canaries} "
                f"canaries; {d.method}",
            )
        )
    if audit.tool_versions:
        rows.append(("  tools", ", ".join(f"{k} {v}" for k, v in sorted(audit.tool_versions.items()))))
    return rows


def _signature_status(client: Any, version: Any) -> str:
    from xfer.client.errors import SignatureError

    if not version.signatures:
        return "none (unsigned)"
    signers = ", ".join(f"{s.algorithm}:{s.key_id}" for s in version.signatures)
    if not client.trusted_keys:
        return f"{signers} (not checked: no trusted keys configured)"
    try:
        return f"{signers} (valid, by trusted key {client.verify_signature(version)})"
    except SignatureError as exc:
        return f"{signers} (NOT VALID: {exc})"


def cmd_pull(args: argparse.Namespace, io: Io, ctx: Context) -> int:
    """`xfer pull REF [--format F]`"""
    client = ctx.client
    bar = ProgressBar(f"pull {args.ref}", stream=io.err)  # stderr: never disturbs --json on stdout
    try:
        result = client.pull(args.ref, args.format, progress=bar, policy=_policy(args))
    finally:
        bar.close()
    if args.json:
        io.json(
            {
                "ref": result.model_version.ref,
                "model_version": result.model_version.name,
                "format": result.format.value,
                "path": str(result.path),
                "blob_path": str(result.blob_path),
                "sha256": result.sha256,
                "size_bytes": result.size_bytes,
                "cache_hit": result.cache_hit,
                "transferred_bytes": result.transferred_bytes,
                "resumed_from": result.resumed_from,
                "deprecated": result.model_version.deprecated,
            }
        )
        return EXIT_OK
    how = (
        "already cached"
        if result.cache_hit
        else f"resumed at {human_bytes(result.resumed_from)}"
        if result.resumed_from
        else "downloaded"
    )
    io.print(
        f"{result.model_version.ref} {result.format.value} {human_bytes(result.size_bytes)} "
        f"sha256:{result.sha256[:12]} ({how}, verified)"
    )
    io.print(str(result.path))
    return EXIT_OK
