"""Errors that reach the user. Each carries a stable code that the wire protocol repeats verbatim."""


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
