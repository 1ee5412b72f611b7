"""The storage layer's public names in one place (kept for ``from icr_interp.storage import fsio``).

The implementation is split by job:

* :mod:`icr_interp.storage.atomic` -- atomic writes, and the one rule for what the library may delete
  (only staging directories carrying our exact marker);
* :mod:`icr_interp.storage.locks` -- advisory locks on files and directories;
* :mod:`icr_interp.storage.jsonio` -- values as strict JSON.
"""

from icr_interp.storage.atomic import (MARKER, PROBE_PREFIX, STAGING, backups, check_creatable, dir_mode,  # noqa: F401
                                       file_mode, fsync_dir, is_ours, publish_dir, remove_if_ours, remove_stale,
                                       replace, stage, staging, staging_dir, staging_dirs, swap_members, temp_dir,
                                       write_bytes, write_json, write_text, write_with)
from icr_interp.storage.jsonio import dumps_strict, json_safe, plain  # noqa: F401
from icr_interp.storage.locks import FileLock, LockBusy, lock_dir  # noqa: F401
