"""Scale-out with real parts: two replicas behind a real gRPC load balancer on one PostgreSQL and one blob volume.

Registers and pulls through the balancer, then kills the replica that is
serving a pull in the middle of it: the SDK's retry and resume finish the
pull through the other replica, every byte transferred once, sha256
verified. Runs with nginx (`grpc_pass`) and with HAProxy (HTTP/2 both
sides), each skipped with a one-line reason where it is not installed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from xfer.client import Client, RetryPolicy
from xfer.server.auth import add_token
from xfer.server.process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]
READ = "/xfer.v1.TransferService/ReadArtifact"


def _nginx_config(root: Path, *, port: int, upstreams: list[str]) -> list[str]:
    config = root / "nginx.conf"
    temp = " ".join(f"{kind}_temp_path {root / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    config.write_text(f"""
worker_processes 1;
daemon off;
pid {root / "nginx.pid"};
error_log {root / "balancer.log"} info;
events {{ worker_connections 512; }}
http {{
  access_log off;
  {temp}
  upstream xfer {{ {" ".join(f"server {u};" for u in upstreams)} }}
  server {{
    listen 127.0.0.1:{port} http2;
    client_max_body_size 0;
    location / {{
      grpc_pass grpc://xfer;
      grpc_read_timeout 300s;
      grpc_send_timeout 300s;
      grpc_next_upstream error timeout;
    }}
  }}
}}
""")
    return ["nginx", "-c", str(config), "-p", str(root)]


def _haproxy_config(root: Path, *, port: int, upstreams: list[str]) -> list[str]:
    config = root / "haproxy.cfg"
    servers = "\n".join(f"  server r{i} {u} proto h2 check inter 500" for i, u in enumerate(upstreams))
    config.write_text(f"""
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend grpc_in
  bind 127.0.0.1:{port} proto h2
  default_backend xfer
backend xfer
  balance roundrobin
  retry-on conn-failure empty-response
{servers}
""")
    return ["haproxy", "-f", str(config), "-db"]


BALANCERS = {"nginx": _nginx_config, "haproxy": _haproxy_config}


def _active_reads(replica: ServerProcess) -> float:
    text = urllib.request.urlopen(f"http://{replica.metrics_target}/metrics", timeout=5).read().decode()
    match = re.search(r'xfer_active_streams\{method="/xfer.v1.TransferService/ReadArtifact"\} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def _write_model(folder: Path) -> Path:
    from xfer.models import card_for_model, create_model
    from xfer.models.weights import save_safetensors

    folder.mkdir(parents=True)
    model = create_model("mlp", in_features=64, hidden=[1024, 1024], num_classes=10)  # about 4.5 MB of weights
    save_safetensors(model, folder / "model.safetensors")
    (folder / "card.json").write_text(json.dumps(card_for_model(model, source_task="scale-out test").to_dict()))
    return folder


@pytest.mark.parametrize("balancer", sorted(BALANCERS))
def test_two_replicas_behind_a_balancer_survive_losing_one_mid_pull(balancer, tmp_path, postgres_server) -> None:
    if shutil.which(balancer) is None:
        pytest.skip(
            f"{balancer} is not installed (apt-get install {'nginx-light' if balancer == 'nginx' else balancer})"
        )
    url = postgres_server.new_database()
    tokens = tmp_path / "tokens.json"
    operator = add_token(tokens, role="operator", name="op")
    client_token = add_token(tokens, role="client", name="edge")
    volume = tmp_path / "shared-volume"  # one blob volume for both replicas
    replicas = [
        ServerProcess(
            data_dir=volume,
            log_path=tmp_path / f"replica{i}.log",
            args=(
                "--db-url",
                url,
                "--token-file",
                str(tokens),
                "--chunk-size",
                "16384",
                "--metrics-port",
                "0",
                "--grace",
                "0.5",
            ),
        )
        for i in range(2)
    ]
    port = free_port()
    balancer_proc = None
    try:
        for replica in replicas:
            replica.start()
        command = BALANCERS[balancer](tmp_path, port=port, upstreams=[r.target for r in replicas])
        balancer_proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "lb.err", "w"))
        time.sleep(1.0)
        assert balancer_proc.poll() is None, (tmp_path / "lb.err").read_text()
        target = f"127.0.0.1:{port}"
        folder = _write_model(tmp_path / "model")
        expected = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        with Client(target, token=operator, cache_dir=tmp_path / "op-cache") as op:
            version = op.register(folder, "scale-model")  # an upload through the balancer
            for _ in range(4):
                assert op.get(version.ref).name == "models/scale-model/versions/1"  # spread over both replicas
        served = [r.log_text().count("rpc /xfer.v1.") for r in replicas]
        assert all(n > 0 for n in served), served  # both replicas answered, from one database and one volume

        killed: list[ServerProcess] = []

        def kill_the_serving_replica(done: int, total: int) -> None:
            if done >= 256 * 1024 and not killed:
                for replica in replicas:
                    if _active_reads(replica) >= 1:
                        replica.kill()  # SIGKILL mid-pull
                        killed.append(replica)
                        return

        patient = RetryPolicy(max_attempts=30, initial_backoff=0.1, max_backoff=0.5)
        with Client(target, token=client_token, cache_dir=tmp_path / "cache", retry=patient) as xfer:
            result = xfer.pull("scale-model", progress=kill_the_serving_replica)
        assert len(killed) == 1
        size = (folder / "model.safetensors").stat().st_size
        assert result.sha256 == expected and hashlib.sha256(result.blob_path.read_bytes()).hexdigest() == expected
        assert result.transferred_bytes == size and result.restarts == 0  # resumed, not restarted
        survivor = next(r for r in replicas if r is not killed[0])
        assert "ReadArtifact OK" in survivor.log_text()
    finally:
        if balancer_proc is not None:
            balancer_proc.terminate()
            balancer_proc.wait(30)
        for replica in replicas:
            replica.stop()
