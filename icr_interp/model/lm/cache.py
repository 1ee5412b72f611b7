"""The converted-model cache: its layout, what it checks, and how it is written.

Layout: ``<root>/<name>/v<FORMAT>-<sha256[:16] of the GGUF>/{weights.safetensors, meta.json, tokenizer/}``
(TransformerLens 3.x's ``HookedTransformer`` parameters) and, on TransformerLens 4.x,
``b<FORMAT>-<sha16>/{hf/, meta.json, tokenizer/}`` (the transformers model, ``save_pretrained``, that the
``TransformerBridge`` wraps); root = ``cache_dir`` argument, else ``$ICR_INTERP_CACHE/pretrained``, else
``~/.cache/icr_interp/pretrained``.

What it guards against:

* **A cache that cannot load garbage.**  ``meta.json`` records the sha256 and size of ``weights.safetensors``
  beside the GGUF's; every load checks the size and streams the file through sha256 before it is mapped
  (measured: about 0.3 s for SmolLM2's 540 MB, docs in ``/work/brief/out/gemma.md``).  A truncated, empty or
  overwritten weights file, or a ``meta.json`` that lacks a field, is *broken*: :func:`discard_broken` removes it
  when every member is one this code writes (so that the loader converts again), else the error says what to
  delete.
* **The destination is checked before converting** (:func:`check_destination`): a parent that is a file, a
  NUL in the path, an unwritable folder or too little free space is one line at once, not after minutes.
* **Disk full while writing** (``OSError(ENOSPC)``, or safetensors' own error saying so) is one line
  (:func:`disk_full_error`).
* **Stale staging folders** of a killed conversion are removed by :func:`remove_stale_staging`: only those
  that carry :mod:`icr_interp.storage.atomic`'s marker naming them, and whose process has exited.

A version folder is written in a marked staging folder and renamed into place by :mod:`icr_interp.storage.atomic`
(the one module that renames and deletes: the only layer-contract exception, pyproject.toml
``[tool.importlinter]``); a concurrent writer that loses the race uses the winner's folder.  Nothing the
library did not write is deleted; a stale version is simply left beside.
"""

import errno
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from icr_interp.model.lm.registry import PretrainedLMError, get_spec
from icr_interp.model.lm.source import sha256_file
from icr_interp.storage import atomic

CACHE_FORMAT = 2  # bump when the cached layout or the conversion changes; old folders are then ignored
WEIGHTS, META, TOKENIZER = "weights.safetensors", "meta.json", "tokenizer"
HF = "hf"  # the transformers model of a bridge version (TransformerLens 4.x)
MEMBERS = frozenset({WEIGHTS, META, TOKENIZER, HF})  # all that a version folder of ours holds
KINDS = ("v", "b")  # folder prefixes: TransformerLens parameters, the transformers model for the bridge
# meta.json's fields that a load needs, with their types
_META_FIELDS = {"format": int, "name": str, "cfg": dict, "source": dict, "weights": dict}
_SOURCE_FIELDS = {"sha256": str, "size": int}
_WEIGHTS_FIELDS = {"sha256": str, "size": int}


class BrokenCache(PretrainedLMError):
    """A cached version folder that cannot be loaded as it is (``version_dir``); converting again repairs it."""

    def __init__(self, version_dir: Path, why: str):
        super().__init__(f"cached model {version_dir} is broken ({why})")
        self.version_dir, self.why = Path(version_dir), why


def default_cache_root() -> Path:
    """``$ICR_INTERP_CACHE/pretrained`` when that variable is set, else ``~/.cache/icr_interp/pretrained``."""
    env = os.environ.get("ICR_INTERP_CACHE")
    return Path(env) / "pretrained" if env else Path.home() / ".cache" / "icr_interp" / "pretrained"


def cache_root(cache_dir: object) -> Path:
    """The cache root for a ``cache_dir`` argument (a path or ``None``; one-line errors for anything else, an
    empty path or one holding a NUL)."""
    if cache_dir is None:
        root = default_cache_root()
    elif not isinstance(cache_dir, (str, os.PathLike)):
        raise PretrainedLMError(f"cache_dir must be a path, got {type(cache_dir).__name__}")
    elif not os.fspath(cache_dir):
        raise PretrainedLMError("cache_dir is an empty string; pass None for the default cache")
    else:
        root = Path(cache_dir)
    if "\0" in os.fspath(root):
        raise PretrainedLMError(f"the cache path {os.fspath(root)!r:.120} holds a NUL character")
    return root


def model_dir(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<root>/<name>``: where the versions of one model lie."""
    return cache_root(cache_dir) / get_spec(name).name


# ------------------------------------------------------------------------------------- reading
def _check_fields(where: str, data: Any, fields: dict[str, type]) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not an object")
    for key, kind in fields.items():
        if key not in data:
            raise ValueError(f"{where} lacks {key!r}")
        if not isinstance(data[key], kind) or isinstance(data[key], bool) and kind is int:
            raise ValueError(f"{where}[{key!r}] is not {kind.__name__}")


def read_meta(version_dir: Path) -> dict:
    """``meta.json`` of a version folder, every field a load needs checked; :class:`BrokenCache` otherwise."""
    try:
        meta = json.loads((version_dir / META).read_text(encoding="utf-8"))
        _check_fields(META, meta, _META_FIELDS)
        _check_fields(f"{META} 'source'", meta["source"], _SOURCE_FIELDS)
        _check_fields(f"{META} 'weights'", meta["weights"], _WEIGHTS_FIELDS)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BrokenCache(version_dir, str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if meta["format"] != CACHE_FORMAT:
        raise BrokenCache(version_dir, f"{META} says format {meta['format']}, this code writes {CACHE_FORMAT}")
    return meta


def verify_weights(version_dir: Path, meta: dict) -> None:
    """:class:`BrokenCache` unless the weights file has the size and sha256 that ``meta.json`` records."""
    want = meta["weights"]
    file = want.get("file", WEIGHTS)
    if not isinstance(file, str) or not (version_dir / file).resolve().is_relative_to(version_dir.resolve()):
        raise BrokenCache(version_dir, f"{META} names no weights file inside the folder")
    path = version_dir / file
    try:
        size = path.stat().st_size
        if size != want["size"]:
            raise BrokenCache(version_dir, f"{file} has {size} bytes, {META} records {want['size']}")
        if sha256_file(path) != want["sha256"]:
            raise BrokenCache(version_dir, f"{file} does not match the sha256 {META} records")
    except OSError as e:
        raise BrokenCache(version_dir, f"{file}: {e.strerror or e}") from None


def version_name(kind: str, sha: str) -> str:
    """The folder name of a version: its kind (:data:`KINDS`), the cache format and the GGUF's sha256[:16]."""
    return f"{kind}{CACHE_FORMAT}-{sha[:16]}"


def versions(model_path: Path, kind: str = "v") -> list[Path]:
    """The version folders of one kind and this cache format under ``<root>/<name>``, by name."""
    pattern = re.compile(rf"^{re.escape(kind)}{CACHE_FORMAT}-[0-9a-f]{{16}}$")
    try:
        return sorted(d for d in model_path.iterdir() if pattern.match(d.name) and d.is_dir())
    except OSError:
        return []


def find_cache(name: str, cache_dir: str | os.PathLike | None = None, kind: str = "v") -> Path | None:
    """The cached version folder a load of ``name`` would use now, or ``None`` (a conversion is due).

    The folder is named after the GGUF's sha256: the registry's pinned one, else (a file source without a
    pin) the installed file's.  Without the source installed, the newest readable version is used (the
    cache is self-contained).  A broken folder is still returned: the load checks it and says so.
    """
    from icr_interp.model.lm import source as S

    spec, found = get_spec(name), versions(model_dir(name, cache_dir), kind)
    if not found:
        return None
    sha = spec.sha256
    if sha is None and S.source_installed(name):
        sha = S.sha256_file(S.locate_source(name))
    if sha is not None:
        return next((d for d in found if d.name == version_name(kind, sha)), None)
    return found[-1]


# ------------------------------------------------------------------------------------- checks before writing
def check_destination(path: Path, need_mb: int) -> None:
    """One-line :class:`PretrainedLMError` unless a conversion could write ``path`` now (created if missing).

    Checked before any minute of converting: every existing ancestor is a directory, files can be created
    there, and about ``need_mb`` MB are free.
    """
    for ancestor in (path, *path.parents):
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise PretrainedLMError(f"cannot write the model cache under {path}: {ancestor} is not a directory")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
        atomic.check_creatable(path / "probe")
        free_mb = shutil.disk_usage(path).free // 2**20
    except (OSError, ValueError) as e:
        raise PretrainedLMError(f"cannot write the model cache under {path}: {getattr(e, 'strerror', None) or e}"
                                ) from None
    if free_mb < need_mb:
        raise PretrainedLMError(f"the converted model needs about {need_mb} MB under {path}, only {free_mb} MB "
                                "free; free space or set ICR_INTERP_CACHE (or cache_dir) to another disk")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a full disk or quota (an OSError, or safetensors' own error carrying the text)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(error) or "Disk quota exceeded" in str(error)


def disk_full_error(name: str, path: Path, need_mb: int) -> PretrainedLMError:
    """The one line for a disk that filled up while the converted model was written."""
    return PretrainedLMError(f"{name}: no space left on the device while writing the converted model under "
                             f"{path} (it needs about {need_mb} MB); free space or set ICR_INTERP_CACHE "
                             "(or cache_dir) to another disk")


def remove_stale_staging(path: Path) -> list[Path]:
    """Delete staging folders a killed conversion left in ``path``: only ours (marker) whose process exited."""
    return atomic.remove_stale(path) if path.is_dir() else []


def discard_broken(error: BrokenCache) -> None:
    """Remove a broken version folder when all it holds is what this code writes; else a one-line error.

    It is moved into a marked staging folder of ours first (an atomic rename), then that folder is deleted,
    so a concurrent loader sees the version either whole or gone.
    """
    version_dir = error.version_dir
    try:
        members = {p.name for p in version_dir.iterdir()}
    except OSError:
        return  # already gone (another process discarded it)
    if not members <= MEMBERS:
        raise PretrainedLMError(f"{error}; it holds files this code does not write ({sorted(members - MEMBERS)[0]}"
                                f"), so it is left alone: delete {version_dir} and load again to re-convert")
    holder = atomic.staging_dir(version_dir.parent)
    try:
        atomic.replace(version_dir, holder / "broken")
    except OSError:
        pass  # gone meanwhile
    finally:
        atomic.remove_if_ours(holder)


# ------------------------------------------------------------------------------------- writing
def staging_folder(final: Path) -> Path:
    """A new empty folder to build the version ``final`` in (inside a marked staging folder beside it)."""
    return atomic.temp_dir(final)


def drop_staging(tmp: Path) -> None:
    """Remove the staging folder around ``tmp`` (ours: marker checked) after a failed conversion."""
    atomic.remove_if_ours(tmp.parent)


def save_weights(tensors: dict, path: Path, metadata: dict[str, str]) -> None:
    """Write the converted parameters as safetensors (the writer tests replace to simulate a full disk)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def write_version(tmp: Path, write_weights, tokenizer, meta: dict) -> None:
    """Fill the staging folder ``tmp``: the weights (``write_weights(tmp)`` writes them and returns their path
    relative to ``tmp``), the tokenizer, and ``meta.json`` recording the weights' checksum."""
    file = write_weights(tmp)
    tokenizer.save_pretrained(tmp / TOKENIZER)
    started = time.perf_counter()
    weights = {"file": file, "size": (tmp / file).stat().st_size, "sha256": sha256_file(tmp / file)}
    meta = {**meta, "format": CACHE_FORMAT, "weights": weights,
            "checksum_seconds": round(time.perf_counter() - started, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")


def publish(tmp: Path, final: Path) -> Path:
    """Rename the complete ``tmp`` to ``final``; a concurrent writer that published first wins."""
    try:
        atomic.publish_dir(tmp, final)  # modes set, flushed, renamed; the staging folder removed
    except OSError:
        if not (final / META).is_file():
            raise
    finally:
        atomic.remove_if_ours(tmp.parent)  # our marked staging folder only (gone after a publish)
    return final
