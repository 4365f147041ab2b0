"""Client e2e fixtures: a real server subprocess on port 0 (see server_process.py), tokens, clients, the CLI."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client.server_process import SMALL_CHUNK, CliResult, TokenServer, new_server_process
from xfer.client.cli import main as cli_main


@pytest.fixture(scope="session")
def model_dir(source_model_dir: Path) -> Path:
    """The folder `models.train` wrote (model.safetensors, model.onnx, card.json)."""
    return source_model_dir


@pytest.fixture(scope="session")
def big_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP of about 4.5 MB (safetensors + card.json; the server derives ONNX).

    Bigger than what gRPC and the loopback socket buffers hold in flight
    (about 1 MB measured), so killing the server mid-pull really cuts it.
    """
    import json

    from xfer.models import card_for_model, create_model
    from xfer.models.weights import save_safetensors

    out = tmp_path_factory.mktemp("big-model")
    model = create_model("mlp", in_features=64, hidden=[1024, 1024], num_classes=10)
    save_safetensors(model, out / "model.safetensors")
    (out / "card.json").write_text(json.dumps(card_for_model(model, source_task="test weights").to_dict()))
    return out


@pytest.fixture(scope="session")
def xfer_server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[TokenServer]:
    """A server shared by the module's tests, with `digits-convnet` version 1 registered."""
    server = new_server_process(tmp_path_factory.mktemp("xfer-server"))
    with server.client(tmp_path_factory.mktemp("op-cache"), token="operator") as op:
        op.register(model_dir, "digits-convnet")
    yield server
    server.stop()


@pytest.fixture
def new_server(tmp_path: Path) -> Iterator:
    """Factory of servers private to one test (killed at its end)."""
    started: list[TokenServer] = []

    def make(*, chunk_size: int = SMALL_CHUNK, extra_args: tuple[str, ...] = (), port: int = 0) -> TokenServer:
        server = new_server_process(
            tmp_path / f"server{len(started)}", chunk_size=chunk_size, extra_args=extra_args, port=port
        )
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()


@pytest.fixture
def run_cli(tmp_path: Path):
    """Runs `xfer` in-process: run_cli(server, *argv, token='client') -> CliResult."""

    def run(
        server: TokenServer | None,
        *argv: str,
        token: str | None = "client",
        cache_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> CliResult:
        environ = {"XFER_CACHE": str(cache_dir or tmp_path / "cache")}
        if server is not None:
            environ["XFER_SERVER"] = server.target
            if token is not None:
                environ["XFER_TOKEN"] = {"client": server.client_token, "operator": server.operator_token}.get(
                    token, token
                )
        environ.update(env or {})
        out, err = io.StringIO(), io.StringIO()
        code = cli_main(list(argv), environ=environ, stdout=out, stderr=err)
        return CliResult(code, out.getvalue(), err.getvalue())

    return run
