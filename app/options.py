"""Run options beyond the SDK's -i/-o/-m, settable from the CLI or from environment variables.

Environment variables let a MAP or an XNAT command set them without a custom entry point:
``TOTALSEG_MRI_RULES`` (path to a selection rules JSON), ``TOTALSEG_MRI_BEST_PER_STUDY`` (1/0),
``TOTALSEG_MRI_FAST`` (1/0), ``TOTALSEG_MRI_DEVICE`` (auto|cpu|cuda), ``TOTALSEG_MRI_TASK`` (a model
profile name, e.g. ``total_mr`` or ``demo``), ``TOTALSEG_MRI_COMPILE_CACHE`` (auto|off|a folder: where CPU runs
keep networks compiled for this CPU; see ``operators/compiled_network.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from operators.errors import TotalSegMRIError
from operators.selection_rules import SelectionRules

TRUE_WORDS = {"1", "true", "yes", "on"}


@dataclass
class RunOptions:
    rules: SelectionRules = field(default_factory=SelectionRules)
    fast: bool = False
    device: str = "auto"
    task: str | None = None  # None: the profile found in the models folder
    compile_cache: str = "auto"  # CPU only: auto (default folder if g++ is present), off, or a folder

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
            compile_cache=env.get("TOTALSEG_MRI_COMPILE_CACHE") or "auto",
        )


def detect_task(models_root: Path | None, fast: bool = False) -> str:
    """The shipped profile whose model folders ``models_root`` holds: ``total_mr`` first, then the others.

    With none complete, ``total_mr``: its "model missing" error then names the folders and how to fetch them.
    """
    from operators.model_profile import available_profiles, load_profile
    from operators.model_store import resolve_parts

    names = ["total_mr", *(n for n in available_profiles() if n != "total_mr" and not n.endswith("_fast"))]
    for name in names:
        try:
            profile = load_profile(name, fast=fast)
        except TotalSegMRIError:  # a profile without a fast variant
            continue
        try:
            resolve_parts(profile, models_root)
        except TotalSegMRIError:
            continue
        return name
    return "total_mr"
