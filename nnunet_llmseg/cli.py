"""``nnunet-llmseg``: the plugin's command line.

Each subcommand lives next to the code it drives; a module joins the CLI by exposing
``register(subparsers) -> None``, which adds its parser and sets ``func(args) -> int | None``.
Modules are imported only when listed here, so ``nnunet-llmseg --help`` stays quick.

Expected failures never show a traceback: :func:`main` prints one ``error:`` line and exits with 2 for a command
that cannot run as typed (:class:`~nnunet_llmseg.cli_errors.UsageError`) and 1 for bad data
(:func:`data_errors`).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from nnunet_llmseg import __version__
from nnunet_llmseg._nnunet_env_hook import extend_ext_trainer_variable, shim_folder
from nnunet_llmseg.cli_errors import UsageError, report

# (module, what it adds) - kept in the order shown by --help
SUBCOMMAND_MODULES: tuple[str, ...] = (
    "nnunet_llmseg.data.unlabeled_preprocessing",  # preprocess-unlabeled, convert-msd-unlabeled
    "nnunet_llmseg.data.labelled_subset",  # subset
    "nnunet_llmseg.evaluation.report",  # evaluate
    "nnunet_llmseg.benchmark.cli",  # benchmark
    "nnunet_llmseg.demo",  # demo
    "prior_generation.cli",  # generate-priors (same as python -m prior_generation)
)


def _ext_trainer_path(args: argparse.Namespace) -> int:
    """Print the folder to put on nnUNet_extTrainer when the start-up hook is disabled."""
    print(extend_ext_trainer_variable({}) if not args.with_current else extend_ext_trainer_variable(None))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-llmseg",
        description="Semi-supervised nnU-Net v2 with LLM-written anatomical priors (LLM-SegNet, TAK).",
    )
    parser.add_argument("--version", action="version", version=f"nnunet-llmseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "ext-trainer-path",
        help="print the value for nnUNet_extTrainer (manual set-up when the start-up hook is disabled)",
        description=f"Our shim folder is {shim_folder()}. Use: "
        'export nnUNet_extTrainer="$(nnunet-llmseg ext-trainer-path --with-current)"',
    )
    p.add_argument("--with-current", action="store_true",
                   help="append to the current nnUNet_extTrainer value instead of printing our folder alone")
    p.set_defaults(func=_ext_trainer_path)

    for module_name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name == module_name:  # that part of the plugin is not built yet
                continue
            raise
        module.register(sub)
    return parser


def data_errors() -> tuple[type[BaseException], ...]:
    """Exceptions the subcommands raise for inputs they understood but cannot use (exit code 1)."""
    from nnunet_llmseg.data.labelled_subset import SubsetError
    from nnunet_llmseg.data.unlabeled_preprocessing import UnlabeledImageError
    from nnunet_llmseg.evaluation.report import EvaluationError
    from prior_generation.errors import PriorGenerationError
    from prior_generation.priors_file import PriorsError

    return (UnlabeledImageError, SubsetError, EvaluationError, PriorsError, PriorGenerationError,
            FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        return report(e, 2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except data_errors() as e:
        return report(e, 1)


if __name__ == "__main__":
    sys.exit(main())
