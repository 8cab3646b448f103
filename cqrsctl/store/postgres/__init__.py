"""PostgreSQL backend (psycopg 3 + psycopg-pool; see store.py)."""

from .events import PostgresTransaction
from .schema import MIGRATIONS
from .store import PostgresStore, parse_postgres_url

__all__ = ["MIGRATIONS", "PostgresStore", "PostgresTransaction", "parse_postgres_url"]
