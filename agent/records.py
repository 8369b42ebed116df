"""Typed records to and from JSON, through one library (msgspec).

Every model written as JSON (manifest.json and its sections, the readiness report, the
estimate, the receiver's journals and failure records, the guard's records ...) is a dataclass
declared once; `encode` turns it into JSON values (enums as their words, nested models as
objects) and `decode` builds it back, checking every field's type and naming the one that is
wrong (`manifest.json: Expected int, got str - at $.disks[0].size`). No model writes its own
to_dict/from_dict.

The wire's JSON bodies (protocol.py: HELLO, DISK, END, the replies ...) are msgspec Structs
read with `decode_fields`, whose errors say in words what the field must be (its limits come
from the declaration). The wire's binary framing (record frames, struct formats, digests) does
not use this module: a future standalone agent (python3 standard library only) must speak it.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar, get_type_hints

import msgspec
import msgspec.inspect as mi
from msgspec import UNSET
from msgspec import UnsetType as Unset

from .errors import ColdcloneError

T = TypeVar("T")

# A field a document leaves out when there is nothing to say (a disk that was never resumed has
# no `resume`) is declared `X | Unset = UNSET`: never written, not even as null. UNSET is false.
__all__ = ["UNSET", "Unset", "RecordError", "encode", "decode", "decode_fields", "dumps", "loads"]


class RecordError(ColdcloneError, ValueError):
    """A JSON document does not fit its model: the message names the document and the field."""


def _enc_hook(obj: Any) -> Any:
    # A type of ours that decides how it is written (guestos.model.Secret writes ****).
    to_record = getattr(obj, "to_record", None)
    if to_record is not None:
        return to_record()
    raise NotImplementedError(f"{type(obj).__name__} is not a record type")


def encode(obj: Any, omit_defaults: bool = False) -> Any:
    """The JSON value of a model (dicts, lists, str, int, float, bool, None). omit_defaults: a
    dataclass's fields that hold their default are left out (the wire's bodies: a reader takes a
    missing field as its default, and an older reader never sees a key it does not know)."""
    value = msgspec.to_builtins(obj, enc_hook=_enc_hook, order="deterministic")
    if omit_defaults:
        for f in dataclasses.fields(obj):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if default is not dataclasses.MISSING and getattr(obj, f.name) == default:
                value.pop(f.name, None)
    return value


def _complete(obj: Any) -> Any:
    """msgspec.convert leaves a dataclass field the document did not have, when its default is a
    plain value, out of the instance's __dict__ (reads fall through to the class attribute), and
    to_builtins then leaves it out of what is written: a manifest loaded and written again would
    lose those keys. Set them on the instance, in every model nested in obj."""
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, (list, tuple)):
            stack.extend(x for x in o if isinstance(x, (list, tuple, dict)) or dataclasses.is_dataclass(x))
        elif isinstance(o, dict):
            stack.extend(x for x in o.values()
                         if isinstance(x, (list, tuple, dict)) or dataclasses.is_dataclass(x))
        elif dataclasses.is_dataclass(o) and not isinstance(o, type) and hasattr(o, "__dict__"):
            for f in dataclasses.fields(o):
                if f.name not in o.__dict__:
                    object.__setattr__(o, f.name, getattr(o, f.name))
                v = o.__dict__[f.name]
                if isinstance(v, (list, tuple, dict)) or dataclasses.is_dataclass(v):
                    stack.append(v)
    return obj


def decode(value: Any, type_: type[T], what: str) -> T:
    """A model from a JSON value; RecordError naming `what` and the field when it does not fit."""
    try:
        return _complete(msgspec.convert(value, type_, strict=True))
    except msgspec.ValidationError as e:
        raise RecordError(f"{what}: {str(e).replace('`', '')}") from None


def decode_fields(value: Any, type_: type[T], what: str, error: type[Exception] = RecordError) -> T:
    """A model from a JSON object, refused with `error` in words: "DISK: field 'size' must be an
    integer from 1 to 1125899906842624, got -1", "DISK: field 'name' is missing". What a field
    must be is said from its declaration (its type and msgspec.Meta limits, or the Meta's
    description), so the limits are written once."""
    try:
        return _complete(msgspec.convert(value, type_, strict=True))
    except msgspec.ValidationError as e:
        raise error(_which_field(value, type_, what) or f"{what}: {str(e).replace('`', '')}") from None


def _which_field(value: Any, type_: Any, what: str) -> str | None:
    """The first field of `value` that does not fit model `type_`, in words (None: not found)."""
    if not isinstance(value, dict):
        return f"{what} is not a JSON object"
    info = mi.type_info(type_)
    hints = get_type_hints(type_, include_extras=True)
    for f in info.fields:
        if f.encode_name not in value:
            if f.required:
                return f"{what}: field {f.encode_name!r} is missing"
            continue
        v = value[f.encode_name]
        try:
            msgspec.convert(v, hints[f.name], strict=True)
            continue
        except msgspec.ValidationError:
            pass
        item = _model_items(f.type)
        if item is not None and isinstance(v, list):
            for i, x in enumerate(v):
                inner = _which_field(x, item.cls, f"{what} {f.encode_name}[{i}]")
                if inner:
                    return inner
        return f"{what}: field {f.encode_name!r} must be {_words(f.type)}, got {v!r:.80}"
    return None


def _model_items(t: mi.Type) -> mi.Type | None:
    """The model of a list-of-models field (a HELLO's identities), else None."""
    if isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, (mi.ListType, mi.VarTupleType)):
        item = t.item_type.type if isinstance(t.item_type, mi.Metadata) else t.item_type
        if isinstance(item, (mi.StructType, mi.DataclassType)):
            return item
    return None


def _words(t: mi.Type) -> str:
    """What a value of a declared type must be, as an operator reads it."""
    if isinstance(t, mi.Metadata):
        said = (t.extra_json_schema or {}).get("description")
        return said or _words(t.type)
    if isinstance(t, mi.UnionType):
        return " or ".join(_words(x) for x in t.types if not isinstance(x, mi.NoneType))
    if isinstance(t, mi.BoolType):
        return "true or false"
    if isinstance(t, mi.IntType):
        if t.le is None:
            return "an integer" if t.ge is None else f"an integer of at least {t.ge}"
        return f"an integer from {t.ge} to {t.le}"
    if isinstance(t, mi.FloatType):
        return "a non-negative number" if t.ge == 0 else "a number"
    if isinstance(t, mi.StrType):
        if t.pattern:
            return f"a string matching {t.pattern}"
        return "a string" if t.max_length is None else f"a string (at most {t.max_length} characters)"
    if isinstance(t, (mi.DictType, mi.StructType, mi.DataclassType)):
        return "a JSON object"
    if isinstance(t, (mi.ListType, mi.VarTupleType)):
        item = t.item_type.type if isinstance(t.item_type, mi.Metadata) else t.item_type
        kind = "strings" if isinstance(item, mi.StrType) else "objects"
        if isinstance(item, mi.NamedTupleType):    # written as arrays: [end, digest]
            kind = "[" + ", ".join(f"{f.name}: {_words(f.type)}" for f in item.fields) + "]"
        return f"a list of {kind}" if t.max_length is None else f"a list of at most {t.max_length} {kind}"
    return type(t).__name__


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
