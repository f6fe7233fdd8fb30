"""What the engine raises for a folder it cannot open or change as asked; the server maps each to a status."""

from __future__ import annotations


class IndexFolderError(ValueError):
    """An index folder that cannot be opened or used as asked: one line, naming the file and what to do."""


class IndexLockedError(IndexFolderError):
    """Another process writes this index folder."""


class IndexReadOnlyError(IndexFolderError):
    """A write to an index opened read-only (asked for, or fallen back to when the folder cannot be written)."""
