"""vLLM's LLaVA-OneVision with the adapter: pooling on the SigLIP grid in place of the built-in bilinear 2x.

As on the HF path (patches/llava_onevision.py): the vision tower and projector are vLLM's own, the pooling stages
act on the (frames, 27, 27) grid of each video instead of the stock bilinear 2x, and the one `image_newline` per
video follows the pooled tokens. The processor sizes each video's placeholder run with the same stage shape math
(`count_tokens(frames, side, side, stages) + 1`). With no adapter config every method is vLLM's. Weights: also the
transformers 5.x SigLIP names stock vLLM 0.32 does not read (weights.py).
"""

from __future__ import annotations

import logging

import torch
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import VideoProcessorItems

from longctx_adapter.ops.pooling import pool_video
from longctx_adapter.vllm_plugin.attach import attach_adapter
from longctx_adapter.vllm_plugin.layout import pooled_video_tokens, with_pooled_video_runs
from longctx_adapter.vllm_plugin.settings import adapter_for
from longctx_adapter.vllm_plugin.weights import with_vision_model_level

_LOG = logging.getLogger(__name__)


def _grid_side(vision_config) -> int:
    return vision_config.image_size // vision_config.patch_size


class AdaptedOnevisionProcessor(LlavaOnevisionMultiModalProcessor):
    """Stock prompt updates, except that a video's run has the pooled length (pooled tokens + 1 newline)."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        adapter = adapter_for(self.info.ctx.model_config)
        if adapter is None or not adapter.pooling:
            return updates
        token = self.info.get_hf_config().video_token_index
        side = _grid_side(self.info.get_hf_config().vision_config)

        def pooled_run(item_idx: int) -> list[int]:
            videos = mm_items.get_items("video", VideoProcessorItems)
            frames = videos.get_num_frames(item_idx)
            return [token] * pooled_video_tokens(frames, side, side, adapter.pooling, extra=1)

        return with_pooled_video_runs(updates, pooled_run)


@MULTIMODAL_REGISTRY.register_processor(
    AdaptedOnevisionProcessor, info=LlavaOnevisionProcessingInfo, dummy_inputs=LlavaOnevisionDummyInputsBuilder
)
class AdaptedLlavaOnevision(LlavaOnevisionForConditionalGeneration):
    hf_to_vllm_mapper = with_vision_model_level(LlavaOnevisionForConditionalGeneration.hf_to_vllm_mapper)

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        attach_adapter(self, vllm_config, _LOG)

    def _process_video_pixels(self, inputs):
        adapter = self.longctx_adapter
        if adapter is None or not adapter.pooling:
            return super()._process_video_pixels(inputs)
        pixels = inputs["pixel_values_videos"]
        videos = list(pixels.unbind(0)) if isinstance(pixels, torch.Tensor) else list(pixels)
        frames = [len(video) for video in videos]
        features = self.vision_tower(
            torch.cat(videos), feature_select_strategy=self.config.vision_feature_select_strategy
        )
        features = self.multi_modal_projector(features)  # (all frames, side * side, D): the grid before pooling
        side = _grid_side(self.config.vision_config)
        newline = self.image_newline[None].to(features.dtype)
        out = []
        for video in torch.split(features, frames):
            grid = video.reshape(video.shape[0], side, side, video.shape[-1])
            out.append(torch.cat([pool_video(grid, adapter.pooling).flatten(), newline], dim=0))
        return out
