"""Assets that collection-limited keys upload, register and delete (docs/collections.md).

- A restricted key's upload or ingest goes to one of its collections (the ``collection``
  parameter; the key's only collection by default); the job is that collection's.
- The same bytes uploaded through two collections are one asset in both. A restricted key is
  told "duplicate" only when the asset was already its own alone; otherwise it is answered as a
  new asset, so an upload never reveals that another collection holds the same image.
- A restricted key's delete of an asset that other collections also hold takes it out of the
  key's collections only: the other collections keep it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.orm import Session

from indexer.db import collection_repo as repo
from indexer.db.collection_scope import CollectionScope
from indexer.db.errors import NotFoundError
from indexer.db.jobs import Job

if TYPE_CHECKING:
    from indexer.ingest.register import Registered


def upload_target(session: Session, scope: CollectionScope, requested: int | None) -> int | None:
    """The collection new assets of this caller go to (None: none).

    Raises:
        CollectionForbiddenError: ``requested`` is not one of a restricted caller's.
        CollectionRequiredError: a caller limited to several collections named none.
        NotFoundError: an unrestricted caller named a collection that does not exist.
    """
    target = scope.target_collection(requested)
    if target is not None and repo.get_collection(session, target) is None:
        raise NotFoundError(f"collection {target} does not exist")
    return target


def as_seen_by(
    session: Session, scope: CollectionScope, job_id: int, registered: Registered
) -> Registered:
    """The upload's outcome as this caller may learn it: a restricted caller's "duplicate" of
    an asset held by collections outside its scope (or by none) reads as a new asset."""
    if not scope.restricted or registered.state != "duplicate" or registered.asset_id is None:
        return registered
    held = repo.collections_of_assets(session, [registered.asset_id]).get(registered.asset_id, [])
    if held and all(scope.sees_collection(c) for c in held):
        return registered  # its own earlier upload
    job = session.get(Job, job_id)
    if job is not None:
        job.params = {**(job.params or {}), "duplicate": 0}
        session.commit()
    return dataclasses.replace(registered, state="queued")


def leave_other_collections(session: Session, scope: CollectionScope, asset_id: int) -> bool:
    """For a restricted caller's delete of an asset other collections hold too: take it out of
    the caller's collections (the caller commits) and return True. False: the caller may
    delete the asset itself (unrestricted, or it is the caller's alone)."""
    if not scope.restricted:
        return False
    held = repo.collections_of_assets(session, [asset_id]).get(asset_id, [])
    own = [c for c in held if scope.sees_collection(c)]
    if len(own) == len(held):
        return False
    for collection_id in own:
        repo.remove_assets_from_collection(session, collection_id, [asset_id])
    return True


def set_job_collection(session: Session, job_id: int, collection_id: int | None) -> None:
    """Make a job a collection's (its keys see it); the caller commits."""
    if collection_id is not None:
        session.execute(sa.update(Job).where(Job.id == job_id).values(collection_id=collection_id))
