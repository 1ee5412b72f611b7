"""Measurement: loads of a checkpoint while another process saves over it in place, again and again.

A writer process (forked) alternates two tiny models with different weights,
saving each in place at one checkpoint directory as fast as it can, and
records in the metrics which one it wrote (``i``: model ``i % 2``).  The
reader loads the checkpoint ``--loads`` times meanwhile and classifies each
load:

* **right**: the loaded model's logits equal, bit for bit, those of the model
  that the loaded config.json says was saved (``metrics["i"] % 2``);
* **wrong**: a load that returned, without an error, weights that are not the
  ones its config.json names (the defect of issue 20, item 6: 113 of 1,774
  before the read-verify-parse path);
* **failed**: a load that raised; each must be one line and a
  ``CheckpointError`` (anything else is counted as ``other``).

Prints the counts out of N and the save and load rates.  Example::

    python benchmarks/bench_concurrent_load.py --loads 3000

A short version runs in the test suite (tests/safety/test_bad_input_regressions.py).
"""

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")


def _models():
    import torch

    from icr_interp.pipeline.config import RunConfig
    from icr_interp.pipeline.runner import build

    config = RunConfig.from_preset("tiny", seed=4)
    task, a = build(config)
    _, b = build(config)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.01)
    return task, (a, b)


def measure(loads: int, directory: Path) -> dict:
    """Run the writer and ``loads`` loads; the counts of right, wrong, failed and other loads."""
    import torch

    from icr_interp.storage.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    task, models = _models()
    ck = directory / "ck"
    save_checkpoint(ck, models[0], task, i=0)
    tokens = task.sample(8, seed=0).tokens
    with torch.no_grad():
        expected = [m(tokens) for m in models]
    counter = directory / "saves"
    pid = os.fork()
    if pid == 0:  # the writer: save in place forever, counting saves
        torch.set_num_threads(1)
        try:
            i = 0
            while True:
                i += 1
                save_checkpoint(ck, models[i % 2], task, i=i)
                if i % 20 == 0:
                    counter.write_text(str(i))
        finally:
            os._exit(0)
    counts = dict(right=0, wrong=0, failed=0, other=0)
    messages: dict[str, int] = {}
    t0 = time.perf_counter()
    try:
        for _ in range(loads):
            try:
                loaded = load_checkpoint(ck)
            except CheckpointError as e:
                counts["failed" if "\n" not in str(e) else "other"] += 1
                key = " ".join(str(e).split()[:8])
                messages[key] = messages.get(key, 0) + 1
                continue
            except Exception as e:  # noqa: BLE001 -- counted, the promise is only CheckpointError
                counts["other"] += 1
                messages[f"{type(e).__name__}: {e}"[:80]] = messages.get(f"{type(e).__name__}: {e}"[:80], 0) + 1
                continue
            with torch.no_grad():
                out = loaded.model(tokens)
            counts["right" if torch.equal(out, expected[loaded.metrics["i"] % 2]) else "wrong"] += 1
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    seconds = time.perf_counter() - t0
    saves = int(counter.read_text()) if counter.exists() else 0
    return dict(loads=loads, seconds=seconds, saves=saves, messages=messages, **counts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=2000, help="loads to classify (default 2000)")
    parser.add_argument("--dir", type=Path, default=None, help="where the checkpoint lives (default: a temp dir)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        r = measure(args.loads, Path(tmp))
    print(f"{r['loads']} loads in {r['seconds']:.1f} s ({r['loads'] / r['seconds']:.0f}/s) during "
          f"~{r['saves']} in-place saves ({r['saves'] / r['seconds']:.0f}/s)")
    print(f"right {r['right']}, wrong {r['wrong']}, failed {r['failed']} (one-line CheckpointError), "
          f"other {r['other']}")
    for message, n in sorted(r["messages"].items(), key=lambda kv: -kv[1]):
        print(f"  {n:>6}  {message}")
    return 0 if r["wrong"] == 0 and r["other"] == 0 else 1


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
