"""vLLM's Qwen2-VL and Qwen2.5-VL with the adapter: pooling on the merged (t, h/2, w/2) grid, integer M-RoPE ids.

- Features: vLLM's vision transformer runs on the stock patches (`video_grid_thw` stays the stock grid, since the
  encoder needs it); each video's merged tokens are then pooled by the same ops as on the HF path.
- Placeholders: the processor's video run has `count_tokens(t, h/2, w/2, stages)` tokens, from the stock grid.
- Positions (`get_mrope_input_positions`): text, images and unpooled videos keep vLLM's stock ids; a pooled video
  token gets the centre of the window it averages in the stock (t, h, w) coordinates, rounded by the plugin's
  integer rule (layout.integer_positions); text after a video starts where it starts after the stock video, and
  generated tokens continue from there. The HF path keeps the fractional centres (see docs/serving-vllm.md).
- Images are never pooled (as on the HF path). EVS video pruning (Qwen2.5-VL `video_pruning_rate`) and the
  adapter's pooling are two answers to one question: the plugin refuses to combine them.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.pooling import pool_video
from longctx_adapter.vllm_plugin.attach import attach_adapter
from longctx_adapter.vllm_plugin.layout import pooled_mrope_ids, pooled_video_tokens, with_pooled_video_runs
from longctx_adapter.vllm_plugin.settings import adapter_for

_LOG = logging.getLogger(__name__)


def _pooling(model_config):
    adapter = adapter_for(model_config)
    return adapter.pooling if adapter is not None else ()


class _PooledVideoRuns:
    """Processor mixin: a video's placeholder run gets the pooled length of its stock grid."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        stages = _pooling(self.info.ctx.model_config)
        if not stages:
            return updates
        merge = self.info.get_hf_config().vision_config.spatial_merge_size
        token = self.info.get_tokenizer().get_vocab()[self.info.get_hf_processor(**hf_processor_mm_kwargs).video_token]

        def pooled_run(item_idx: int) -> list[int]:
            t, h, w = (int(n) for n in out_mm_kwargs["video"][item_idx]["video_grid_thw"].data.tolist())
            return [token] * pooled_video_tokens(t, h // merge, w // merge, stages)

        return with_pooled_video_runs(updates, pooled_run)


class _PooledQwen:
    """Model mixin: pooled video features, integer M-RoPE ids for pooled runs, the fixed visual-window RoPE."""

    def _adapter_init(self, vllm_config) -> None:
        def refuse_evs(adapter) -> None:
            if adapter.pooling and getattr(vllm_config.model_config.get_multimodal_config(), "video_pruning_rate", None):
                raise AdapterError(
                    f"{adapter.source}: video_pruning_rate (EVS) and the adapter's pooling both shrink video tokens; "
                    "serve one of them (drop --video-pruning-rate, or set pooling to null)"
                )

        attach_adapter(self, vllm_config, _LOG, check=refuse_evs)

    @property
    def _stages(self) -> tuple:
        return self.longctx_adapter.pooling if self.longctx_adapter is not None else ()

    def _process_video_input(self, video_input):
        per_video = super()._process_video_input(video_input)
        stages = self._stages
        if not stages:
            return per_video
        merge = self.config.vision_config.spatial_merge_size
        pooled = []
        for feats, (t, h, w) in zip(per_video, video_input["video_grid_thw"].tolist()):
            grid = feats.reshape(int(t), int(h) // merge, int(w) // merge, feats.shape[-1])
            pooled.append(pool_video(grid, stages).flatten())
        return tuple(pooled)

    def get_encoder_cudagraph_config(self):
        """Pooling happens after the encoder: keep videos off the encoder CUDA-graph path, which bypasses it."""
        config = super().get_encoder_cudagraph_config()
        if self._stages:
            config = dataclasses.replace(config, modalities=[m for m in config.modalities if m != "video"])
        return config

    def get_mrope_input_positions(self, input_tokens, mm_features):
        stages = self._stages
        if not stages:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        rows, cursor, next_id = [], 0, 0  # next_id: the id the next text token gets
        for feature, (offset, t, h, w, t_factor) in zip(
            sorted(mm_features, key=lambda f: f.mm_position.offset), self.iter_mm_grid_thw(mm_features)
        ):
            text = offset - cursor
            rows.append(np.broadcast_to(np.arange(text), (3, text)) + next_id)
            start = next_id + text
            t_ids = np.arange(t)
            if t_factor != 1.0:
                t_ids = (t_ids * t_factor).astype(np.int64)  # vLLM's stock temporal ids
            if feature.modality == "video":
                ids = pooled_mrope_ids(torch.from_numpy(t_ids).double(), h, w, stages).numpy()
            else:
                ids = np.indices((t, h, w)).reshape(3, -1)
            rows.append(ids + start)
            next_id = start + max(int(t_ids[-1]), h - 1, w - 1) + 1  # where stock text resumes after this item
            cursor = offset + ids.shape[1]
        if cursor < len(input_tokens):
            text = len(input_tokens) - cursor
            rows.append(np.broadcast_to(np.arange(text), (3, text)) + next_id)
            next_id += text
        positions = np.concatenate(rows, axis=1)
        return torch.from_numpy(positions), int(next_id - len(input_tokens))


class AdaptedQwen2VLProcessor(_PooledVideoRuns, Qwen2VLMultiModalProcessor):
    pass


class AdaptedQwen2_5VLProcessor(_PooledVideoRuns, Qwen2_5_VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    AdaptedQwen2VLProcessor, info=Qwen2VLProcessingInfo, dummy_inputs=Qwen2VLDummyInputsBuilder
)
class AdaptedQwen2VL(_PooledQwen, Qwen2VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._adapter_init(vllm_config)


@MULTIMODAL_REGISTRY.register_processor(
    AdaptedQwen2_5VLProcessor, info=Qwen2_5_VLProcessingInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class AdaptedQwen2_5VL(_PooledQwen, Qwen2_5_VLForConditionalGeneration):
    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._adapter_init(vllm_config)
