"""Model weights shipped compressed: unpacked once into the user's cache."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import InputError


def unpacked_weights(packed: Path) -> Path:
    """The weights of an xz-compressed file, unpacked once into the user's cache.

    Parameters
    ----------
    packed : Path
        ``<name>.xz``.

    Returns
    -------
    Path
        ``$XDG_CACHE_HOME/uptrack/models/<name>-<sha256 of the packed file, 12 hex>`` (default
        ``~/.cache``); written to a temporary name and renamed, so concurrent workers never read
        a half-written file. The packed file is never changed.
    """
    import hashlib
    import lzma
    import os
    import tempfile

    raw = packed.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uptrack" / "models"
    target = cache / f"{packed.stem}-{digest}"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    try:
        data = lzma.decompress(raw)
    except lzma.LZMAError as exc:
        raise InputError(f"{packed}: not a readable xz file ({exc}); copy the model again") from exc
    with tempfile.NamedTemporaryFile(dir=cache, delete=False, prefix=f".{target.name}.") as fh:
        fh.write(data)
    os.replace(fh.name, target)
    return target
