"""The ``align`` command: thin over the recipes and library functions.

    align train grpo_math --config recipes/configs/grpo/smollm2_cpu.yaml --max_steps 20
    align recipes                 # list the launchable recipes
    align info                    # versions, devices, the embedded model's cache
    align prepare-embedded        # convert the embedded SmolLM2 GGUF to safetensors once
    align eval --task math500 arc_easy --model PATH [--adapter PATH]   # see align eval --help
    align report RUN_DIR [RUN_DIR ...] -o report.html   # one self-contained HTML page; see --help

``align train NAME`` runs ``recipes/NAME.py`` in this process, so ``accelerate launch`` works on the
recipe file itself for multi-process runs.

A mistake in what you gave (a config value, a data file, a model path, the output directory) ends with
one line naming it and exit status 2; ``--debug`` anywhere on the line (or ALIGN_DEBUG=1) shows the
traceback instead.
"""

import argparse
import runpy
import sys
from pathlib import Path

from align.errors import EXIT_USER_ERROR, call_main, strip_debug_flag

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def available_recipes() -> list[str]:
    """Names of the recipe scripts next to the package (a source checkout or editable install)."""
    if not RECIPES_DIR.is_dir():
        return []
    return sorted(p.stem for p in RECIPES_DIR.glob("*.py") if not p.stem.startswith("_"))


def _train(name: str, rest: list[str]) -> int:
    """Run ``recipes/<name>.py`` as ``__main__`` with ``rest`` as its arguments; its exit status."""
    recipes = available_recipes()
    if name not in recipes:
        known = ", ".join(recipes) or f"none found under {RECIPES_DIR}"
        print(f"align train: unknown recipe {name!r}; available: {known}", file=sys.stderr)
        return EXIT_USER_ERROR
    path = RECIPES_DIR / f"{name}.py"
    sys.argv = [str(path), *rest]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:  # the recipe's run_main: 2 after a user error's one line
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    return 0


def _info() -> int:
    import accelerate
    import torch
    import transformers

    import align

    print(f"align {align.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"accelerate {accelerate.__version__}")  # fmt: skip
    print(f"cuda available: {torch.cuda.is_available()} ({torch.cuda.device_count()} devices)")
    try:
        from align.models import embedded_model_dir

        print(f"embedded model cache: {embedded_model_dir()}")
    except Exception as e:  # the info command reports, it does not fail
        print(f"embedded model: not available ({e})")
    return 0


def _prepare_embedded() -> int:
    from align.models import embedded_model_dir

    print(embedded_model_dir())
    return 0


def main(argv: list[str] | None = None) -> int:
    """The ``align`` command; returns the exit status (2 after a user error, reported on one line)."""
    argv = strip_debug_flag(list(sys.argv[1:] if argv is None else argv))
    return call_main(lambda: _main(argv), "align")


def _main(argv: list[str]) -> int:
    if argv and argv[0] == "eval":
        from align.eval.cli import main as eval_main

        return eval_main(argv[1:])
    if argv and argv[0] == "report":
        from align.report import main as report_main

        return report_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="align", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="run a recipe: align train NAME [recipe options]")
    p_train.add_argument("name")
    sub.add_parser("recipes", help="list recipes")
    sub.add_parser("info", help="versions, devices and the embedded model")
    sub.add_parser("prepare-embedded", help="convert the embedded model once and print its cache path")
    sub.add_parser("report", help="an HTML report of run directories: align report RUN_DIR ... -o FILE")
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        return _train(args.name, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "recipes":
        print("\n".join(available_recipes()))
        return 0
    if args.command == "info":
        return _info()
    return _prepare_embedded()


if __name__ == "__main__":
    sys.exit(main())
