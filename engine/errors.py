"""Errors that reach the user. Each carries a stable code that the wire protocol repeats verbatim."""

import reprlib


class VideograinError(Exception):
    """Base error: a message that says what to fix, and a stable machine-readable code."""

    code = "internal"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class JobError(VideograinError):
    """The job itself is wrong (bad prompt, mask, path, setting); nothing was written."""

    code = "bad_job"


class ModelUnavailableError(VideograinError):
    """Model weights could not be found locally or downloaded."""

    code = "model_unavailable"


class CancelledError(VideograinError):
    """The job was cancelled by its client."""

    code = "cancelled"


EXCERPT_CHARS = 80  # the most of a refused value an error message repeats


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """A bounded repr of a value an error refuses: never longer than `limit` characters, and never
    built by expanding the whole value (a YAML alias bomb or a megabyte prompt costs no more than a
    short one)."""
    shown = _ShortRepr(limit).repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit - 3]}..."


class _ShortRepr(reprlib.Repr):
    """reprlib's bounded repr, also for the values it would print whole: huge integers and bytes."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 3, 6, 6, 6, 6
        self.maxstring = self.maxother = self.maxlong = limit

    def repr_int(self, x: int, level: int) -> str:
        return super().repr_int(x, level) if x.bit_length() <= 256 else f"<an integer of {x.bit_length()} bits>"

    def repr_bytes(self, x: bytes, level: int) -> str:
        return repr(x[:self.maxstring]) + ("..." if len(x) > self.maxstring else "")

    repr_bytearray = repr_bytes

