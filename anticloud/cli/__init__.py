"""The command line: a root group with one module per command group.

Exit codes (also shown by ``anticloud --help``):

* 0 -- success; for ``verify ledger``, the ledger is intact;
* 1 -- the operation was refused or failed; for ``verify ledger``, the ledger is broken;
* 2 -- bad usage, or an input that cannot be read or parsed, or a home others could change;
* 3 -- ``verify ledger`` only: the ledger ends in a torn (unrecovered) line;
* 4 -- the engine refused to start: a network is reachable, or the configuration changed
  outside anticloud;
* 5 -- ``verify ledger`` only: intact, but signatures were not checked (the standalone tool
  without ``cryptography``);
* 6 -- ``verify ledger`` only: intact, but fewer than ``--quorum`` of the ``--witness`` keys cosigned;
* 7 -- ``verify ledger`` and ``fleet verify``: intact, but sealed content is missing, altered or malformed;
* 8 -- ``fleet verify`` only: every ledger intact, but a fleet finding (a rollback, one identity twice,
  an appliance that stopped sealing, a clock ahead of the auditor's or running backwards);
* 130 -- Ctrl-C ended the command (for ``run``, the answer stopped; recorded as interrupted).

A closed standard output (``anticloud ledger show | head``) ends any command quietly, as a
Unix tool ends: killed by SIGPIPE, with no message.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from anticloud import __version__
from anticloud.actor import attach
from anticloud.errors import (
    AnticloudError,
    AuditQueryError,
    ConfigError,
    EngineRefused,
    KeyFileError,
    NotInitializedError,
    UnsafeHomeError,
)
from anticloud.home import Home, check_home
from anticloud.sealing import sealer_for
from ledger import (
    COSIGNATURE_V1,
    CheckpointFormatError,
    LedgerError,
    LedgerReadError,
    LedgerWriter,
    NoteError,
    Vkey,
    parse_vkey,
)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command Ctrl-C ended

EPILOG = """\b
Exit codes:
  0    success (verify: intact)
  1    refused or failed (verify: broken)
  2    bad usage, unreadable input, or a home others could change
  3    verify: torn tail not yet recovered
  4    the engine refused to start (network reachable, config drift)
  6    verify: intact, but not cosigned by --quorum of the --witness keys
  7    verify: intact, but sealed content missing, altered or malformed
  8    fleet verify: every ledger intact, but a fleet finding (docs/fleet.md)
  130  interrupted by Ctrl-C (run: the answer stopped, recorded as interrupted)
"""

_USAGE_ERRORS = (LedgerReadError, CheckpointFormatError, NotInitializedError, KeyFileError, ConfigError,
                 UnsafeHomeError, AuditQueryError)


class CliError(click.ClickException):
    """A refused or failed operation, shown as one line (exit 1)."""

    exit_code = EXIT_FAILED

    def show(self, file: Any = None) -> None:
        click.echo(f"anticloud: error: {self.format_message()}", err=True)


class CliInputError(CliError):
    """Input that cannot be read or used: a missing file, a malformed document, no init yet (exit 2)."""

    exit_code = EXIT_USAGE


class CliRefused(CliError):
    """The engine refused to start: a reachable network, or an unaccepted configuration (exit 4)."""

    exit_code = EXIT_REFUSED


class Root(click.Group):
    """Turns every domain error into one line and an exit code; never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo(err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:  # before OSError, which it is
            closed_pipe()
        except (AnticloudError, LedgerError) as exc:
            kind = (CliInputError if isinstance(exc, _USAGE_ERRORS) else
                    CliRefused if isinstance(exc, EngineRefused) else CliError)
            raise kind(str(exc)) from None
        except OSError as exc:  # a file the user named, a full disk: one line, never a traceback
            where = f"{exc.filename}: " if exc.filename else ""
            raise CliError(f"{where}{exc.strerror or exc}") from None


def closed_pipe() -> NoReturn:
    """Standard output's reader went away (`| head`): end as a well-behaved Unix tool does, by
    SIGPIPE, without a word. Every command has already unwound (its records written) when this runs."""
    with contextlib.suppress(OSError):  # the interpreter flushes stdout on its way out: into nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    sys.exit(128 + signal.SIGPIPE)  # where SIGPIPE could not end the process


_pass_home = click.make_pass_decorator(Home)


def pass_home(command: Callable[..., Any]) -> Callable[..., Any]:
    """Pass the home to ``command``, refusing one that anyone but its owner could change (home.check_home)."""
    @functools.wraps(command)
    def checked(home: Home, *args: Any, **kwargs: Any) -> Any:
        check_home(home)
        return command(home, *args, **kwargs)

    return _pass_home(checked)


def read_vkey(text: str, witness: bool = False) -> Vkey:
    """A verifier key given on the command line, or in a file; a witness's must be a cosigner's."""
    try:
        raw = Path(text).read_text(encoding="utf-8").strip() if os.path.isfile(text) else text.strip()
        vkey = parse_vkey(raw)
    except (OSError, UnicodeDecodeError, NoteError) as exc:
        raise CliInputError(f"not a verifier key: {exc}") from None
    if witness and vkey.sig_type != COSIGNATURE_V1:
        raise CliInputError(f"{vkey.name}: not a witness's key (a witness cosigns with type 0x04, "
                            f"this key is type 0x{vkey.sig_type:02x})")
    return vkey


def open_ledger(home: Home) -> LedgerWriter:
    """The home's ledger writer; every recorded operation goes through it."""
    if not home.ledger.exists():
        raise NotInitializedError(f"{home.root} is not initialised; run `anticloud init`")
    return attach(LedgerWriter.open(home.ledger, sealer_for(home)))  # every record says who acted


@click.group(cls=Root, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", "home", type=click.Path(file_okay=False), envvar="ANTICLOUD_HOME",
              help="Appliance home (default $ANTICLOUD_HOME, else ~/.anticloud).")
@click.version_option(__version__, prog_name="anticloud")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """An air-gapped, audited local LLM appliance."""
    ctx.obj = Home.resolve(home)


def _alias(command: click.Command, of: str) -> click.Command:
    """``command`` under Ollama's name for it, saying which command it is."""
    alias = copy.copy(command)
    alias.short_help = f"{command.get_short_help_str(80).rstrip('.')} (= `anticloud {of}`)."
    alias.help = f"{command.help}\n\nThe same as `anticloud {of}` (Ollama's name for it)."
    return alias


def _register() -> None:
    from anticloud.cli import (
        appliance,
        audit,
        audit_export,
        audit_package,
        audit_query,
        audit_report,
        bundle,
        chat,
        cluster,
        config,
        content,
        engine,
        fleet,
        keys,
        kit,
        ledger,
        models,
        tokens,
        verify,
        witness,
    )

    cli.add_command(appliance.init)
    cli.add_command(ledger.ledger_group)
    cli.add_command(verify.verify_group)
    cli.add_command(fleet.fleet_group)
    cli.add_command(audit.audit_group)
    audit_query.register(audit.audit_group)
    audit_report.register(audit.audit_group)
    audit_package.register(audit.audit_group)
    audit_export.register(audit.audit_group)
    cli.add_command(keys.keys_group)
    cli.add_command(bundle.bundle_group)
    cli.add_command(models.import_bundle)
    cli.add_command(models.models_group)
    cli.add_command(config.config_group)
    cli.add_command(tokens.tokens_group)
    cli.add_command(kit.kit_group)
    cli.add_command(witness.witness_group)
    cli.add_command(content.content_group)
    cli.add_command(cluster.cluster_group)
    cli.add_command(cluster.worker)
    for command in (chat.run, chat.chat, engine.serve, engine.status, engine.stop, chat.ps):
        cli.add_command(command)
    for name, command in (("list", models.list_models), ("show", models.show), ("rm", models.remove)):
        cli.add_command(_alias(command, f"models {command.name}"), name)


_register()


def main() -> None:
    cli(prog_name="anticloud")
