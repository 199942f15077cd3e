"""vLLM's LLaVA-NeXT-Video with the adapter: pooling on each frame's grid after the model's own 2x average pooler.

As on the HF path (patches/llava_next_video.py): vision tower, average pooler (`vision_resampler`, 24x24 -> 12x12
on the released models) and projector are vLLM's own; the pooling stages act on the projected (frames, 12, 12) grid
of each video, which is where the HF path pools (`get_video_features`' output). The processor sizes each video's
placeholder run with the same stage shape math (`count_tokens(frames, side, side, stages)`; this family has no
newline token after a video). With no adapter config every method is vLLM's.

Weights: also the transformers 5.x CLIP names stock vLLM 0.32 does not read (weights.py).
"""

from __future__ import annotations

import logging
import math

import torch
from vllm.model_executor.models.llava_next_video import (
    LlavaNextVideoDummyInputsBuilder,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoMultiModalProcessor,
    LlavaNextVideoProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.parse import VideoProcessorItems

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.pooling import pool_video
from longctx_adapter.vllm_plugin.attach import attach_adapter
from longctx_adapter.vllm_plugin.layout import pooled_video_tokens, with_pooled_video_runs
from longctx_adapter.vllm_plugin.settings import adapter_for
from longctx_adapter.vllm_plugin.weights import with_vision_model_level

_LOG = logging.getLogger(__name__)


def _frame_side(tokens_per_frame: int) -> int:
    """The side of the square per-frame grid vLLM's stock processor and pooler give (tokens = side * side)."""
    side = math.isqrt(tokens_per_frame)
    if side * side != tokens_per_frame:
        raise AdapterError(f"a LLaVA-NeXT-Video frame has {tokens_per_frame} tokens, not a square grid to pool")
    return side


class AdaptedNextVideoProcessor(LlavaNextVideoMultiModalProcessor):
    """Stock prompt updates, except that a video's run has the pooled length."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        adapter = adapter_for(self.info.ctx.model_config)
        if adapter is None or not adapter.pooling:
            return updates
        token = self.info.get_hf_config().video_token_index

        def pooled_run(item_idx: int) -> list[int]:
            videos = mm_items.get_items("video", VideoProcessorItems)
            size = videos.get_frame_size(item_idx)
            side = _frame_side(self.info._get_num_frame_tokens(image_width=size.width, image_height=size.height))
            return [token] * pooled_video_tokens(videos.get_num_frames(item_idx), side, side, adapter.pooling)

        return with_pooled_video_runs(updates, pooled_run)


@MULTIMODAL_REGISTRY.register_processor(
    AdaptedNextVideoProcessor, info=LlavaNextVideoProcessingInfo, dummy_inputs=LlavaNextVideoDummyInputsBuilder
)
class AdaptedLlavaNextVideo(LlavaNextVideoForConditionalGeneration):
    hf_to_vllm_mapper = with_vision_model_level(LlavaNextVideoForConditionalGeneration.hf_to_vllm_mapper)

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        attach_adapter(self, vllm_config, _LOG)

    def _process_video_pixels(self, inputs):
        stock = super()._process_video_pixels(inputs)  # one (frames * side * side, D) tensor per video
        adapter = self.longctx_adapter
        if adapter is None or not adapter.pooling:
            return stock
        pixels = inputs["pixel_values_videos"]
        frames = [len(video) for video in (pixels.unbind(0) if isinstance(pixels, torch.Tensor) else pixels)]
        out = []
        for video, count in zip(stock, frames):
            side = _frame_side(video.shape[0] // count)
            grid = video.reshape(count, side, side, video.shape[-1])
            out.append(pool_video(grid, adapter.pooling).flatten())
        return out
