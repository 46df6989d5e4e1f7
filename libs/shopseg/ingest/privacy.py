"""Which columns of a source are identifiers, and how their quarantined records are kept.

Bronze drops or keyed-hashes the identifier columns (`outputs.bronze_rows`); the
quarantine keeps the rejected records, so a record of a source holding
identifiers is kept as the JSON of the fields it read with the identifier
fields redacted, and a malformed one (whose fields cannot be told apart) is
withheld, its length and file kept. A users source must say what happens to
every column that looks like an identifier, by its name or by its values.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping, Sequence

from pyspark.sql import Column
from pyspark.sql import functions as F

from shopseg.config import SourceConf
from shopseg.ingest.records import source_field

REDACTED = "[redacted]"

# Name parts that mark a column as a direct identifier (split on non-letters
# and camelCase: customer_email, eMail, MobilePhone, ip_addr, first-name).
IDENTIFIER_WORDS = frozenset(
    {
        "email", "mail", "phone", "mobile", "cell", "tel", "telephone", "fax", "msisdn",
        "name", "firstname", "lastname", "fullname", "surname", "forename", "username",
        "address", "addr", "street", "ip", "ssn", "passport", "iban",
    }
)  # fmt: skip
EMAIL_VALUE = r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"
# Seven or more digits with the separators a phone number is written with;
# a bare run of digits (an id) does not count.
PHONE_VALUE = r"^\+?\(?[0-9][0-9 ().\-/]{5,}[0-9]$"
PHONE_SEPARATED = r"^\+|[ ().\-/]"
# ... nor does a date written with the same separators.
DATE_VALUE = r"^\d{1,4}[./\-]\d{1,2}[./\-]\d{1,4}$"
SAMPLE_ROWS = 200
VALUE_SHARE = 0.5


def name_words(name: str) -> set[str]:
    """Lower-case words of a column or field name (snake, kebab and camelCase)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    words = [w.lower() for w in re.split(r"[^A-Za-z0-9]+", spaced) if w]
    return set(words) | {"".join(words)}


def looks_like_identifier(name: str) -> bool:
    return bool(name_words(name) & IDENTIFIER_WORDS)


def expression_fields(expr: str) -> list[str]:
    """The identifier-like words an expression names (`lower(Email)` -> ['Email'])."""
    return [w for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr) if looks_like_identifier(w)]


def is_identifier_value(value: str) -> bool:
    v = value.strip()
    if re.match(EMAIL_VALUE, v):
        return True
    digits = sum(c.isdigit() for c in v)
    phone = re.match(PHONE_VALUE, v) and re.search(PHONE_SEPARATED, v)
    return digits >= 7 and bool(phone) and not re.match(DATE_VALUE, v)


def suspect_columns(
    source: SourceConf,
    explicit: Collection[str],
    samples: Mapping[str, Sequence[str | None]] | None = None,
) -> dict[str, str]:
    """String columns of a source that look like identifiers and whose action is not
    `explicit`, each with why: its name, the field or the fields its expression
    reads, or its values (more than half of a sample's non-null ones)."""
    out: dict[str, str] = {}
    for target, spec in source.columns.items():
        if target in explicit or spec.type != "string":
            continue
        field = source_field(target, spec)
        if looks_like_identifier(target):
            out[target] = "its name"
        elif spec.expr is not None and (named := expression_fields(spec.expr)):
            out[target] = f"its expression reads {named}"
        elif field is not None and looks_like_identifier(field):
            out[target] = f"it reads field {field!r}"
        elif samples and (values := [v for v in samples.get(target, ()) if v]):
            share = sum(map(is_identifier_value, values)) / len(values)
            if share > VALUE_SHARE:
                out[target] = f"{share:.0%} of {len(values)} sampled values are e-mails or phones"
    return out


def unread_identifier_fields(fields: Iterable[str], source: SourceConf) -> list[str]:
    """Fields of the files (a header, a Parquet schema) that look like identifiers
    and that no column reads: they sit in a record's raw text all the same."""
    read = {source_field(c, spec) for c, spec in source.columns.items()}
    return [f for f in fields if f not in read and looks_like_identifier(f)]


def shown_record(
    record: Column,
    malformed: Column,
    fields: Mapping[str, Column],
    redacted: Collection[str],
) -> Column:
    """What the quarantine keeps of a record of a source holding identifiers: the
    JSON of the fields read (as read), identifier fields redacted; a malformed
    record only as its length."""
    shown = F.to_json(
        F.struct(
            *[
                (F.when(raw.isNotNull(), F.lit(REDACTED)) if name in redacted else raw).alias(name)
                for name, raw in fields.items()
            ]
        )
    )
    withheld = F.format_string(
        "[withheld: malformed record of %d characters from a source with identifiers]",
        F.length(record),
    )
    return F.when(malformed, withheld).otherwise(shown)
