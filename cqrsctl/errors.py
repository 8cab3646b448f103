"""Exceptions raised by the library; each carries the CLI exit code it maps to."""

from __future__ import annotations


class CqrsError(Exception):
    """Something went wrong in cqrsctl."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())


class UsageError(CqrsError):
    """Invalid usage."""

    exit_code = 2


class ValidationError(CqrsError):
    """Input failed validation."""

    exit_code = 3


class ConcurrencyError(CqrsError):
    """The stream is not at the expected version."""

    exit_code = 4

    def __init__(self, stream_id: str, expected: object, actual: int) -> None:
        self.stream_id, self.expected, self.actual = stream_id, expected, actual
        shown = "no stream" if actual == 0 else f"version {actual}"
        super().__init__(f"concurrency conflict on stream {stream_id!r}: expected {expected}, found {shown}")


class CommandRaceError(ConcurrencyError):
    """Another transaction recorded the same command id first."""

    def __init__(self, command_id: str, stream_id: str) -> None:
        CqrsError.__init__(self, f"command {command_id!r} was dispatched concurrently by another process")
        self.command_id, self.stream_id, self.expected, self.actual = command_id, stream_id, None, -1


class ConflictError(CqrsError):
    """The database undid the transaction to resolve a conflict with another one (a deadlock
    or a serialization failure); nothing of it was committed, and running it again can succeed."""

    exit_code = 4


class DuplicateEventError(CqrsError):
    """An event id already exists with different content."""

    exit_code = 4


class DomainError(CqrsError):
    """A domain rule rejected the command."""

    exit_code = 5


class NotFoundError(CqrsError):
    """Not found."""

    exit_code = 6


class DatabaseError(CqrsError):
    """The database could not be reached or used."""

    exit_code = 7


class AppError(CqrsError):
    """The app could not be loaded."""

    exit_code = 8


class DecodeError(CqrsError):
    """A stored event could not be decoded or upcast."""

    exit_code = 9


class UnhealthyError(CqrsError):
    """The store is not healthy."""

    exit_code = 10


class LockedError(CqrsError):
    """Another run holds the lock."""

    exit_code = 11


class DeliveryError(CqrsError):
    """A sink refused or could not be reached."""

    exit_code = 12


class IncompleteError(CqrsError):
    """The run stopped at its bound with work left."""

    exit_code = 13


class BatchError(CqrsError):
    """Some items of a batch failed."""

    exit_code = 14


class FileAccessError(CqrsError):
    """A file could not be read or written."""

    exit_code = 15


class ContractError(CqrsError):
    """Stored events do not decode with the current code (`contract check`)."""

    exit_code = 17


class BreakingChangeError(CqrsError):
    """The app's event contract changed incompatibly since it was locked (`contract diff`)."""

    exit_code = 18


class HistoryGapError(CqrsError):
    """The history being imported skips stream versions."""

    exit_code = 19


class SourceError(CqrsError):
    """The import source could not be reached or read."""

    exit_code = 20


class NotConfirmedError(CqrsError):
    """The operation was not confirmed at the prompt: nothing changed."""

    exit_code = 16
