"""Checkpoint files: safe reading, upstream-to-timm key remapping, and config inference.

The published checkpoint is ``torch.save({"model": state_dict, ...})`` with the upstream Swin
layout. This module turns such a state dict into one that :class:`ram_pp.model.RamPlus` loads
strictly, and recognises the architecture from the tensor shapes alone.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ram_pp.config import HeadConfig, LabelConfig, RamPlusConfig, VisionConfig

RAMDEX_FORMAT = "ramdex/1"
_IGNORED_BUFFERS = re.compile(r"\.(relative_position_index|attn_mask)$")
_UPSTREAM_DOWNSAMPLE = re.compile(r"^visual_encoder\.layers\.(\d+)\.downsample\.")
_BIAS_TABLE = re.compile(
    r"^visual_encoder\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table$"
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with a message that says why."""


class LoadedCheckpoint:
    """A checkpoint's model state and, for ramdex files, its config and vocabulary."""

    def __init__(
        self,
        state_dict: dict[str, torch.Tensor],
        config: dict[str, Any] | None = None,
        vocabulary: dict[str, Any] | None = None,
    ) -> None:
        self.state_dict = state_dict
        self.config = config
        self.vocabulary = vocabulary


def read_checkpoint(path: str | Path, trust: bool = False) -> LoadedCheckpoint:
    """Read a ``.pth`` (published or ramdex) or ``.safetensors`` checkpoint.

    Pickles are read with ``weights_only=True`` unless ``trust`` is set, which allows arbitrary
    code in the file to run: only for files from a source you trust.

    Raises:
        CheckpointError: the file is missing, not a checkpoint, or holds objects that safe
            loading refuses (the message names them and how to opt in).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "weights_only" in message or "Unsupported global" in message:
            found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
            what = found.group(1) if found else "an object that is not a tensor"
            raise CheckpointError(
                f"{path}: safe loading refused {what}. If you trust this file, allow full "
                "unpickling with --trust-checkpoint (RAMDEX_MODEL__TRUST_CHECKPOINT=1)."
            ) from exc
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: {message}") from exc
    except Exception as exc:  # the unpickler raises many types on hostile or foreign bytes
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint: {exc.__class__.__name__}: {exc}"
        ) from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' entry, got {type(payload)}")
    state = payload.get("model", payload)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the 'model' entry is not a state dict of tensors")
    return LoadedCheckpoint(state, payload.get("ramdex_config"), payload.get("ramdex_vocabulary"))


def _read_safetensors(path: Path) -> LoadedCheckpoint:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from exc
    config = json.loads(meta["ramdex_config"]) if "ramdex_config" in meta else None
    vocab = json.loads(meta["ramdex_vocabulary"]) if "ramdex_vocabulary" in meta else None
    return LoadedCheckpoint(state, config, vocab)


def save_checkpoint(
    path: str | Path,
    state_dict: dict[str, torch.Tensor],
    config: RamPlusConfig,
    vocabulary: dict[str, Any] | None = None,
) -> None:
    """Write a ramdex checkpoint (``.pth`` or ``.safetensors`` by suffix) carrying its config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        meta = {"format": RAMDEX_FORMAT, "ramdex_config": json.dumps(config.to_dict())}
        if vocabulary is not None:
            meta["ramdex_vocabulary"] = json.dumps(vocabulary, ensure_ascii=False)
        save_file(state, str(tmp), metadata=meta)
    else:
        torch.save(
            {"model": state, "ramdex_config": config.to_dict(), "ramdex_vocabulary": vocabulary},
            tmp,
        )
    tmp.replace(path)


def is_upstream_layout(state_dict: dict[str, torch.Tensor]) -> bool:
    """True for the published Swin layout (it stores the index buffers timm does not)."""
    return any(_IGNORED_BUFFERS.search(k) for k in state_dict)


def upstream_to_timm(
    state_dict: dict[str, torch.Tensor], config: RamPlusConfig
) -> dict[str, torch.Tensor]:
    """Remap a published state dict to this package's parameter names.

    Drops the ``relative_position_index`` and ``attn_mask`` buffers (rebuilt by timm) and moves
    upstream's ``layers.i.downsample`` (end of stage i) to timm's ``layers.{i+1}.downsample``
    (start of stage i+1).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if _IGNORED_BUFFERS.search(key):
            continue
        match = _UPSTREAM_DOWNSAMPLE.match(key)
        if match:
            stage = int(match.group(1))
            key = key.replace(f"layers.{stage}.downsample.", f"layers.{stage + 1}.downsample.", 1)
        out[key] = value
    return out


def adapt_bias_tables(
    state_dict: dict[str, torch.Tensor], config: RamPlusConfig
) -> dict[str, torch.Tensor]:
    """Resize relative-position bias tables whose window differs from the config's."""
    window = config.vision.window_size
    return {
        key: resize_bias_table(value, window) if _BIAS_TABLE.match(key) else value
        for key, value in state_dict.items()
    }


def resize_bias_table(table: torch.Tensor, window: int) -> torch.Tensor:
    """Resize a ((2w-1)^2, heads) relative-position bias table to another window (bicubic)."""
    side = round(table.shape[0] ** 0.5)
    new_side = 2 * window - 1
    if side == new_side:
        return table
    grid = table.T.reshape(1, table.shape[1], side, side).float()
    resized = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    return resized.reshape(table.shape[1], -1).T.to(table.dtype).contiguous()


def _stage_depths(keys: list[str]) -> list[int]:
    blocks: dict[int, set[int]] = {}
    for key in keys:
        m = re.match(r"^visual_encoder\.layers\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return [len(blocks[i]) for i in sorted(blocks)]


def infer_config(
    state_dict: dict[str, torch.Tensor],
    descriptions_per_tag: int = 51,
    image_size: int | None = None,
) -> RamPlusConfig:
    """Recognise a RAM++ architecture from the shapes in a (published-layout) state dict.

    The window comes from the bias-table size, the image size from the shifted-window mask count
    (or ``image_size``), heads from the bias-table columns. Registered configs with the same
    shapes take precedence, so the published Swin-L and Swin-B files map to their names.
    """
    try:
        keys = list(state_dict)
        depths = _stage_depths(keys)
        embed_dim = state_dict["visual_encoder.patch_embed.proj.weight"].shape[0]
        patch = state_dict["visual_encoder.patch_embed.proj.weight"].shape[-1]
        heads, window = [], 0
        for stage in range(len(depths)):
            table = state_dict[
                f"visual_encoder.layers.{stage}.blocks.0.attn.relative_position_bias_table"
            ]
            heads.append(table.shape[1])
            if stage == 0:
                window = (round(table.shape[0] ** 0.5) + 1) // 2
        if image_size is None:
            mask = state_dict.get("visual_encoder.layers.0.blocks.1.attn_mask")
            if mask is None:
                raise CheckpointError(
                    "cannot tell the image size from this state dict; pass a model config"
                )
            image_size = round(mask.shape[0] ** 0.5) * window * patch
        hidden = state_dict["wordvec_proj.weight"].shape[0]
        embed = state_dict["wordvec_proj.weight"].shape[1]
        layers = len({k.split(".")[3] for k in keys if k.startswith("tagging_head.encoder.layer.")})
        inter = state_dict["tagging_head.encoder.layer.0.intermediate.dense.weight"].shape[0]
        rows = state_dict["label_embed"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"not a RAM++ state dict: key {exc} is missing") from exc
    if rows % descriptions_per_tag:
        raise CheckpointError(
            f"label_embed has {rows} rows, not a multiple of {descriptions_per_tag} descriptions"
        )
    inferred = RamPlusConfig(
        name="inferred",
        vision=VisionConfig(
            image_size=image_size,
            patch_size=patch,
            window_size=window,
            embed_dim=embed_dim,
            depths=tuple(depths),
            num_heads=tuple(heads),
        ),
        head=HeadConfig(
            embed_dim=embed,
            hidden_size=hidden,
            num_layers=layers,
            num_heads=4,  # not visible in shapes; RAM++ uses 4
            intermediate_size=inter,
        ),
        labels=LabelConfig(
            num_tags=rows // descriptions_per_tag, descriptions_per_tag=descriptions_per_tag
        ),
    )
    return _match_registered(inferred)


def _match_registered(inferred: RamPlusConfig) -> RamPlusConfig:
    from ram_pp.config import get_config, list_configs

    for name in list_configs():
        known = get_config(name)
        if (known.vision, known.head, known.labels) == (
            inferred.vision,
            inferred.head,
            inferred.labels,
        ):
            return known
    return inferred


def check_keys(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Raise a :class:`CheckpointError` naming every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(
        f"{k} (file {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if wrong:
        problems.append(f"mis-shaped keys: {', '.join(wrong)}")
    if problems:
        raise CheckpointError("checkpoint does not fit the model; " + "; ".join(problems))
