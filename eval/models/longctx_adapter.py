"""``longctx_adapter``: an lmms-eval (0.7) model wrapping any supported Hugging Face VLM plus an adapter config.

Model args (``--model_args key=value,...``):

- ``pretrained``: local checkpoint folder (or hub id, if your machine can reach it);
- ``adapter``: any form of the config grammar (docs/configuration.md): ``preset``, ``saved``, ``none`` (stock
  model), a JSON config (quote it) or a path to a .json file, or shorthands joined with ``+`` where ``/`` stands for
  ``,`` (commas separate model args): ``progressive:2/8/4+yarn-visual``. Default: the model folder's saved
  ``longctx_adapter.json``, else the family preset;
- ``visual_window``: the visual training window for RoPE shorthands when the preset does not know it;
- ``max_frames_num`` (32): frames sampled uniformly from each video; ``fps``: sample at that rate instead, capped
  at ``max_frames_num``;
- ``device`` (``auto``), ``dtype`` (``auto``), ``attn_implementation``, ``max_new_tokens`` (default for tasks that set none, 256), ``system_prompt``,
  ``video_backend`` (``pyav``).

Requests: ``generate_until`` (greedy, stops at the task's ``until`` strings) and ``loglikelihood`` /
``multiple_choice`` (teacher-forced continuation log-probability, computed from the adapted model's logits in
the caller's layout). Visuals: video paths (sampled with :func:`longctx_adapter.eval.video.load_video`) or PIL
images (passed to the processor as images). Batch size 1. Under ``accelerate launch`` each process takes its
share of requests (lmms-eval splits them by ``rank``/``world_size``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm import tqdm

from longctx_adapter.errors import AdapterError

__all__ = ["LongctxAdapter"]


def _loglik_result(logprob: float, greedy: bool):
    """``(logprob, is_greedy)`` as lmms-eval's evaluator will keep it.

    lmms-eval 0.7.3's ``unwrap_generation_output`` turns every response that is not a string (or a
    ``GenerationResult``) into ``str(response)``, so a plain tuple reaches ``process_results`` as the text
    ``"(-5.8, False)"`` and multiple-choice scoring fails. A ``GenerationResult`` is passed through untouched
    (its ``.text`` is taken as is), so the tuple is wrapped in one where that class exists.
    """
    pair = (float(logprob), bool(greedy))
    try:
        from lmms_eval.api.instance import GenerationResult
    except ImportError:
        return pair
    return GenerationResult(text=pair)  # type: ignore[arg-type]


class LongctxAdapter(lmms):
    is_simple = True

    def __init__(
        self,
        pretrained: str,
        adapter: str | None = None,
        visual_window: int | None = None,
        max_frames_num: int = 32,
        fps: float | None = None,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str | None = None,
        max_new_tokens: int = 256,
        system_prompt: str | None = None,
        video_backend: str = "pyav",
        batch_size: int | str = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        from accelerate import PartialState
        from longctx_adapter.eval.runner import load_model

        from longctx_adapter import apply_adapter
        from longctx_adapter.config_text import parse_config

        if kwargs:
            logger.warning(f"longctx_adapter: ignoring unknown model args {sorted(kwargs)}")
        if int(batch_size) != 1:
            raise AdapterError("the longctx_adapter lmms-eval model runs batch_size=1")
        import torch

        cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        state = PartialState(cpu=cpu)
        if state.num_processes > 1 and device == "auto":
            device = str(state.device)
        self._rank, self._world_size = state.process_index, state.num_processes
        self.model, self.processor = load_model(pretrained, dtype=dtype, device=device,
                                                attn_implementation=attn_implementation)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.model_type = self.model.config.model_type
        self.adapter_config = parse_config(adapter, self.model_type, folder=pretrained,
                                           visual_window=int(visual_window) if visual_window else None)
        self.handle = apply_adapter(self.model, self.adapter_config) if self.adapter_config is not None else None
        self.max_frames_num = int(max_frames_num)
        self.fps = float(fps) if fps else None
        self.max_new_tokens = int(max_new_tokens)
        self.system_prompt = system_prompt or None
        self.video_backend = video_backend
        self.last_stats: list = []
        described = "stock" if self.adapter_config is None else self.adapter_config.to_json()
        logger.info(f"longctx_adapter: {type(self.model).__name__} from {pretrained}, adapter {described}")

    # --- inputs ----------------------------------------------------------------------------------
    @property
    def device(self):
        return self.model.device

    def _inputs(self, context: str, visuals):
        from longctx_adapter.eval.video import build_prompt, load_video, video_inputs

        visuals = [v for v in (visuals or []) if v is not None]
        if visuals and isinstance(visuals[0], str):
            if len(visuals) > 1:
                logger.warning(f"longctx_adapter: {len(visuals)} videos in one request; using the first")
            clip = load_video(visuals[0], None if self.fps else self.max_frames_num, fps=self.fps,
                              max_frames=self.max_frames_num if self.fps else None, backend=self.video_backend)
            inputs = video_inputs(self.processor, clip, context, model_type=self.model_type, system=self.system_prompt)
        elif visuals:
            images = [np.asarray(img.convert("RGB")) for img in visuals]
            prompt = self._image_prompt(context, len(images))
            inputs = self.processor(text=[prompt], images=[images], return_tensors="pt")
        else:
            prompt = build_prompt(context, self.model_type, 0, processor=self.processor, system=self.system_prompt)
            prompt = prompt.replace("<video>", "")  # text-only request: no visual part
            inputs = self.processor(text=[prompt], return_tensors="pt")
        inputs = inputs.to(self.model.device)
        for key in ("pixel_values", "pixel_values_videos"):
            if key in inputs and inputs[key].is_floating_point():
                inputs[key] = inputs[key].to(self.model.dtype)
        return inputs

    def _image_prompt(self, context: str, count: int) -> str:
        messages = [{"role": "user", "content": [*([{"type": "image"}] * count), {"type": "text", "text": context}]}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "USER: " + "<image>" * count + f"\n{context} ASSISTANT:"

    def _doc_visuals(self, doc_to_visual, doc_id, task, split):
        return doc_to_visual(self.task_dict[task][split][doc_id])

    # --- lmms API --------------------------------------------------------------------------------
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        from longctx_adapter.eval.option_scoring import continuation_ids, option_logprobs

        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="longctx_adapter loglikelihood"):
            context, target, doc_to_visual, doc_id, task, split = request.args
            if callable(target):
                target = target(self.task_dict[task][split][doc_id])
            if isinstance(target, list):
                target = target[0]
            inputs = self._inputs(context, self._doc_visuals(doc_to_visual, doc_id, task, split))
            scored = option_logprobs(self.model, inputs, [continuation_ids(self.tokenizer, str(target))])[0]
            self._remember()
            results.append(_loglik_result(scored["sum"], scored["greedy"]))
        return results

    def generate_until(self, requests) -> list[str]:
        import torch

        outputs = []
        for request in tqdm(requests, disable=self.rank != 0, desc="longctx_adapter generate"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            inputs = self._inputs(context, self._doc_visuals(doc_to_visual, doc_id, task, split))
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            kwargs = {
                "max_new_tokens": int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                "do_sample": temperature > 0,
                "num_beams": int(gen_kwargs.get("num_beams", 1) or 1),
            }
            if temperature > 0:
                kwargs["temperature"] = temperature
                if gen_kwargs.get("top_p") is not None:
                    kwargs["top_p"] = float(gen_kwargs["top_p"])
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
            with torch.inference_mode():
                out = self.model.generate(**inputs, pad_token_id=pad, **kwargs)
            self._remember()
            text = self.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for stop in until:
                if stop and stop in text:
                    text = text.split(stop)[0]
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return outputs

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("longctx_adapter does not implement multi-round generation")

    def _remember(self) -> None:
        if self.handle is not None:
            self.last_stats = list(self.handle.last_stats)
            if self.last_stats:
                s = self.last_stats[0]
                logger.debug(f"longctx_adapter: {s.get('frames')} frames, visual tokens {s['tokens_before']} -> "
                             f"{s['tokens_after']}, rope factor {s.get('rope_factor')}")
