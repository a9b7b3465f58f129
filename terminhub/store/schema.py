"""Tables. Resources are kept as their served JSON bytes; search runs on index rows written with them.

Instants are integers (microseconds since the epoch, UTC) so that SQLite and PostgreSQL compare and
sort them the same way.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
)

metadata = MetaData()

resources = Table(
    "resources",
    metadata,
    Column("type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("content", LargeBinary, nullable=True),
    Column("created_by", String(64), nullable=True),
    Index("ix_resources_type_updated", "type", "last_updated"),
)

resource_versions = Table(
    "resource_versions",
    metadata,
    Column("type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", BigInteger, nullable=False),
    Column("method", String(8), nullable=False),
    Column("content", LargeBinary, nullable=True),
    Index("ix_versions_type_updated", "type", "last_updated"),
    Index("ix_versions_updated", "last_updated"),
)

# The value indexes of search_index: (name, columns, the rows each holds). Queries on them name a value
# of the first column that is not NULL (`code = …`, `lo >= …`) or say `IS NOT NULL` outright.
SEARCH_INDEX_PARTS = (
    ("ix_search_token", ("type", "param", "code", "system"), "code IS NOT NULL"),
    ("ix_search_text", ("type", "param", "text"), "text IS NOT NULL"),
    ("ix_search_date", ("type", "param", "lo", "hi"), "lo IS NOT NULL"),
    ("ix_search_ref", ("ref_type", "ref_id", "param", "type"), "ref_id IS NOT NULL"),
)

search_index = Table(
    "search_index",
    metadata,
    Column("type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=True),
    Column("text", Text, nullable=True),
    Column("lo", BigInteger, nullable=True),
    Column("hi", BigInteger, nullable=True),
    Column("ref_type", String(64), nullable=True),
    Column("ref_id", String(64), nullable=True),
    # (type, id, param): a resource's rows of one parameter. With (type, id) alone, a generic plan of a
    # prepared statement could prefer (type, param, …) and read every row of that parameter.
    Index("ix_search_owner_param", "type", "id", "param"),
    # Each value index holds only the rows that have such a value (`SEARCH_INDEX_PARTS`): a row is written
    # to two indexes, not five, and a lookup by (type, id, param) cannot be planned on one of them, which
    # PostgreSQL did without statistics, reading every row of the parameter.
    *(
        Index(name, *columns, postgresql_where=text(where), sqlite_where=text(where))
        for name, columns, where in SEARCH_INDEX_PARTS
    ),
)

positions = Table(
    "positions",
    metadata,
    Column("type", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("latitude", Float, nullable=False),
    Column("longitude", Float, nullable=False),
    Index("ix_positions_lat_lon", "latitude", "longitude"),
)

clients = Table(
    "clients",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("role", String(32), nullable=False),
    Column("bsnrs", Text, nullable=False, default="[]"),
    Column("secret_hash", Text, nullable=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
    Column("changed_at", BigInteger, nullable=False),
)

settings_kv = Table(
    "settings_kv",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("recorded", BigInteger, nullable=False),
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("method", String(8), nullable=False),
    Column("client_id", String(64), nullable=True),
    Column("delivered", Boolean, nullable=False, default=False),
)

idempotency = Table(
    "idempotency",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("status", Integer, nullable=False),
    Column("headers", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created", BigInteger, nullable=False),
    Index("ix_idempotency_created", "created"),
)


slot_claims = Table(
    "slot_claims",
    metadata,
    Column("slot_id", String(64), primary_key=True),
    Column("base_status", String(24), nullable=False),
    Column("appointment_id", String(64), nullable=True),
    Column("claim_until", BigInteger, nullable=True),
    Column("hold_owner", String(64), nullable=True),
    Column("held_until", BigInteger, nullable=True),
    Column("hold_renewed", Boolean, nullable=False, default=False),
    Index("ix_slot_claims_hold", "hold_owner", "held_until"),
    Index("ix_slot_claims_held_until", "held_until"),
    Index("ix_slot_claims_claim_until", "claim_until"),
)

# What each Slot offers (contract 3.1), one row per coding, with the Slot's start: slot searches range-scan
# (system, code, start) instead of intersecting index rows (terminhub/store/slot_offers.py).
slot_offers = Table(
    "slot_offers",
    metadata,
    Column("slot_id", String(64), primary_key=True),
    Column("system", Text, primary_key=True),
    Column("code", Text, primary_key=True),
    Column("start_us", BigInteger, nullable=False),
    Column("schedule_id", String(64), nullable=True),
    Column("inherited", Boolean, nullable=False),
    # A video Slot takes place nowhere: a search by place keeps it without reading its Schedule's place.
    Column("video", Boolean, nullable=False, default=False, server_default=false()),
    # What a search ranges over and orders by, then what it reads: holding every column a page of offers
    # reads, the index answers it alone, without a visit to the table for each row (migration 0010).
    Index("ix_slot_offers_coding_start", "system", "code", "start_us", "slot_id", "schedule_id", "video"),
    Index("ix_slot_offers_schedule", "schedule_id"),
)


referrals = Table(
    "referrals",
    metadata,
    Column("code", String(12), primary_key=True),
    Column("service_request_id", String(64), nullable=False, unique=True),
    Column("issuer", String(64), nullable=False),
    Column("priority", String(8), nullable=False),
    Column("acute", Boolean, nullable=False, default=False),
    Column("window_start", BigInteger, nullable=True),
    Column("window_end", BigInteger, nullable=True),
    Column("bookings", Integer, nullable=False, default=0),
    Column("appointment_id", String(64), nullable=True),
    Column("expired", Boolean, nullable=False, default=False),
    Column("closed", Boolean, nullable=False, default=False),
    Column("issued_at", BigInteger, nullable=False),
    Index("ix_referrals_window_end", "window_end"),
    Index("ix_referrals_appointment", "appointment_id"),
)

rate_counters = Table(
    "rate_counters",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("kind", String(24), primary_key=True),
    Column("bucket", BigInteger, primary_key=True),
    Column("count", Integer, nullable=False),
)


search_cursors = Table(
    "search_cursors",
    metadata,
    Column("token", String(64), primary_key=True),
    Column("state", Text, nullable=False),
    Column("created", BigInteger, nullable=False),
    Index("ix_search_cursors_created", "created"),
)


# The change feed (contract 5). `feed_clock` is the one-row counter that stamps `Provenance.recorded` at
# the end of a transaction, under its row lock, so stamps follow commit order across processes.
feed_clock = Table(
    "feed_clock",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("last", BigInteger, nullable=False),
)

# Which practices (by BSNR) a Provenance belongs to: those whose scope held the target's new or previous
# version when it was written. Kept beside the Provenance, because a previous version leaves no index rows.
feed_owners = Table(
    "feed_owners",
    metadata,
    Column("bsnr", String(16), primary_key=True),
    Column("recorded", BigInteger, primary_key=True),
    Column("provenance_id", String(64), nullable=False),
    Index("ix_feed_owners_provenance", "provenance_id"),
    Index("ix_feed_owners_recorded", "recorded"),
)

# Generation numbers of kinds of data that processes cache: a transaction that changed the kind counts one
# up before it commits (terminhub/store/generations.py), and a cache made at another number is dropped.
generations = Table(
    "generations",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("n", BigInteger, nullable=False),
)

# The polling rule: when each client's last first page was answered, and which searches it may page on.
poll_marks = Table(
    "poll_marks",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("last_first_page", BigInteger, nullable=False),
)

poll_searches = Table(
    "poll_searches",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("search_hash", String(64), primary_key=True),
    Column("answered", BigInteger, nullable=False),
    Index("ix_poll_searches_answered", "answered"),
)
