"""anticloud: an air-gapped, audited local LLM appliance.

Layers: ``home`` and ``identity`` hold the appliance's state and key; ``cli`` is the edge
that people drive. Every operation is recorded through the standalone ``ledger`` package.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
