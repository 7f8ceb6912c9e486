"""The auditor's questions, answered from a ledger file in one streaming pass.

Layers, each depending only on those above it:

* ``facts``     -- who acted, on which model, and how it ended, for one record (pure);
* ``filter``    -- the criteria a question composes, and the times people write (pure);
* ``result``    -- the shape every answer shares: a Summary fed records, a Result with to_json() and table();
* ``usage``, ``refusals``, ``airgap``, ``changes``, ``lifecycle`` -- the summaries (pure);
* ``scan``      -- the one pass over the file, bounded by what the verifier vouched for (reads files);
* ``tally``     -- a question's summaries over one run of the file, merged run after run (pure), so
  that ``scan.answer`` computes them in the verifier's own pass, on every core.

Memory does not grow with the ledger: each process holds one line (or block) of the file, the
inferences still open, and each summary's answer (counters per day and person or model, or one row per
event of a kind that changes rarely). Nothing here writes to the ledger.
"""

from collections.abc import Callable

from anticloud.audit.airgap import AirGapEvent, AirGapReport, AirGapTimeline
from anticloud.audit.changes import ConfigChange, ConfigChanges, ConfigHistory
from anticloud.audit.facts import OUTCOMES, Annotator, Facts, outcome_of, person_of
from anticloud.audit.filter import Filter, ledger_ts, parse_time
from anticloud.audit.lifecycle import KeyLifecycle, Lifecycle, LifecycleEvent, ModelLifecycle
from anticloud.audit.refusals import RefusalRow, Refusals, RefusalsReport
from anticloud.audit.result import Result, Summary, cell
from anticloud.audit.scan import Bounds, Coverage, answer, bounds, coverage_for, mark, matching, summarise
from anticloud.audit.tally import QuestionTally, TallyMaker, wanted_kinds
from anticloud.audit.usage import ModelDay, PersonDay, Usage, UsageReport

SUMMARIES: dict[str, Callable[[], Summary]] = {
    "people": lambda: Usage("person"),
    "models": lambda: Usage("model"),
    "refusals": Refusals,
    "airgap": AirGapTimeline,
    "config": ConfigChanges,
    "lifecycle": ModelLifecycle,
    "keys": KeyLifecycle,
}

__all__ = [
    "OUTCOMES",
    "SUMMARIES",
    "AirGapEvent",
    "AirGapReport",
    "AirGapTimeline",
    "Annotator",
    "Bounds",
    "ConfigChange",
    "ConfigChanges",
    "ConfigHistory",
    "Coverage",
    "Facts",
    "Filter",
    "KeyLifecycle",
    "Lifecycle",
    "LifecycleEvent",
    "ModelDay",
    "ModelLifecycle",
    "PersonDay",
    "QuestionTally",
    "RefusalRow",
    "Refusals",
    "RefusalsReport",
    "Result",
    "Summary",
    "TallyMaker",
    "Usage",
    "UsageReport",
    "answer",
    "bounds",
    "cell",
    "coverage_for",
    "ledger_ts",
    "mark",
    "matching",
    "outcome_of",
    "parse_time",
    "person_of",
    "summarise",
    "wanted_kinds",
]
