"""moto's S3 server as a shadow's endpoint: a child process of its own (the local backend) or a labelled
container (the docker backend)."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shadow.errors import InfrastructureError

# moto keeps every bucket in module globals of the process serving it (and bucket names are global across its
# accounts), so two servers in one process share their buckets and a stopped one leaves its objects to the next.
# Each shadow gets a process of its own; it exits when its stdin closes, which also happens if shadow is killed.
_SERVER = """\
import logging, sys
from moto.server import ThreadedMotoServer
requests = logging.getLogger("werkzeug")  # one line per request: what the action read and wrote (footprint.py)
requests.setLevel(logging.INFO)
requests.propagate = False
requests.addHandler(logging.FileHandler(sys.argv[2]))
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
"""
SERVER_START_TIMEOUT = 60.0


@contextmanager
def moto_server(label: str, requests: Path | None = None) -> Iterator[str]:
    """moto's S3 server in a child process on 127.0.0.1; yields its URL. ``label`` (with the run id) shows in ps;
    ``requests`` gets a line per request it serves."""
    with tempfile.TemporaryFile() as log:
        try:
            proc = subprocess.Popen([sys.executable, "-c", _SERVER, label, str(requests or os.devnull)],
                                    stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log)
        except OSError as exc:
            raise InfrastructureError(f"could not start moto's S3 server for a shadow: {exc}") from exc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                line = proc.stdout.readline() if sel.select(SERVER_START_TIMEOUT) else b""
            if not line.strip().isdigit():
                log.seek(0)
                tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
                raise InfrastructureError("moto's S3 server for a shadow did not start"
                                          + (": " + " | ".join(tail) if tail else ""))
            yield f"http://127.0.0.1:{int(line)}"
        finally:
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()


MOTO_IMAGE = "motoserver/moto:latest"  # moto's S3 server for docker shadows, unless SHADOW_S3_IMAGE names another
MOTO_PORT = 5000  # where moto's server listens in its image (motoserver/moto, shadow-test/moto)


class MotoContainer:
    """moto's S3 server in a labelled container (the docker backend); its port is published on 127.0.0.1 only, and
    the URL is the route this process found to it (:func:`adapters.docker.route_to`)."""

    def __init__(self, image: str, run_id: str) -> None:
        from testcontainers.core.container import DockerContainer

        from adapters.docker import labels, start_network, this_engine

        self.image = image
        self._container = DockerContainer(image)
        # Published on 127.0.0.1 only: moto checks no credentials, so the port must not face the network — unless
        # the engine is elsewhere, where its loopback is out of reach: then on its host's interfaces (adapters.docker).
        self._container.ports[f"{MOTO_PORT}/tcp"] = (this_engine().publish_ip,)  # type: ignore[assignment]
        network = start_network()
        self._container.with_kwargs(labels=labels(run_id, "s3-shadow"), **({"network": network} if network else {}))
        self.url = ""

    def start(self, timeout: float = SERVER_START_TIMEOUT) -> MotoContainer:
        import urllib.error
        import urllib.request

        from adapters.docker import route_to

        try:
            self._container.start()
        except Exception as exc:  # noqa: BLE001 - docker/testcontainers raise many kinds
            raise InfrastructureError(f"could not start moto's S3 server from image {self.image!r}: "
                                      f"{str(exc).strip()[:300]}") from exc
        # shadow's own route (adapters.docker), not testcontainers' guess: from inside a container that is the
        # bridge gateway, where nothing is published.
        route = route_to(self._container.get_wrapped_container(), MOTO_PORT, f"moto's S3 server from {self.image!r}")
        self.url = f"http://{route.host}:{route.port}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2):
                    return self
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise InfrastructureError(f"moto's S3 server from {self.image!r} did not answer on {self.url} "
                                              f"within {timeout:g} s: {exc}") from exc
                time.sleep(0.1)

    def requests(self) -> bytes:
        """The server's log so far: a line per request it served (moto's server logs them on stderr)."""
        try:
            out, err = self._container.get_logs()
        except Exception as exc:  # noqa: BLE001 - docker raises many kinds; a lost log is a lost shadow
            raise InfrastructureError(f"could not read the log of moto's S3 server from {self.image!r}: "
                                      f"{str(exc).strip()[:200]}") from exc
        return bytes(out) + bytes(err)

    @property
    def container_id(self) -> str | None:
        return getattr(getattr(self._container, "_container", None), "id", None)

    def stop(self) -> None:
        try:
            self._container.stop()
        except Exception:  # noqa: BLE001 - already gone is fine; gc catches the rest by label
            pass


@contextmanager
def moto_endpoint(backend: str, image: str, run_id: str, label: str,
                  requests: Path) -> Iterator[tuple[str, MotoContainer | None]]:
    """An empty S3 endpoint for one shadow: a container in the docker backend (its log lists the requests it
    served), else a child process (writing them to ``requests``)."""
    if backend != "docker":
        with moto_server(label, requests) as url:
            yield url, None
        return
    container = MotoContainer(image, run_id)
    try:
        yield container.start().url, container
    finally:
        container.stop()
