"""psd's exceptions: one class per PS_E* code of libpsd, all under psd.Error.

The message is the sentence libpsd or the shard gave ("127.0.0.1:7070: no
tensor 'w'"); ``code`` is the negative PS_E* code and ``errname`` its name.
Where a built-in exception means the same, the class derives from it too, so
``except ValueError`` also catches a bad spec or a wrong size.
"""
from __future__ import annotations

from . import _core


class Error(Exception):
    """Base of every psd error. ``code``: the PS_E* code; ``errname``: its name."""

    code: int = 0
    errname: str = "PS_E?"

    def __init__(self, message: str = "", code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None and code != type(self).code:
            self.code = code
            self.errname = _NAMES.get(code, "PS_E?")

    def __str__(self) -> str:
        return self.message or _core.strerror(self.code)


def _cls(name: str, errname: str, doc: str, *bases: type) -> type:
    return type(name, (Error, *bases), {"code": _core.codes[errname], "errname": errname,
                                        "__doc__": doc, "__module__": "psd"})


BadFrameError = _cls("BadFrameError", "PS_EBADFRAME", "A malformed frame or message.")
TooLargeError = _cls("TooLargeError", "PS_ETOOLARGE", "A frame larger than the maximum.")
VersionError = _cls("VersionError", "PS_EVERSION", "Protocol version mismatch.")
UnknownRequestError = _cls("UnknownRequestError", "PS_EUNKNOWN", "A request the shard does not know.")
NotFoundError = _cls("NotFoundError", "PS_ENOTFOUND", "No such tensor.", LookupError)
ExistsError = _cls("ExistsError", "PS_EEXISTS", "The tensor exists with a different spec.")
ShapeError = _cls("ShapeError", "PS_ESHAPE", "Wrong element count or shape.", ValueError)
SpecError = _cls("SpecError", "PS_ESPEC", "An invalid initializer or optimizer spec.", ValueError)
GradientError = _cls("GradientError", "PS_EGRADIENT", "The gradient holds NaN or Inf.", ValueError)
WrongShardError = _cls("WrongShardError", "PS_EWRONGSHARD", "Server list or job mismatch.")
NotReadyError = _cls("NotReadyError", "PS_ENOTREADY", "A request before the hello.")
BusyError = _cls("BusyError", "PS_EBUSY", "A push for this block is already pending in this round.")
ShutdownError = _cls("ShutdownError", "PS_ESHUTDOWN", "The shard is shutting down.")
ServerIOError = _cls("ServerIOError", "PS_EIO", "The shard could not write a checkpoint.", OSError)
InternalError = _cls("InternalError", "PS_EINTERNAL", "An internal error of the shard.")
ResourceError = _cls("ResourceError", "PS_ERESOURCE", "A limit of the shard was reached (memory, connections).")
BadRequestError = _cls("BadRequestError", "PS_EBADREQ", "A request the shard does not accept as formed.", ValueError)
AuthError = _cls("AuthError", "PS_EAUTH", "The shard did not accept this client's token.", PermissionError)
PermissionDeniedError = _cls("PermissionDeniedError", "PS_EPERM", "This client's role or session may not make the request.", PermissionError)
JobEndedError = _cls("JobEndedError", "PS_EJOBENDED", "The job's run this worker joined ended (job end, or dropped).")
InvalidArgumentError = _cls("InvalidArgumentError", "PS_EINVAL", "A bad argument to a library call.", ValueError)
NoMemoryError = _cls("NoMemoryError", "PS_ENOMEM", "The library ran out of memory.", MemoryError)
ConnectError = _cls("ConnectError", "PS_ECONNECT", "Could not connect to a shard.", ConnectionError)
TimedOutError = _cls("TimedOutError", "PS_ETIMEDOUT", "The call's deadline passed (Client(timeout=...)).", TimeoutError)
ClosedError = _cls("ClosedError", "PS_ECLOSED", "The client was closed (before or while the call was in flight).")
TicketError = _cls("TicketError", "PS_ETICKET", "An unknown or already collected ticket.")

#: code -> class, for every PS_E* code libpsd defines.
ERRORS: dict[int, type] = {c.code: c for c in (
    BadFrameError, TooLargeError, VersionError, UnknownRequestError, NotFoundError, ExistsError,
    ShapeError, SpecError, GradientError, WrongShardError, NotReadyError, BusyError,
    ShutdownError, ServerIOError, InternalError, ResourceError, BadRequestError, AuthError,
    PermissionDeniedError, JobEndedError, InvalidArgumentError, NoMemoryError, ConnectError, TimedOutError,
    ClosedError, TicketError)}

_NAMES = {v: k for k, v in _core.codes.items()}

__all__ = ["Error", "ERRORS"] + [c.__name__ for c in ERRORS.values()]
