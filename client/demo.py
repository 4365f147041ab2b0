"""`make demo`: the whole product on the embedded defaults, as a newcomer would run it.

Every step is a real command — the same ones the README documents — run as
a subprocess and echoed with a `$` prompt, so the demo doubles as a worked
example: mint tokens, start `xfer-server` (SQLite + blob directory under
.demo/), train a source model on five Fashion-MNIST classes as the operator,
sign and register it, then as an edge client list, inspect, pull (verifying
the signature), adapt it to the five classes it never saw with and without
differential privacy and with the torch-free head fit, report, and read the
leaderboard. The server is always stopped at the end, also
when a step fails. Where Fashion-MNIST is not installed (and `make data`
could not install it), one line says so and the demo runs on scikit-learn's
digits instead.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from xfer.server.process import ServerProcess, ServerStartError

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
BIN = Path(sys.executable).parent


@dataclasses.dataclass(frozen=True)
class DemoData:
    """What the operator trains on and what the client adapts to: classes the source never saw (feature level)."""

    model: str
    data: str
    title: str
    train_args: tuple[str, ...]
    target: str


FASHION = DemoData(
    model="fashion-convnet",
    data="fashion-mnist",
    title="Fashion-MNIST classes 0-4 (T-shirt/top to Coat)",
    # A 12,000-image subset of the source pool: about a minute on two cores, ~0.9 held-out accuracy.
    train_args=("--data", "fashion-mnist", "--classes", "0-4", "--max-examples", "12000", "--epochs", "3"),
    # 50 labels per class of the five classes the source never saw (Sandal, Shirt, Sneaker, Bag, Ankle boot).
    target="fashion-mnist:classes=5-9,per_class=50",
)
DIGITS = DemoData(
    model="digits-convnet",
    data="digits",
    title="scikit-learn digits 0-4",
    train_args=("--data", "digits", "--classes", "0-4", "--epochs", "30"),
    target="digits:classes=5-9",
)


def choose_data() -> DemoData:
    """Fashion-MNIST where it is installed; else digits, saying so in one line."""
    from xfer.models.fashion import available

    if available():
        return FASHION
    print(
        "demo: Fashion-MNIST is not installed (sudo apt-get install dataset-fashion-mnist, or `make data` as "
        "root); running on scikit-learn's digits instead",
        flush=True,
    )
    return DIGITS


class DemoError(RuntimeError):
    """A step of the demo failed."""


def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


def step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run(*argv: str, env: dict[str, str] | None = None, capture: bool = False) -> str:
    """Runs one command, echoing it (tokens travel in the environment, never on the line)."""
    shown = " ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv))
    print(f"$ {shown}", flush=True)
    result = subprocess.run(
        argv, cwd=ROOT, env={**os.environ, **(env or {})}, text=True, stdout=subprocess.PIPE if capture else None
    )
    if result.returncode != 0:
        raise DemoError(f"`{shown}` exited with {result.returncode}")
    return result.stdout or ""


def start_server(token_file: Path) -> ServerProcess:
    """Starts xfer-server on a free port (its log in .demo/server.log) and waits until it listens."""
    print("$ xfer-server --data-dir .demo/data --port 0 --token-file .demo/tokens.json &", flush=True)
    server = ServerProcess(data_dir=WORK / "data", args=("--token-file", str(token_file)), log_path=WORK / "server.log")
    try:
        server.start()
    except ServerStartError as exc:
        raise DemoError(str(exc)) from None
    print(f"xfer-server listening on {server.target}", flush=True)
    return server


def stop_server(server: ServerProcess) -> None:
    """SIGTERM, then wait for the graceful shutdown."""
    code = server.stop(timeout=30)
    if code != 0:
        raise DemoError(f"xfer-server did not stop cleanly (exit code {code}); see {server.log_path}")
    print("xfer-server stopped (exit code 0)")


def main() -> int:
    started = time.monotonic()
    demo = choose_data()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    tokens = WORK / "tokens.json"
    step("1. The service owner mints an operator token and a client token (only their hashes are stored)")
    server_cli = _tool("xfer-server")
    operator = run(
        server_cli,
        "tokens",
        "add",
        "--role",
        "operator",
        "--file",
        str(tokens),
        "--name",
        "demo-operator",
        capture=True,
    ).strip()
    client = run(
        server_cli, "tokens", "add", "--role", "client", "--file", str(tokens), "--name", "demo-client", capture=True
    ).strip()
    print("(tokens kept in the environment as XFER_TOKEN, never printed)")
    step("2. Start the server on the embedded defaults (SQLite + blob directory)")
    server = start_server(tokens)
    as_operator = {"XFER_SERVER": server.target, "XFER_TOKEN": operator, "XFER_CACHE": str(WORK / "operator-cache")}
    as_client = {"XFER_SERVER": server.target, "XFER_TOKEN": client, "XFER_CACHE": str(WORK / "client-cache")}
    xfer = _tool("xfer")
    model = demo.model
    try:
        step(f"3. Operator: train a source model on {demo.title} (the operator's source pool) and register it")
        run(sys.executable, "-m", "xfer.models.train", "--out", ".demo/source", "--arch", "convnet", *demo.train_args)
        run(xfer, "keys", "generate", "--out", ".demo/keys", "--name", "operator", env=as_operator)
        run(
            xfer, "register", ".demo/source", "--model", model, "--sign-key", ".demo/keys/operator.key", env=as_operator
        )
        run(xfer, "alias", f"{model}:1", "stable", env=as_operator)

        step("4. Edge client: discover, inspect and pull the weights (signature and sha256 verified, cached)")
        as_client["XFER_TRUSTED_KEYS"] = str(WORK / "keys" / "operator.pub")
        run(xfer, "models", env=as_client)
        run(xfer, "show", f"{model}@stable", env=as_client)
        run(xfer, "pull", f"{model}@stable", "--format", "onnx", "--require-signed", env=as_client)

        step(
            f"5. Edge client: adapt to its own data, classes the source never saw ({demo.target}); only metrics go back"
        )
        for strategy in ("linear-probe", "lp-ft", "surgical:auto"):
            run(
                xfer,
                "finetune",
                f"{model}@stable",
                demo.target,
                "--strategy",
                strategy,
                "--out",
                f".demo/finetuned-{strategy.replace(':', '-')}",
                env=as_client,
            )
        step("6. The same adaptation with differential privacy (Opacus DP-SGD, epsilon = 2 of a budget of 8)")
        for strategy in ("linear-probe", "lp-ft"):
            run(
                xfer,
                "finetune",
                f"{model}@stable",
                demo.target,
                "--strategy",
                strategy,
                "--dp-epsilon",
                "2",
                "--privacy-budget",
                "8",
                "--out",
                f".demo/finetuned-{strategy}-dp",
                env=as_client,
            )

        step("7. Edge client without torch: a new head on the ONNX model's features (numpy + onnxruntime only)")
        run(
            xfer,
            "fit-head",
            f"{model}@stable",
            demo.target,
            "--head",
            "logreg",
            "--out",
            ".demo/fitted-head",
            env=as_client,
        )

        step("8. Operator: the leaderboard of client reports")
        run(xfer, "leaderboard", "--metric", "accuracy", env=as_operator)
    finally:
        step("9. Stop the server")
        stop_server(server)
    print(f"\ndemo finished in {time.monotonic() - started:.0f} s; outputs in .demo/")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        sys.exit(1)
