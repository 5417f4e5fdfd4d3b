"""Typed errors of the decoding process (spec clause 9).

Every error a decoder reports is a :class:`TKBError`.  Each subclass names the
error condition of clause 9 it stands for; every raised instance also names the
clause whose rule the stream violated (``clause``) and, when known, the syntax
element (``element``) and the byte offset in the stream (``offset``).
"""
from __future__ import annotations


class TKBError(Exception):
    """Base class of every TKB decoding or encoding error."""

    #: clause of spec/9-errors.md listing this error class
    error_clause = "9"

    def __init__(self, message: str, *, clause: str | None = None,
                 element: str | None = None, offset: int | None = None):
        self.clause = clause or self.error_clause
        self.element = element
        self.offset = offset
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.element:
            where.append(self.element)
        if self.offset is not None:
            where.append(f"byte {self.offset}")
        suffix = f" ({', '.join(where)})" if where else ""
        return f"[clause {self.clause}] {self.message}{suffix}"

    def relocate(self, base: int) -> "TKBError":
        """Make a position inside a payload (or none) a byte offset in the stream."""
        self.offset = base + (self.offset or 0)
        self.args = (self._render(),)
        return self


class TKBFormatError(TKBError):
    """Bad magic number, reserved bits set, or a value outside its allowed range."""
    error_clause = "9.1"


class TKBTruncatedError(TKBError):
    """The stream or a unit ends before a syntax structure is complete."""
    error_clause = "9.2"


class TKBCRCError(TKBError):
    """A unit's crc32c does not match its content."""
    error_clause = "9.3"


class TKBUnsupportedError(TKBError):
    """Unsupported version, profile, level or essential unit type."""
    error_clause = "9.4"


class TKBLevelError(TKBError):
    """A size exceeds the limits of the stream's level."""
    error_clause = "9.5"


class TKBReferenceError(TKBError):
    """A unit refers to a parameter set that is absent, or redefines one differently."""
    error_clause = "9.6"


class TKBTableError(TKBError):
    """A frequency table is invalid (sum, alphabet size, precision)."""
    error_clause = "9.7"


class TKBEntropyError(TKBError):
    """The rANS payload is inconsistent: a lane's final state is not L, words
    are left over or missing, or the escape count disagrees."""
    error_clause = "9.8"


class TKBValueError(TKBError):
    """A decoded value is out of range (level magnitude, token id, step code)."""
    error_clause = "9.9"


class TKBEncodeError(TKBError):
    """The encoder cannot represent the input with the requested options."""
    error_clause = "B"


ERROR_CLASSES = (TKBFormatError, TKBTruncatedError, TKBCRCError, TKBUnsupportedError,
                 TKBLevelError, TKBReferenceError, TKBTableError, TKBEntropyError,
                 TKBValueError)


class TKBBackendError(RuntimeError):
    """The requested implementation (backend="gpu") cannot run on this machine.  Not a
    stream error, so not a TKBError."""
