"""The error hierarchy. Third-party errors are wrapped at the boundary (``raise ... from exc``)."""

from __future__ import annotations


class ArsError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(ArsError):
    """Bad configuration: names the field and the source (file, environment, flag)."""


class ProtocolError(ArsError):
    """A message that does not follow the protocol (bad envelope, schema, version, id)."""


class PayloadTooLarge(ProtocolError):
    """A payload over its size limit; raised before any parsing."""


class SourceError(ArsError):
    """A camera source that cannot be read: corrupt file, dropped stream, unknown encoding."""


class TransferError(ArsError):
    """A chunked transfer that cannot complete (corrupt chunk, hash mismatch, missing parts)."""


class ModelError(ArsError):
    """A checkpoint that is bad, mismatched or cannot be loaded."""


class StorageError(ArsError):
    """A store that cannot read or write (disk full, read-only, corrupt index)."""


class CommandRejected(ArsError):
    """A command that makes no sense now (out of order, unknown, bad arguments)."""
