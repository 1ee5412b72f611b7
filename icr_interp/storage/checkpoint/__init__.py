"""Checkpoints: a fine-tuned model with everything needed to rebuild it.

A checkpoint is a directory::

    model.safetensors   every tensor of ``model.state_dict()`` (never pickle)
    config.json         format marker, library version, sha256 of the weights, metrics,
                        model / task / training / run config and the knowledge base

Three modules, one job each:

* :mod:`~icr_interp.storage.checkpoint.schema` -- the config.json format, validation,
  rebuilding the task and model, :class:`CheckpointError`;
* :mod:`~icr_interp.storage.checkpoint.migrations` -- the format versions and one rule per
  older version that brings its config.json up to the current one;
* :mod:`~icr_interp.storage.checkpoint.files` -- saving (atomic, never deleting files
  that are not ours, through :mod:`icr_interp.storage.atomic`) and loading (each file
  read once; the weights' sha256 checked on the very bytes that are parsed).

Loading rebuilds the knowledge base, the task and the model from
``config.json`` (without pretraining), checks the weights against their
sha256 and every tensor's name, shape, dtype and finiteness against the
rebuilt model, then loads it strictly: the loaded model gives the saved
model's logits exactly.  Every problem is a :class:`CheckpointError` with a
one-line message.
"""

from icr_interp.storage.checkpoint.files import (Checkpoint, check_writable, is_checkpoint, load_checkpoint,
                                                 read_config, save_checkpoint)
from icr_interp.storage.checkpoint.schema import (CONFIG, FORMAT, MEMBERS, REQUIRED_KEYS, WEIGHTS, CheckpointError,
                                                  is_ours)

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint", "check_writable", "read_config",
           "is_checkpoint", "is_ours", "FORMAT", "WEIGHTS", "CONFIG", "MEMBERS", "REQUIRED_KEYS"]
