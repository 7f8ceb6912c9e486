"""`anticloud serve|status|stop`: the engine as a server (`run` and `chat` are in anticloud.cli.chat).

One engine per home: `run` and `serve` both take the home's engine lock (anticloud.enginelock)
before anything else touches the ledger, and refuse, recorded as ``engine.refused``, while
another engine holds it. `stop` signals only the pid the kernel shows holding that lock,
and only if it is the server the pid file names.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import click

from anticloud import airgap, enginelock, isolation, journal
from anticloud.cli import open_ledger, pass_home
from anticloud.cluster.settings import link as cluster_link
from anticloud.config import load_config
from anticloud.errors import EngineRefused, EngineRunning, StopError
from anticloud.fsutil import atomic_write
from anticloud.home import Home
from anticloud.models import ModelStore
from anticloud.runtime import Appliance
from ledger import LedgerWriter

ISOLATE_HELP = "Run the engine in a fresh user and network namespace holding only loopback (Linux)."




def _hold_engine_lock(home: Home) -> enginelock.EngineLock:
    """This home's engine lock, taken before any start record or crash scan; a refusal is recorded."""
    try:
        return enginelock.acquire(home)
    except EngineRunning as exc:
        with open_ledger(home) as writer:
            writer.append("engine.refused", {"reason": "another engine is running on this home", "pid": exc.pid,
                                             "namespace": isolation.in_namespace()})
        raise


@click.command("serve")
@click.option("--isolate", is_flag=True, help=ISOLATE_HELP + " Listens on HOME/anticloud.sock, and with --port "
              "also on the host's loopback.")
@click.option("--uds", type=click.Path(dir_okay=False, path_type=Path), help="Listen on this unix socket.")
@click.option("--host", default="127.0.0.1", show_default=True, help="A loopback address; nothing else is allowed.")
@click.option("--port", type=click.IntRange(1, 65535),
              help="Listen on this TCP port of --host [default: 11434 without --isolate or --uds]. With --isolate "
                   "the port is opened on the host's loopback and handed to the isolated engine; callers there "
                   "need a bearer token (anticloud tokens create NAME).")
@click.option("--watch-interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between checks of the network while serving.")
@pass_home
def serve(home: Home, isolate: bool, uds: Path | None, host: str, port: int | None, watch_interval: float) -> None:
    """Serve the HTTP API until `anticloud stop` (or SIGTERM).

    Under systemd, sockets passed by socket activation (tools/anticloud.socket) are served too."""
    from anticloud.api import listen, loopback_only

    if not loopback_only(host):
        raise click.UsageError(f"--host {host} is not a loopback address; the appliance serves only loopback "
                               "or a unix socket")
    if isolate and not isolation.in_namespace():
        isolation.run_isolated(_host_listener(home, host, port) if port is not None else [])
    namespace = isolation.enter()
    if namespace and uds is None:
        uds = home.socket
    lock = _hold_engine_lock(home)
    try:
        atomic_write(home.pid_file, f"{os.getpid()}\n".encode())
        with open_ledger(home) as writer:
            journal.attach(writer)  # what the ledger records, the operator reads in journald
            try:
                sockets = listen.handed()
                if uds is not None:
                    listen.check_path(uds)
                # In a namespace of its own, the engine's TCP sockets are bound outside and handed over.
                if not namespace and (port is not None or (uds is None and not sockets)):
                    sockets.append(listen.bind_tcp(host, 11434 if port is None else port))
            except EngineRefused as exc:
                writer.append("engine.refused", {"reason": str(exc), "namespace": namespace})
                raise
            _serve(home, writer, namespace, uds, sockets, watch_interval)
    finally:
        if _read_pid(home) == os.getpid():
            home.pid_file.unlink(missing_ok=True)
        lock.release()


def _host_listener(home: Home, host: str, port: int) -> list[socket.socket]:
    """--isolate --port: the TCP socket, bound before the engine leaves the host's network (a refusal recorded)."""
    from anticloud.api import listen

    try:
        return [listen.bind_tcp(host, port)]
    except EngineRefused as exc:
        with open_ledger(home) as writer:
            writer.append("engine.refused", {"reason": str(exc), "namespace": False})
        raise


def _serve(home: Home, writer: LedgerWriter, namespace: bool, uds: Path | None, sockets: list[socket.socket],
           watch_interval: float) -> None:
    import uvicorn

    from anticloud.api import connections, listen
    from anticloud.api.app import create_app
    from anticloud.api.identity import peer_protocol

    protocol = peer_protocol(isolation.credentials())
    app = Appliance.start(home, writer, namespace)
    app.watch(watch_interval)
    listening: listen.UnixListener | None = None
    try:
        if uds is not None:
            listening = listen.bind_unix(uds)  # 0660 from birth; uvicorn's own would be 0666
            sockets = [listening.sock, *sockets]
        where = " and ".join(listen.describe(s) for s in sockets)
        atomic_write(home.listening, json.dumps({
            "pid": os.getpid(), "unix": [str(s.getsockname()) for s in sockets if s.family == socket.AF_UNIX],
            "tcp": [listen.describe(s) for s in sockets if s.family != socket.AF_UNIX]}).encode())
        click.echo(f"serving on {where} (air gap: {app.airgap.label}); stop with `anticloud stop`", err=True)
        # uvicorn shuts down gracefully on SIGTERM, restores the handler it found, and raises the
        # signal again: with this handler that unwinds through the finally below, which records
        # engine.stop, instead of killing the process before it can.
        signal.signal(signal.SIGTERM, _stopped)
        config = uvicorn.Config(create_app(app), http=connections.bounded(protocol), log_level="warning",
                                limit_concurrency=connections.limit(), backlog=connections.BACKLOG,
                                timeout_keep_alive=connections.IDLE_TIMEOUT)
        uvicorn.Server(config).run(sockets=sockets)
    except _Stop:
        pass
    finally:
        app.stop("server stopped")
        home.listening.unlink(missing_ok=True)
        for sock in sockets:
            sock.close()
        if listening is not None:
            listening.close()


class _Stop(BaseException):
    """SIGTERM, turned into an unwinding exception."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stop


@click.command("status")
@pass_home
def status(home: Home) -> None:
    """The server (however it listens), the air-gap state, the loaded models and the ledger head."""
    engine = enginelock.holder(home)  # the kernel's word: whoever holds the engine lock
    if engine is not None:
        where = _listening(home, engine)
        click.echo(f"server      running (pid {engine}){', on ' + ', '.join(where) if where else ''}")
        if _served_status(home, engine):
            return
    verdict = airgap.assess(airgap.read_state(), cluster_link(load_config(home).doc["cluster"]))
    click.echo("server      not running")
    click.echo(f"air gap     {'isolated' if verdict.isolated else 'NETWORK REACHABLE'} (this process's network)")
    for reason in verdict.reasons():
        click.echo(f"            {reason}")
    click.echo(f"models      {', '.join(m.name for m in ModelStore(home).list()) or 'none'}")
    with open_ledger(home) as writer:
        click.echo(f"ledger head seq {writer.head.seq}  {writer.head.hash}")


@click.command("stop")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@pass_home
def stop(home: Home, timeout: float) -> None:
    """Stop a running `anticloud serve` (it records engine.stop and unloads its models).

    Exits 1, signalling nothing, when no server of this home is running: the pid file is
    believed only if the kernel shows that pid holding the home's engine lock.
    """
    claimed = _read_pid(home)
    engine = enginelock.holder(home)
    if engine is None:
        stale = "" if claimed is None else (f": {home.pid_file} names pid {claimed}, which is not this home's "
                                            "engine; nothing was signalled")
        raise StopError(f"no server is running for {home.root}{stale}")
    if engine != claimed or not _is_anticloud(engine):
        raise StopError(f"the engine running on {home.root} (pid {engine}) is not a server this command stops "
                        "(an `anticloud run` ends by itself); nothing was signalled")
    os.kill(engine, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _running(engine):
        if time.monotonic() > deadline:
            raise StopError(f"the server (pid {engine}) did not stop within {timeout:.0f} s")
        time.sleep(0.05)
    click.echo(f"stopped the server (pid {engine})")


def _listening(home: Home, engine: int) -> list[str]:
    """Where the engine holding the lock says it listens (nothing if the file is another's)."""
    try:
        said = json.loads(home.listening.read_bytes())
    except (OSError, ValueError):
        return []
    if not isinstance(said, dict) or said.get("pid") != engine:
        return []
    return [f"unix socket {path}" for path in said.get("unix", [])] + [str(url) for url in said.get("tcp", [])]


def _served_status(home: Home, engine: int) -> bool:
    """Print what the running server says of itself over its unix socket; False if it cannot be asked."""
    import httpx

    try:
        said = json.loads(home.listening.read_bytes())
        sock = said["unix"][0] if said.get("pid") == engine and said.get("unix") else None
    except (OSError, ValueError, KeyError, TypeError):
        sock = None
    if sock is None:
        click.echo("            (no unix socket to ask it on: over TCP it needs a token; "
                   "`curl -H 'Authorization: Bearer ...' URL/api/status`)")
        return False
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5) as client:
            state = client.get("http://appliance/api/status").json()
    except (httpx.HTTPError, OSError, ValueError):
        click.echo(f"            not answering on {sock}")
        return False
    where = " (in its own network namespace)" if state["namespace"] else ""
    click.echo(f"air gap     {state['airgap']}{where}")
    click.echo(f"loaded      {', '.join(m['name'] for m in state['loaded']) or 'none'}")
    click.echo(f"ledger head seq {state['ledger']['seq']}  {state['ledger']['hash']}")
    return True


def _read_pid(home: Home) -> int | None:
    try:
        return int(home.pid_file.read_text())
    except (OSError, ValueError):
        return None


def _is_anticloud(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"anticloud" in argv or any(arg.endswith(b"/anticloud") for arg in argv)


def _running(pid: int) -> bool:
    """Alive, and not merely a zombie waiting for its parent to collect it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
