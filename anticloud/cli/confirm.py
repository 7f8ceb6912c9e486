"""Asking before what cannot be undone: on a terminal, a question; in a script, ``--yes`` or a refusal."""

from __future__ import annotations

import sys

import click

YES_HELP = "Do it without asking (for scripts; without a terminal, nothing is done without it)."


def confirm(question: str, yes: bool) -> None:
    """Return if the person agrees (or said ``--yes``); otherwise abort, having done nothing."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError(f"{question} -- not confirmed: run it on a terminal to be asked, or add --yes")
    click.confirm(question, abort=True)
