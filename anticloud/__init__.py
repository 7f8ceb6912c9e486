"""anticloud: an air-gapped, audited local LLM appliance.

Layers, from the edges in: ``cli`` and ``api`` are what people and programs drive (the
terminal chat's rules are ``chatrepl``'s, pure, beneath ``cli``); they talk
to ``runtime.Appliance``, a facade over ``startup``, ``watch``, ``governor``, ``loader`` and
``inference``; beneath those, ``admission`` holds the pure rules a model must pass,
``structured`` those a structured-output schema must pass, and ``models``, ``gguf``,
``manifest``, ``sealed``, ``pool``, ``config``, ``trust``, ``tokens`` and ``home`` hold one
concept each. Every operation is recorded through the standalone ``ledger`` package, by its
public names only (README, "How it is built").
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
