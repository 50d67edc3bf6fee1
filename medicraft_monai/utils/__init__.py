"""The few helpers every room shares: atomic file writes, the SHA-256 of a file, JSON-able values, switches.

Nothing here imports another medicraft_monai module, so any room may use it.
"""

from __future__ import annotations

from medicraft_monai.utils.files import (
    atomic_write,
    file_digest,
    file_sha256,
    fsync_dir,
    save_torch_atomic,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)
from medicraft_monai.utils.jsonable import to_jsonable
from medicraft_monai.utils.switches import flag

__all__ = [
    "atomic_write",
    "file_digest",
    "file_sha256",
    "flag",
    "fsync_dir",
    "save_torch_atomic",
    "to_jsonable",
    "write_csv_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
