"""``totalseg-mri``: run the application, generate the synthetic demo study, manage model weights."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

from app.options import RunOptions
from operators.errors import TotalSegMRIError
from operators.output_staging import ensure_writable

logger = logging.getLogger("totalseg_mri")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = REPO_ROOT / "models" / "demo"


HOLOSCAN_STACK_BYTES = 32 * 1024 * 1024


def _ensure_stack_size() -> None:
    """Re-execute with a 32 MiB stack when the limit is lower: Holoscan warns that less can crash it.

    The limit of the running process's threads is fixed at exec time, so raising it needs a re-exec.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if soft == resource.RLIM_INFINITY or soft >= HOLOSCAN_STACK_BYTES or os.environ.get("TOTALSEG_MRI_REEXEC"):
        return
    if hard != resource.RLIM_INFINITY and hard < HOLOSCAN_STACK_BYTES:
        return
    resource.setrlimit(resource.RLIMIT_STACK, (HOLOSCAN_STACK_BYTES, hard))
    os.environ["TOTALSEG_MRI_REEXEC"] = "1"
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), format="%(levelname)s %(name)s: %(message)s")
    # Holoscan's own logger is chatty at INFO; keep it to warnings unless the user asks for more.
    os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "WARN" if level != "DEBUG" else "DEBUG")


def _run_app(argv: list[str], options: RunOptions) -> int:
    from app.application import TotalSegMRIApp  # Holoscan is imported only when a run is asked for

    try:
        TotalSegMRIApp(argv, options).run()
    except TotalSegMRIError as exc:
        logger.error("%s", exc)
        return exc.exit_code
    return 0


def _options(args: argparse.Namespace) -> RunOptions:
    options = RunOptions.from_env()
    if args.rules:
        from operators.selection_rules import SelectionRules

        options.rules = SelectionRules.from_file(args.rules)
    if args.best_per_study:
        options.rules.policy.best_per_study = True
    if args.modalities:
        options.rules.policy.modalities = tuple(m.upper() for m in args.modalities.split(","))
    options.fast = options.fast or args.fast
    options.device = args.device or options.device
    options.task = args.task or options.task
    options.compile_cache = args.compile_cache or options.compile_cache
    return options


def _sdk_argv(input_path: Path, output_path: Path, models: Path | None, log_level: str) -> list[str]:
    argv = [sys.executable, "app", "-i", str(input_path), "-o", str(output_path), "-l", log_level]
    if models is not None:
        argv += ["-m", str(models)]
    return argv


def _models(args: argparse.Namespace) -> Path | None:
    """``-m``, else HOLOSCAN_MODEL_PATH (read by the SDK), else the embedded demo model."""
    if args.models or os.environ.get("HOLOSCAN_MODEL_PATH") or not DEFAULT_MODELS.exists():
        return args.models
    return DEFAULT_MODELS


def _cmd_run(args: argparse.Namespace) -> int:
    if not args.input.exists():
        logger.error("input %s does not exist", args.input)
        return 2
    ensure_writable(args.output)
    return _run_app(_sdk_argv(args.input, args.output, _models(args), args.log_level), _options(args))


def _cmd_demo(args: argparse.Namespace) -> int:
    from app.synthetic.dicom_study import write_study

    target = args.workdir / "study"
    if target.exists():  # the demo's own scratch copy: regenerate it (deterministic from the seed)
        shutil.rmtree(target)
    study = write_study(target, seed=args.seed)
    logger.info("synthetic study written to %s", study.root)
    argv = _sdk_argv(study.root / "dicom", args.output, _models(args), args.log_level)
    return _run_app(argv, _options(args))


def _cmd_phantom(args: argparse.Namespace) -> int:
    from app.synthetic.dicom_study import write_study

    study = write_study(args.output, seed=args.seed, scale=args.scale)
    logger.info("synthetic study with %d series written to %s", len(study.series), study.root)
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--models", type=Path, help="models folder (default: the embedded demo model)")
    parser.add_argument("--rules", type=Path, help="series selection rules JSON (MONAI Deploy SDK format or superset)")
    parser.add_argument("--best-per-study", action="store_true", help="keep only the best volume of each study")
    parser.add_argument("--modalities", help="comma-separated modalities to accept (default MR; e.g. MR,CT)")
    parser.add_argument("--fast", action="store_true", help="use the task's fast (lower resolution) model")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="inference device (default auto)")
    parser.add_argument("--task", help="model profile to run (default: the one the models folder holds)")
    parser.add_argument("--compile-cache", metavar="auto|off|DIR",
                        help="CPU runs: folder of networks compiled for this CPU (default auto: "
                             "~/.cache/totalseg-mri/compiled when g++ is present; off: run them eagerly)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="totalseg-mri", description=__doc__)
    parser.add_argument("-l", "--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARN", "ERROR"])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="segment the MR series of a DICOM folder")
    run.add_argument("-i", "--input", type=Path, required=True, help="folder of DICOM files (searched recursively)")
    run.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    _add_run_options(run)
    run.set_defaults(handler=_cmd_run)

    demo = commands.add_parser("demo", help="generate the synthetic study and run the application on it")
    demo.add_argument("-o", "--output", type=Path, default=Path("out/demo"), help="output folder")
    demo.add_argument("--workdir", type=Path, default=Path("out/demo-input"), help="where the study is written")
    demo.add_argument("--seed", type=int, default=0)
    _add_run_options(demo)
    demo.set_defaults(handler=_cmd_demo)

    phantom = commands.add_parser("phantom", help="write the synthetic multi-series MR study")
    phantom.add_argument("-o", "--output", type=Path, required=True)
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--scale", type=float, default=1.0, help="matrix size factor (0.25-0.5 for quick tests)")
    phantom.set_defaults(handler=_cmd_phantom)

    from app import weights

    weights.add_subparsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.command in {"run", "demo"}:
        _ensure_stack_size()
    _configure_logging(args.log_level)
    try:
        return args.handler(args)
    except TotalSegMRIError as exc:
        logger.error("%s", exc)
        return exc.exit_code


def run_sdk_style() -> None:
    """Entry point of ``python -m app``: SDK arguments and HOLOSCAN_* variables, options from the environment."""
    _ensure_stack_size()
    _configure_logging(os.environ.get("TOTALSEG_MRI_LOG_LEVEL", "INFO").upper())
    try:
        options = RunOptions.from_env()
    except TotalSegMRIError as exc:
        logger.error("%s", exc)
        sys.exit(exc.exit_code)
    sys.exit(_run_app([sys.executable, *sys.argv], options))


if __name__ == "__main__":
    sys.exit(main())
