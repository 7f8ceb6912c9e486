"""The anticloud package's exceptions: one root, narrow subclasses carrying what callers need."""

from __future__ import annotations


class AnticloudError(Exception):
    """Root of every error the anticloud package raises."""


class NotInitializedError(AnticloudError):
    """The appliance home has no identity or ledger yet: run `anticloud init`."""


class AlreadyInitializedError(AnticloudError):
    """`anticloud init` found an identity or a ledger that it must not overwrite."""


class KeyFileError(AnticloudError):
    """A private key file is missing, unreadable, malformed or readable by others."""
