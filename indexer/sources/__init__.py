"""Sources: S3-compatible object-storage prefixes and (watched) folders ingested into a
collection, re-scanned incrementally (docs/sources.md).

One module per job: :mod:`~indexer.sources.uri` (what a source URI names),
:mod:`~indexer.sources.globs` (include/exclude patterns on keys), :mod:`~indexer.sources.s3`
(the S3 client, listing, streamed reads), :mod:`~indexer.sources.folder` (folder listing),
:mod:`~indexer.sources.diff` (a listing against what the last scans recorded),
:mod:`~indexer.sources.items` and :mod:`~indexer.sources.reading` (an object as the registrar
reads it), :mod:`~indexer.sources.scan` (one scan: list, diff, ingest, record),
:mod:`~indexer.sources.manage` (add, list, remove), :mod:`~indexer.sources.leases` (database
leases renewed while held), :mod:`~indexer.sources.watch` (watchdog with debouncing) and
:mod:`~indexer.sources.scheduler` (scans due sources and watches folders, one process at a time).
"""
