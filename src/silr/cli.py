"""The `silr` command: one subcommand per pipeline stage, plus `predict`.

Each subcommand lives in its own module, which defines `add_arguments(parser)` and
`main(args)`. The table below maps names to modules (imported lazily, so `silr --help`
does not load torch). `SilrError`s are caught here, once: one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from silr import __version__
from silr.core.errors import SilrError

# subcommand -> (module, one-line help). dvc.yaml calls these; each module is one stage.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("silr.stages.synth",
              "generate the synthetic phantom in the full-resolution DeepFluoro layout"),
    "ingest": ("silr.stages.ingest",
               "crop, log-transform and downsample raw frames into the preprocessed layout"),
    "folds": ("silr.stages.folds", "leave-one-specimen-out train/validation/test splits"),
    "train": ("silr.stages.train", "train one named loss on one fold"),
    "evaluate": ("silr.stages.evaluate", "predict a fold's test specimen and write its metrics"),
    "robustness": ("silr.stages.robustness",
                   "score a fold's test specimen under the corruption suite"),
    "report": ("silr.stages.report", "Table 2, Figure 1 and the summary plots"),
    "show": ("silr.stages.show",
             "print Table 2, the presence and robustness summaries and where the outputs are"),
    "predict": ("silr.stages.predict", "apply trained models to new frames"),
    "exps": ("silr.stages.exps",
             "compare DVC experiments: changed params and each loss's mean error, 120 columns"),
    "parallel": ("silr.stages.parallel",
                 "run the study with N workers: DVC's queue, then `dvc repro` from the run-cache"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the module of `command` is imported (the others are listed by name)."""
    parser = argparse.ArgumentParser(prog="silr", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"silr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text)
            continue
        # Only the chosen command's module: the others would load torch for `silr --help`.
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        command = next((a for a in argv if not a.startswith("-")), None)
        args = build_parser(command).parse_args(argv)
        result = args._module.main(args)
        return int(result or 0)
    except SilrError as exc:
        print(f"silr: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("silr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
