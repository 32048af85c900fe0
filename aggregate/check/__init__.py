"""``aggregate check``'s explorer: run a manifest's programs on generated command sequences
and report what would hurt in production, each finding with a shrunk command sequence
(DESIGN §12).

- ``findings``: the kinds of finding and how a program error is classified;
- ``ports``: what the explorer needs from a program (``ProgramRunner``, sync);
- ``runners``: the adapter that runs the real programs (worker processes, or in process
  for trusted Python programs) from sync code, through a blocking portal;
- ``explore``: the Hypothesis search over command sequences of one aggregate type;
- ``session``: one check of a whole manifest (the CLI's entry point).
"""

from __future__ import annotations

from aggregate.check.findings import Finding as Finding
from aggregate.check.findings import FindingKind as FindingKind
from aggregate.check.session import CheckOptions as CheckOptions
from aggregate.check.session import CheckReport as CheckReport
from aggregate.check.session import check_programs as check_programs

__all__ = ["CheckOptions", "CheckReport", "Finding", "FindingKind", "check_programs"]
