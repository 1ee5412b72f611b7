"""Parameter sweeps: a grid of RunConfigs, run locally or on Ray, recorded in a resumable results file.

Three modules, one job each:

* :mod:`~icr_interp.experiments.sweep.grid` -- a sweep is a grid of
  :class:`~icr_interp.pipeline.config.RunConfig` (:func:`expand_grid`), deduplicated by
  ``config.key``;
* :mod:`~icr_interp.experiments.sweep.store` -- the results JSONL: durable appends, resume
  by key, a lock so two sweeps on one file record each run once, and
  validation of every line (:func:`load_results`, :func:`to_csv`);
* :mod:`~icr_interp.experiments.sweep.executors` -- in-process, local process pool (workers
  die with their sweep) or Ray (:func:`run_sweep`); one run is
  :func:`run_one` = ``icr_interp.run(config).record()``.

Example::

    configs = expand_grid("paper", n_triplets=[512, 4096], seeds=[0, 1], n_samples=[16, 64, 256])
    results = run_sweep(configs, "results/sample_complexity.jsonl", workers=2,
                        summary="results/sample_complexity.csv")
"""

from icr_interp.experiments.sweep.executors import (EXECUTORS, TIMING_FIELDS, SweepError, die_with_parent,
                                                    failure_text, run_one, run_sweep)
from icr_interp.experiments.sweep.grid import AXES, RunSpec, axes_of, expand_grid, sizes_for_triplets
from icr_interp.experiments.sweep.store import (ResultsError, ResultsStore, check_record, check_summary, flat,
                                                load_results, summary_path, to_csv)

__all__ = ["expand_grid", "sizes_for_triplets", "axes_of", "AXES", "RunSpec", "run_one", "run_sweep", "SweepError",
           "EXECUTORS", "TIMING_FIELDS", "die_with_parent", "failure_text", "load_results", "to_csv", "flat",
           "ResultsStore", "ResultsError", "check_record", "check_summary", "summary_path"]


def __getattr__(name: str):
    from icr_interp._moved import module_attr

    return module_attr(__name__, name)  # the first release's names (icr_interp._moved)
