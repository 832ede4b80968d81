"""Webhooks: events delivered to subscribers as signed, batched, retried HTTP POSTs.

One module per job: :mod:`.subscriptions` (checked creation), :mod:`.urls` (the SSRF rules of
ingest, at registration and at every delivery), :mod:`.signing` (the HMAC scheme of
docs/webhooks.md), :mod:`.batching` (events fanned out to the subscriptions that want them and
grouped into deliveries), :mod:`.sender` (one POST, bounded), :mod:`.retry` (backoff),
:mod:`.retention` (pruning), :mod:`.dispatcher` (the periodic pass in workers and ``serve``).
Events themselves are written by the repositories, in the transaction of the change
(:mod:`indexer.db.event_repo`).
"""
