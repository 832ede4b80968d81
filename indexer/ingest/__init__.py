"""Ingest: from files and URLs to stored tags, embeddings, tokens and thumbnails.

One module per step of an asset's life, each owning its part of the state machine on the
``assets`` row (the source of truth; broker messages only wake workers up):

- :mod:`~indexer.ingest.register` (sources -> assets): walk folders, download URLs, hash and copy
  originals into the media store, get-or-create assets by content, record sources and the job's
  ledger; new and resumed assets are ``pending``, leased to the registering process;
- :mod:`~indexer.ingest.dispatch` (broker mode): after the commit, send ids to the model queue
  and record ``dispatched_at``; also index-sync requests;
- :mod:`~indexer.ingest.process` (the model): claim under a lease (``processing``), decode,
  thumbnail, run the model in batches, store every result of a batch in one transaction that
  ends the assets ``done`` or ``failed`` and credits their jobs;
- :mod:`~indexer.ingest.reconcile` (recovery): expired leases and lost messages become runnable
  again, abandoned registrations are settled, a stale FAISS index is re-synced;
- :mod:`~indexer.ingest.lease` (who holds what): owner names, the heartbeat, dead-owner checks;
- :mod:`~indexer.ingest.pipeline` (``ramdex ingest``): :func:`~indexer.ingest.pipeline.ingest`
  ties the steps together, in-process (embedded mode) or with Celery workers;
- :mod:`~indexer.ingest.transient` (errors worth retrying).

The Celery tasks (:mod:`indexer.tasks`) are a thin layer on top; nothing here imports them.
"""
