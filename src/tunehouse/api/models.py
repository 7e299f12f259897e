"""``/v1/models``: the base model plus the caller's fine-tuned models and checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter

from tunehouse.api.chat import engine_holder
from tunehouse.api.deps import AppState, Owner, State
from tunehouse.errors import InvalidRequest
from tunehouse.store import events as ev
from tunehouse.store.files import remove_model_dir
from tunehouse.store.models import ModelRow

router = APIRouter(prefix="/v1", tags=["models"])


def _base_object(state: AppState) -> dict[str, Any]:
    path = Path(state.settings.base_model).expanduser()
    created = int(path.stat().st_mtime) if path.exists() else 0
    return {"id": state.settings.base_id, "object": "model", "created": created,
            "owned_by": "tunehouse"}


def model_object(row: ModelRow) -> dict[str, Any]:
    return {"id": row.id, "object": "model", "created": row.created_at, "owned_by": "user"}


@router.get("/models")
def list_models(state: State, owner: Owner) -> dict[str, Any]:
    data = [_base_object(state)] + [model_object(r) for r in ev.list_models(state.db,
                                                                             owner=owner)]
    return {"object": "list", "data": data, "has_more": False}


@router.get("/models/{model:path}")
def retrieve_model(model: str, state: State, owner: Owner) -> dict[str, Any]:
    if state.is_base(model):
        return _base_object(state)
    return model_object(ev.get_model(state.db, owner=owner, model_id=model))


@router.delete("/models/{model:path}")
def delete_model(model: str, state: State, owner: Owner) -> dict[str, Any]:
    """Delete a fine-tuned model or checkpoint: its row, its served copy and its files."""
    if state.is_base(model):
        raise InvalidRequest(f"'{model}' is the server's base model; only fine-tuned models "
                             "can be deleted.", param="model", code="model_not_deletable")
    row = ev.delete_model(state.db, owner=owner, model_id=model)
    engine_holder(state).forget(model)
    remove_model_dir(row.path)
    return {"id": model, "object": "model", "deleted": True}
