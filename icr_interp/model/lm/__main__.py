"""``python -m icr_interp.model.lm [NAME ...]``: make every registered LM (or the named ones) ready offline.

Converts each into the cache once (``make setup`` runs it) and prints how long each took, so that the setup's
added time is stated, not guessed.  Exits non-zero with one line per model that could not be made ready.
"""

import sys
import time

from icr_interp.model.lm.load import load_pretrained_lm
from icr_interp.model.lm.registry import PretrainedLMError, pretrained_lm_names


def main(names: list[str]) -> int:
    failed = 0
    for name in names or pretrained_lm_names():
        started = time.perf_counter()
        try:
            load_pretrained_lm(name)
        except PretrainedLMError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: ready in the cache ({time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
