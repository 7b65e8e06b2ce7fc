"""`align eval ...`: parse an `EvalConfig` (YAML via --config, then flags) and run it.

align eval --task math500 --model PATH_OR_NAME [--adapter PATH] [--limit N] [--num_samples 8 --temperature 0.7]
align eval --task arc_easy arc_challenge --mode loglikelihood --data_path arc_easy=arc_easy.jsonl ...
align eval --help                      # every option, documented from EvalConfig's field docstrings
"""

from __future__ import annotations

import sys

from align.config import parse_config
from align.errors import call_main, strip_debug_flag
from align.eval.runner import EvalConfig, run_eval


def main(argv: list[str] | None = None) -> int:
    """Entry point of `align eval` and `recipes/eval.py`; returns the exit status (2 after a user error's
    one line, as every align program: ``align.errors.call_main``)."""
    args = strip_debug_flag(sys.argv[1:] if argv is None else list(argv))

    def run() -> int:
        run_eval(parse_config(EvalConfig, args))
        return 0

    return call_main(run, "align eval")


if __name__ == "__main__":
    sys.exit(main())
