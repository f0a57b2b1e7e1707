"""Resolve local paths and ``s3://`` URIs to a pyarrow filesystem, with small read/write helpers.

S3 settings come from the standard AWS chain: credentials and region from the environment or
``~/.aws``; a custom endpoint (MinIO, moto, ...) from ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def s3_endpoint() -> str | None:
    """The S3 endpoint override from the standard AWS environment variables, if any."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem() -> pafs.S3FileSystem:
    endpoint = s3_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict = {"region": region}
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        # Keys from this process's environment travel with the (pickled) filesystem to Ray
        # workers, whose environment may predate them. Other sources (instance profiles, IRSA,
        # ~/.aws) are left for each worker to resolve, so rotating credentials keep working.
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        kwargs["scheme"] = "https" if endpoint.startswith("https") else "http"
        # Path-style addressing: S3-compatible stores rarely serve virtual-host buckets.
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Location:
    """A filesystem plus a path inside it: ``Location.of("s3://b/corpus")`` or a local path."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @classmethod
    def of(cls, uri: str | os.PathLike) -> Location:
        uri = str(uri)
        if is_s3(uri):
            return cls(s3_filesystem(), uri[len("s3://") :].rstrip("/"), uri.rstrip("/"))
        path = str(Path(uri).expanduser().resolve())
        return cls(pafs.LocalFileSystem(), path, path)

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = "s3://" + path if is_s3(self.uri) else path
        return Location(self.fs, path, uri)

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        self.fs.create_dir(posixpath.dirname(self.path), recursive=True)
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(data)

    def write_text_atomic(self, text: str) -> None:
        """Write via a temporary name then move: readers never see a half-written file.

        On S3 a single PUT is already atomic, so the object is written directly.
        """
        if is_s3(self.uri):
            self.write_bytes(text.encode("utf-8"))
            return
        tmp = self.path + ".tmp"
        Location(self.fs, tmp, tmp).write_bytes(text.encode("utf-8"))
        os.replace(tmp, self.path)

    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def delete_dir(self) -> None:
        if self.exists():
            self.fs.delete_dir(self.path)

    def list_files(self, recursive: bool = True) -> list[str]:
        """Paths (inside ``fs``) of all files below this location, sorted."""
        selector = pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)

    def uri_of(self, path: str) -> str:
        """The URI a user would write for a path inside this location's filesystem."""
        return "s3://" + path if is_s3(self.uri) else path
