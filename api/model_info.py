"""The configured model as the API names it: one :class:`~api.schemas.ModelOut` for readiness
and the web UI's demo banner, and the human name for every response that says which model scored
what (``ramdex-demo``, not the stored id ``model@1e9ae7bcad4f``).

Works over the app's services (anything with ``settings``, ``lazy`` and ``model_id``): the
description is worked out once per app, without loading the weights.
"""

from __future__ import annotations

from typing import Any

from api.problems import ProblemError
from api.schemas import ModelOut
from indexer.models import ModelNotAvailableError, describe_configured_model, model_name_for_id
from ram_pp.factory import ModelDescription


def model_description(services: Any) -> ModelDescription:
    """Name, digest, tag count and demo flag of the configured model (computed once)."""
    return services.lazy("model_description", lambda: describe_configured_model(services.settings))


def _configured_id(services: Any) -> str | None:
    try:
        return services.model_id()
    except (ProblemError, ModelNotAvailableError):  # not on this machine: no stored id
        return None


def model_name(services: Any, model_id: str | None = None) -> str | None:
    """Human name of a stored model id (``assets.model_name``); without one, the configured
    model's name."""
    described = model_description(services)
    if model_id is None:
        return described.name
    current = _configured_id(services)
    configured = (current, described) if current is not None else None
    return model_name_for_id(model_id, services.settings, configured)


def model_out(services: Any) -> ModelOut:
    """The configured model for API responses (``id`` null when it is not on this machine)."""
    return ModelOut(id=_configured_id(services), **model_description(services).to_dict())
