"""`anticloud serve|status|stop`: the engine as a server (`run` and `chat` are in anticloud.cli.chat).

One engine per home: `run` and `serve` both take the home's engine lock (anticloud.enginelock)
before anything else touches the ledger, and refuse, recorded as ``engine.refused``, while
another engine holds it. `stop` signals only the pid the kernel shows holding that lock,
and only if it is the server the pid file names.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import click

from anticloud import airgap, enginelock, isolation
from anticloud.cli import open_ledger, pass_home
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
@click.option("--isolate", is_flag=True, help=ISOLATE_HELP + " Listens on HOME/anticloud.sock.")
@click.option("--uds", type=click.Path(dir_okay=False, path_type=Path), help="Listen on this unix socket.")
@click.option("--host", default="127.0.0.1", show_default=True, help="A loopback address; nothing else is allowed.")
@click.option("--port", type=click.IntRange(1, 65535), default=11434, show_default=True)
@click.option("--watch-interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between checks of the network while serving.")
@pass_home
def serve(home: Home, isolate: bool, uds: Path | None, host: str, port: int, watch_interval: float) -> None:
    """Serve the HTTP API until `anticloud stop` (or SIGTERM)."""
    import uvicorn

    from anticloud.api import connections, listen, loopback_only
    from anticloud.api.app import create_app
    from anticloud.api.identity import peer_protocol

    if not loopback_only(host):
        raise click.UsageError(f"--host {host} is not a loopback address; the appliance serves only loopback "
                               "or a unix socket")
    if isolate and not isolation.in_namespace():
        isolation.run_isolated()
    namespace = isolation.enter()
    if namespace and uds is None:
        uds = home.socket
    protocol = peer_protocol(isolation.credentials())
    lock = _hold_engine_lock(home)
    try:
        atomic_write(home.pid_file, f"{os.getpid()}\n".encode())
        with open_ledger(home) as writer:
            if uds is not None:
                _check_socket_path(writer, uds, namespace)
            app = Appliance.start(home, writer, namespace)
            app.watch(watch_interval)
            where = f"unix socket {uds}" if uds else f"http://{host}:{port}"
            click.echo(f"serving on {where} (air gap: {app.airgap.label}); stop with `anticloud stop`", err=True)
            # uvicorn shuts down gracefully on SIGTERM, restores the handler it found, and raises the
            # signal again: with this handler that unwinds through the finally below, which records
            # engine.stop, instead of killing the process before it can.
            signal.signal(signal.SIGTERM, _stopped)
            listening: listen.UnixListener | None = None
            try:
                where_to: dict[str, Any] = {"host": host, "port": port}
                if uds is not None:
                    listening = listen.bind_unix(uds)  # 0660 from birth; uvicorn's own would be 0666
                    where_to = {"fd": listening.sock.fileno()}
                uvicorn.run(create_app(app), http=connections.bounded(protocol), log_level="warning",
                            limit_concurrency=connections.limit(), backlog=connections.BACKLOG,
                            timeout_keep_alive=connections.IDLE_TIMEOUT, **where_to)
            except _Stop:
                pass
            finally:
                app.stop("server stopped")
                if listening is not None:
                    listening.close()
    finally:
        if _read_pid(home) == os.getpid():
            home.pid_file.unlink(missing_ok=True)
        lock.release()


def _check_socket_path(writer: LedgerWriter, uds: Path, namespace: bool) -> None:
    from anticloud.api import listen

    try:
        listen.check_path(uds)
    except EngineRefused as exc:
        writer.append("engine.refused", {"reason": str(exc), "namespace": namespace})
        raise


class _Stop(BaseException):
    """SIGTERM, turned into an unwinding exception."""


def _stopped(signum: int, frame: object) -> None:
    raise _Stop


@click.command("status")
@pass_home
def status(home: Home) -> None:
    """The air-gap state, the loaded models and the ledger head."""
    sock = home.socket
    if sock.exists():
        import httpx

        try:
            with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=5) as client:
                state = client.get("http://appliance/api/status").json()
            click.echo(f"server      running (pid {enginelock.holder(home)}), unix socket {sock}")
            where = " (in its own network namespace)" if state["namespace"] else ""
            click.echo(f"air gap     {state['airgap']}{where}")
            loaded = ", ".join(m["name"] for m in state["loaded"]) or "none"
            click.echo(f"loaded      {loaded}")
            click.echo(f"ledger head seq {state['ledger']['seq']}  {state['ledger']['hash']}")
            return
        except (httpx.HTTPError, OSError, ValueError):
            click.echo(f"server      not answering on {sock}")
    verdict = airgap.check()
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
