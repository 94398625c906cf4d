"""The Couchbase backend: every store on the Data (key-value) service alone.

No SQL++, no indexes, no views, no range scans: the backend runs on the smallest
cluster and against Couchbase's own mock server. Everything is written with
``insert`` (a key written twice is refused, never overwritten) and read back by
key, so every "query" is a walk over keys the backend can name. ``kv`` wraps one
SDK collection with the project's errors; ``facts`` lays the fact log out.
"""
