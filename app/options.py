"""Run options beyond the SDK's -i/-o/-m, settable from the CLI or from environment variables.

Environment variables let a MAP or an XNAT command set them without a custom entry point:
``TOTALSEG_MRI_RULES`` (path to a selection rules JSON), ``TOTALSEG_MRI_BEST_PER_STUDY`` (1/0),
``TOTALSEG_MRI_FAST`` (1/0), ``TOTALSEG_MRI_DEVICE`` (auto|cpu|cuda), ``TOTALSEG_MRI_TASK`` (a model
profile name, e.g. ``total_mr`` or ``demo``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from operators.selection_rules import SelectionRules

TRUE_WORDS = {"1", "true", "yes", "on"}


@dataclass
class RunOptions:
    rules: SelectionRules = field(default_factory=SelectionRules)
    fast: bool = False
    device: str = "auto"
    task: str | None = None  # None: the profile found in the models folder

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RunOptions:
        env = os.environ if environ is None else environ
        rules_path = env.get("TOTALSEG_MRI_RULES")
        rules = SelectionRules.from_file(Path(rules_path)) if rules_path else SelectionRules()
        if env.get("TOTALSEG_MRI_BEST_PER_STUDY", "").lower() in TRUE_WORDS:
            rules.policy.best_per_study = True
        return cls(
            rules=rules,
            fast=env.get("TOTALSEG_MRI_FAST", "").lower() in TRUE_WORDS,
            device=env.get("TOTALSEG_MRI_DEVICE", "auto") or "auto",
            task=env.get("TOTALSEG_MRI_TASK") or None,
        )
