"""Search over an archive: tag filters, free-text concepts and similar images, one way for all.

:class:`~indexer.search.service.SearchService` is what the API, the command line, ``ramdex demo``
and Python callers use; the SQL of tag search stays in :mod:`indexer.db.search`.
"""
