"""Typed records to and from JSON, through one library (msgspec).

Every model written as JSON (manifest.json and its sections, the readiness report, the
estimate, the receiver's journals and failure records, the guard's records ...) is a dataclass
declared once; `encode` turns it into JSON values (enums as their words, nested models as
objects) and `decode` builds it back, checking every field's type and naming the one that is
wrong (`manifest.json: Expected int, got str - at $.disks[0].size`). No model writes its own
to_dict/from_dict.

The wire's binary framing (protocol.py: record frames, struct formats, digests) does not use
this module: a future standalone agent (python3 standard library only) must speak it.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import msgspec
from msgspec import UNSET
from msgspec import UnsetType as Unset

from .errors import ColdcloneError

T = TypeVar("T")

# A field a document leaves out when there is nothing to say (a disk that was never resumed has
# no `resume`) is declared `X | Unset = UNSET`: never written, not even as null. UNSET is false.
__all__ = ["UNSET", "Unset", "RecordError", "encode", "decode", "dumps", "loads"]


class RecordError(ColdcloneError, ValueError):
    """A JSON document does not fit its model: the message names the document and the field."""


def _enc_hook(obj: Any) -> Any:
    # A type of ours that decides how it is written (guestos.model.Secret writes ****).
    to_record = getattr(obj, "to_record", None)
    if to_record is not None:
        return to_record()
    raise NotImplementedError(f"{type(obj).__name__} is not a record type")


def encode(obj: Any) -> Any:
    """The JSON value of a model (dicts, lists, str, int, float, bool, None)."""
    return msgspec.to_builtins(obj, enc_hook=_enc_hook, order="deterministic")


def decode(value: Any, type_: type[T], what: str) -> T:
    """A model from a JSON value; RecordError naming `what` and the field when it does not fit."""
    try:
        return msgspec.convert(value, type_, strict=True)
    except msgspec.ValidationError as e:
        raise RecordError(f"{what}: {str(e).replace('`', '')}") from None


def dumps(obj: Any, **kw) -> str:
    """A model as JSON text, as everything in coldclone writes it (no NaN, no Infinity)."""
    return json.dumps(encode(obj), allow_nan=False, **kw)


def loads(text: str | bytes, type_: type[T], what: str) -> T:
    """A model from JSON text; RecordError for text that is not JSON or does not fit."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise RecordError(f"{what} is not valid JSON: {e}") from None
    return decode(value, type_, what)
