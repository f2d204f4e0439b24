"""Loads with a configuration and files sent by the client, as Triton's model control takes them.

A load request's parameters may carry ``config``, the model configuration as
JSON (Triton's JSON form of ``config.pbtxt``), and ``file:<path>`` entries, the
contents of the model's files by path relative to its folder (``file:1/model.onnx``;
base64 over HTTP, raw bytes over gRPC). With files the model is served from a
folder of its own outside the repository, which the next load without them (or
an unload) removes; files need a ``config``. The config alone serves the
repository's files under that configuration until the next plain load.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import attrs

from .errors import InvalidInput
from .model import ModelConfig
from .triton.config import read_triton_config_json

FILE_PREFIX = "file:"


@attrs.frozen
class LoadOverride:
    """What a load request put in place of the repository's config (and files)."""

    config: ModelConfig
    #: The model's own folder (``<folder>/<version>/...``) when files were sent; its parent is private.
    folder: Path | None = None

    def discard(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder.parent, ignore_errors=True)


def parse_load_parameters(name: str, parameters: dict[str, Any], base64_files: bool) -> LoadOverride | None:
    """The override a load request's ``parameters`` ask for; None when they ask for none.

    ``base64_files``: file contents are base64 text (HTTP JSON) rather than bytes (gRPC).
    """
    if not parameters:
        return None
    unknown = sorted(k for k in parameters if k != "config" and not k.startswith(FILE_PREFIX))
    if unknown:
        raise InvalidInput(f"load parameters {unknown} are not supported; known: config, file:<path>")
    files = {k.removeprefix(FILE_PREFIX): v for k, v in parameters.items() if k.startswith(FILE_PREFIX)}
    if "config" not in parameters:
        raise InvalidInput("file: load parameters need a 'config' parameter too, the model's configuration")
    text = parameters["config"]
    if not isinstance(text, str):
        raise InvalidInput("load parameter 'config' must be a string of JSON")
    config = read_triton_config_json(text, name)
    if not files:
        return LoadOverride(config)
    folder = Path(tempfile.mkdtemp(prefix="dlinfer-load-")) / name
    try:
        for rel, content in files.items():
            path = folder / _relative(rel)
            data = _content(rel, content, base64_files)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                # One sent path is a folder of another ("file:1" and "file:1/model.onnx"): the client's mistake.
                raise InvalidInput(
                    f"load parameter 'file:{rel}': cannot be written, another file: path names a file or "
                    "folder in its place"
                ) from None
    except BaseException:
        shutil.rmtree(folder.parent, ignore_errors=True)
        raise
    return LoadOverride(config, folder)


def _relative(rel: str) -> PurePosixPath:
    path = PurePosixPath(rel)
    if (
        not path.parts  # "" or ".": the model's folder itself
        or path.is_absolute()
        or ".." in path.parts
        or "\\" in rel
        or "\0" in rel
        or rel.startswith("~")
    ):
        raise InvalidInput(f"load parameter 'file:{rel}': the path must be relative to the model's folder")
    return path


def _content(rel: str, content: Any, base64_files: bool) -> bytes:
    if isinstance(content, bytes) and not base64_files:
        return content
    if isinstance(content, str) and base64_files:
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"load parameter 'file:{rel}': not valid base64") from None
    kind = "base64 text" if base64_files else "bytes"
    raise InvalidInput(f"load parameter 'file:{rel}': the file's contents must be {kind}")
