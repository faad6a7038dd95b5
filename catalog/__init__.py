"""Finding sessions as users and operators do: filtered, paginated listings and full-text search.

Reads only: nothing here records an event.
"""

from .listing import SessionPage, decode_cursor, encode_cursor, list_sessions

__all__ = ["SessionPage", "decode_cursor", "encode_cursor", "list_sessions"]
