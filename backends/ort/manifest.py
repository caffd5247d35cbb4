"""`swat_fx.json`, written beside ORT training artifacts: what was exported, and each file's SHA-256.

Loaders check the files against it before ORT parses anything, so a truncated file or one from another
export is reported by name instead of crashing inside ORT.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from swat_fx.backends.ort.errors import ArtifactError
from swat_fx.backends.ort.names import ARTIFACTS, MANIFEST

MANIFEST_FORMAT = "swat_fx/ort-training"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(out_dir: Path, info: Mapping[str, Any]) -> None:
    """`swat_fx.json`: what was exported, and the SHA-256 of every artifact."""
    files = {name: sha256(out_dir / name) for name in ARTIFACTS}
    manifest = {"format": MANIFEST_FORMAT, "version": 1, **info, "files": files}
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The manifest of an artifact directory, checked against the files beside it."""
    if not out_dir.is_dir():
        raise ArtifactError(f"{out_dir} is not a directory of ORT training artifacts")
    path = out_dir / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{out_dir} has no {MANIFEST}: it was not written by swat_fx.export_ort_training")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{path} is corrupt ({error}); export the model again") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(f"{path} is not a swat_fx ORT training manifest")
    for name in ARTIFACTS:
        file = out_dir / name
        if not file.is_file():
            raise ArtifactError(f"{out_dir} lacks the artifact {name}; export the model again")
        if sha256(file) != manifest.get("files", {}).get(name):
            raise ArtifactError(
                f"{file} does not match the manifest (its SHA-256 differs): it is corrupt or comes from "
                "another export; export the model again"
            )
    return manifest
