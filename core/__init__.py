"""tessera.core: what the server, the client and the ingest consumer share.

Schema and type system, value codecs, key encoding, event-time parsing, the error classes. A pure
library: no servers, no sockets, no storage engine.
"""
