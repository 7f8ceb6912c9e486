"""The command line: a root group with one module per command group.

Exit codes (also shown by ``anticloud --help``):

* 0 -- success; for ``verify ledger``, the ledger is intact;
* 1 -- the operation was refused or failed; for ``verify ledger``, the ledger is broken;
* 2 -- bad usage, or an input that cannot be read or parsed, or a home others could change;
* 3 -- ``verify ledger`` only: the ledger ends in a torn (unrecovered) line;
* 4 -- the engine refused to start: a network is reachable, or the configuration changed
  outside anticloud.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

from anticloud import __version__
from anticloud.errors import (
    AnticloudError,
    ConfigError,
    EngineRefused,
    KeyFileError,
    NotInitializedError,
    UnsafeHomeError,
)
from anticloud.home import Home, check_home
from anticloud.sealing import sealer_for
from ledger import CheckpointFormatError, LedgerError, LedgerReadError, LedgerWriter

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 4

EPILOG = """\b
Exit codes:
  0  success (verify: intact)
  1  refused or failed (verify: broken)
  2  bad usage, unreadable input, or a home others could change
  3  verify: torn tail not yet recovered
  4  the engine refused to start (network reachable, config drift)
"""

_USAGE_ERRORS = (LedgerReadError, CheckpointFormatError, NotInitializedError, KeyFileError, ConfigError,
                 UnsafeHomeError)


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
        except (AnticloudError, LedgerError) as exc:
            kind = (CliInputError if isinstance(exc, _USAGE_ERRORS) else
                    CliRefused if isinstance(exc, EngineRefused) else CliError)
            raise kind(str(exc)) from None
        except OSError as exc:  # a file the user named, a full disk: one line, never a traceback
            where = f"{exc.filename}: " if exc.filename else ""
            raise CliError(f"{where}{exc.strerror or exc}") from None


_pass_home = click.make_pass_decorator(Home)


def pass_home(command: Callable[..., Any]) -> Callable[..., Any]:
    """Pass the home to ``command``, refusing one that anyone but its owner could change (home.check_home)."""
    @functools.wraps(command)
    def checked(home: Home, *args: Any, **kwargs: Any) -> Any:
        check_home(home)
        return command(home, *args, **kwargs)

    return _pass_home(checked)


def open_ledger(home: Home) -> LedgerWriter:
    """The home's ledger writer; every recorded operation goes through it."""
    if not home.ledger.exists():
        raise NotInitializedError(f"{home.root} is not initialised; run `anticloud init`")
    return LedgerWriter.open(home.ledger, sealer_for(home))


@click.group(cls=Root, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", "home", type=click.Path(file_okay=False), envvar="ANTICLOUD_HOME",
              help="Appliance home (default $ANTICLOUD_HOME, else ~/.anticloud).")
@click.version_option(__version__, prog_name="anticloud")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """An air-gapped, audited local LLM appliance."""
    ctx.obj = Home.resolve(home)


def _register() -> None:
    from anticloud.cli import appliance, audit, bundle, config, engine, keys, kit, ledger, models, tokens, verify

    cli.add_command(appliance.init)
    cli.add_command(ledger.ledger_group)
    cli.add_command(verify.verify_group)
    cli.add_command(audit.audit_group)
    cli.add_command(keys.keys_group)
    cli.add_command(bundle.bundle_group)
    cli.add_command(models.import_bundle)
    cli.add_command(models.models_group)
    cli.add_command(config.config_group)
    cli.add_command(tokens.tokens_group)
    cli.add_command(kit.kit_group)
    for command in (engine.run, engine.serve, engine.status, engine.stop):
        cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="anticloud")
