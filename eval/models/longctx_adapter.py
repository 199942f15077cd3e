"""``longctx_adapter``: an lmms-eval (0.7) model wrapping any supported Hugging Face VLM plus an adapter config.

Model args (``--model_args key=value,...``; docs/evaluation-lmms.md has the full table). Every argument is checked
when the model is built, before any weights load; an unknown name is refused (with the closest known one).

- ``pretrained``: a local model folder or a Hugging Face hub id (``revision``: its branch, tag or commit),
  resolved with ``huggingface_hub.snapshot_download`` (so ``HF_HUB_OFFLINE=1`` reads the local cache);
- ``adapter``: any form of the config grammar (docs/configuration.md): ``preset``, ``saved``, ``none`` (stock
  model), a JSON config (quote it) or a path to a .json file, or shorthands joined with ``+`` where ``/`` stands for
  ``,`` (commas separate model args): ``progressive:2/8/4+yarn-visual``. Default: the model folder's saved
  ``longctx_adapter.json``, else the family preset; ``visual_window``: the RoPE window where the preset lacks it;
- frames: ``max_frames_num`` (32), ``fps``, ``frame_sampling`` (``lmms``: lmms-eval's own ``read_video`` rule, the
  default; ``round``: the rule of ``longctx-adapter run``), ``force_include_last_frame``, ``video_backend``
  (default ``LMMS_VIDEO_DECODE_BACKEND``, else ``pyav``);
- Qwen-VL: ``max_pixels``, ``min_pixels`` (given to ``AutoProcessor.from_pretrained``, as lmms-eval's Qwen models);
- ``device``, ``dtype``, ``attn_implementation``, ``max_new_tokens`` (256), ``system_prompt``,
  ``batch_size`` (1 only), ``max_batch_size`` (accepted, unused).

Requests: ``generate_until`` (greedy unless the task sets a temperature, cut at the task's ``until`` strings) and
``loglikelihood`` / ``multiple_choice``, answered as lmms-eval's own models answer them: ``(loss, is_greedy)``
with ``loss`` the mean negative log-likelihood of the continuation's tokens (lmms-eval picks the choice with the
*smallest* value). Visuals: video paths or PIL images. Batch size 1. Under ``accelerate launch`` each process takes
its share of requests (lmms-eval splits them by ``rank``/``world_size``).
"""

from __future__ import annotations

import difflib
import importlib
import os
from typing import Any

import numpy as np
from lmms_eval.api.model import lmms
from loguru import logger
from tqdm import tqdm

from longctx_adapter.errors import AdapterError

__all__ = ["MODEL_ARGS", "LongctxAdapter", "resolve_pretrained", "validate_model_args"]

#: the backend lmms-eval's read_video takes when none is given, from this environment variable
BACKEND_ENV = "LMMS_VIDEO_DECODE_BACKEND"
_BACKEND_MODULES = {"pyav": "av", "decord": "decord", "torchcodec": "torchcodec.decoders"}


# ---------------------------------------------------------------------------------------------------------------------
# Model arguments: each is parsed and checked before anything loads.


def _positive_int(name: str, value, example: int = 32) -> int:
    number = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    elif isinstance(value, float) and value.is_integer():  # lmms-eval parses "-3" and "8.0" as floats
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise AdapterError(f"model argument {name}={value!r}: expected a positive integer, e.g. {name}={example}")
    return number


def _positive_float(name: str, value) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not np.isfinite(number) or number <= 0:
        raise AdapterError(f"model argument {name}={value!r}: expected a positive number, e.g. {name}=1")
    return number


def _flag(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise AdapterError(f"model argument {name}={value!r}: expected true or false")


def _choice(name: str, value, choices) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise AdapterError(f"model argument {name}={value!r}: use one of {', '.join(choices)}")
    return text


def _text(name: str, value) -> str:
    if isinstance(value, bool):
        raise AdapterError(f"model argument {name}={value!r}: expected text")
    return str(value)


def _device(name: str, value) -> str:
    import torch

    text = str(value).strip()
    if text == "auto":
        return text
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError) as exc:
        raise AdapterError(f"model argument {name}={value!r}: not a device ({exc}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AdapterError(f"model argument {name}={value!r}: no CUDA device is available here; use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AdapterError(f"model argument {name}={value!r}: only {torch.cuda.device_count()} CUDA devices here")
    return text


def _dtype(name: str, value) -> str:
    import torch
    from longctx_adapter.eval.runner import resolve_dtype

    text = str(value).strip()
    try:
        resolve_dtype(text, torch.device("cpu"))
    except AdapterError as err:
        raise AdapterError(f"model argument {name}={value!r}: {err}") from None
    return text


def _batch_size(name: str, value) -> int:
    if str(value).strip() != "1":
        raise AdapterError(f"model argument {name}={value!r}: the longctx_adapter model runs batch_size=1")
    return 1


def _backend(name: str, value) -> str:
    from longctx_adapter.eval.video import BACKENDS

    text = str(value).strip().lower()
    where = f"{BACKEND_ENV}={value}" if name == BACKEND_ENV else f"model argument {name}={value!r}"
    if text not in BACKENDS:
        raise AdapterError(f"{where}: longctx_adapter decodes with {', '.join(BACKENDS)}; use one of them")
    try:
        importlib.import_module(_BACKEND_MODULES[text])
    except Exception as exc:  # ImportError, or a backend whose native libraries fail to load
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        package = {"pyav": "av"}.get(text, text)
        raise AdapterError(f"{where}: {text} cannot be used here ({first}); pip install {package} or use pyav") from None
    return text


def _optional(check):
    return lambda name, value: None if value is None else check(name, value)


#: name -> (check, default): every model argument the longctx_adapter model takes
MODEL_ARGS: dict[str, tuple] = {
    "pretrained": (_text, None),
    "revision": (_optional(_text), None),
    "adapter": (_optional(_text), None),
    "visual_window": (_optional(lambda n, v: _positive_int(n, v, 6272)), None),
    "max_frames_num": (_positive_int, 32),
    "fps": (_optional(_positive_float), None),
    "frame_sampling": (lambda n, v: _choice(n, v, ("lmms", "round")), "lmms"),
    "force_include_last_frame": (_flag, False),
    "video_backend": (_optional(_backend), None),
    "max_pixels": (_optional(lambda n, v: _positive_int(n, v, 602112)), None),
    "min_pixels": (_optional(lambda n, v: _positive_int(n, v, 3136)), None),
    "device": (_device, "auto"),
    "dtype": (_dtype, "auto"),
    "attn_implementation": (_optional(_text), None),
    "max_new_tokens": (lambda n, v: _positive_int(n, v, 256), 256),
    "system_prompt": (_optional(_text), None),
    "batch_size": (_batch_size, 1),
    "max_batch_size": (_optional(_positive_int), None),  # lmms-eval's --max_batch_size (for batch_size=auto)
}


def validate_model_args(given: dict) -> dict:
    """All model arguments, parsed and checked, defaults filled in; AdapterError naming the argument and the fix."""
    unknown = sorted(set(given) - set(MODEL_ARGS))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(MODEL_ARGS), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]}?)" if close else ""))
        raise AdapterError(
            f"unknown longctx_adapter model argument {', '.join(hints)}; the model takes {', '.join(MODEL_ARGS)}"
        )
    if given.get("pretrained") in (None, ""):
        raise AdapterError("model argument pretrained= is required: a local model folder or a Hugging Face hub id")
    args = {name: (check(name, given[name]) if name in given else default) for name, (check, default) in MODEL_ARGS.items()}
    if args["video_backend"] is None:
        from_env = os.environ.get(BACKEND_ENV)  # lmms-eval's own default backend, else PyAV (checked as given ones)
        args["video_backend"] = _backend(BACKEND_ENV, from_env) if from_env else _backend("video_backend", "pyav")
    if args["force_include_last_frame"] and args["frame_sampling"] != "lmms":
        raise AdapterError("model argument force_include_last_frame=true belongs to frame_sampling=lmms")
    low, high = args["min_pixels"], args["max_pixels"]
    if low is not None and high is not None and low > high:
        raise AdapterError(f"model arguments min_pixels={low} > max_pixels={high}: min_pixels must not exceed max_pixels")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# pretrained: a folder or a hub id.


def _looks_like_path(text: str) -> bool:
    return text.startswith((os.sep, ".", "~")) or text.count("/") > 1 or "\\" in text


def resolve_pretrained(pretrained: str, revision: str | None = None) -> str:
    """The local folder of ``pretrained``: the folder itself, or the hub id's snapshot (downloaded, or read from the
    Hugging Face cache where the hub cannot be reached or ``HF_HUB_OFFLINE=1``)."""
    text = os.path.expanduser(str(pretrained))
    if os.path.isdir(text):
        if revision is not None:
            raise AdapterError(f"model argument revision={revision!r} applies to hub ids, and {text!r} is a local folder")
        return text
    if os.path.exists(text):
        raise AdapterError(f"model argument pretrained={pretrained!r} is a file; give the model's folder or a hub id")
    if _looks_like_path(text):
        raise AdapterError(f"model argument pretrained={pretrained!r}: no such folder (give a model folder or a hub id)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # what from_pretrained reads: config, weights (safetensors), tokenizer, processor and chat template files
    wanted = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
    try:
        folder = snapshot_download(repo_id=text, revision=revision, allow_patterns=wanted)
    except HFValidationError as exc:
        raise AdapterError(f"model argument pretrained={pretrained!r}: neither a folder nor a hub id ({exc})") from None
    except RepositoryNotFoundError:
        raise AdapterError(f"model argument pretrained={pretrained!r}: no such model on the Hugging Face hub") from None
    except RevisionNotFoundError:
        raise AdapterError(f"model argument revision={revision!r}: {pretrained!r} on the hub has no such revision") from None
    except LocalEntryNotFoundError:
        raise AdapterError(
            f"model argument pretrained={pretrained!r}: not a local folder, not in the Hugging Face cache, and the hub "
            "cannot be reached; download it once where it can (huggingface-cli download ...) or pass a folder"
        ) from None
    if not any(name.endswith(".safetensors") for name in os.listdir(folder)):
        raise AdapterError(f"hub model {pretrained!r} has no .safetensors weights; download it and pass its folder")
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# The model.


def _loglik_result(loss: float, greedy: bool):
    """``(loss, is_greedy)`` as lmms-eval's evaluator will keep it.

    lmms-eval 0.7.3's ``unwrap_generation_output`` turns every response that is not a string (or a
    ``GenerationResult``) into ``str(response)``, so a plain tuple reaches ``process_results`` as the text
    ``"(0.58, False)"`` and multiple-choice scoring fails. A ``GenerationResult`` is passed through untouched
    (its ``.text`` is taken as is), so the tuple is wrapped in one where that class exists.
    """
    pair = (float(loss), bool(greedy))
    try:
        from lmms_eval.api.instance import GenerationResult
    except ImportError:
        return pair
    return GenerationResult(text=pair)  # type: ignore[arg-type]


class LongctxAdapter(lmms):
    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        import torch
        from accelerate import PartialState
        from longctx_adapter.eval.runner import load_model
        from transformers import AutoConfig

        from longctx_adapter import apply_adapter, supported_models
        from longctx_adapter.config_text import ADAPTER_CONFIG_NAME, parse_config, saved_config_path
        from longctx_adapter.registry import family_for

        args = validate_model_args(model_args)
        self.args = args
        folder = resolve_pretrained(args["pretrained"], args["revision"])
        model_type = AutoConfig.from_pretrained(folder).model_type
        if model_type not in supported_models():
            raise AdapterError(f"{args['pretrained']} is a {model_type!r} model; longctx_adapter runs {supported_models()}")
        pixels = {k: args[k] for k in ("max_pixels", "min_pixels") if args[k] is not None}
        if pixels and not set(pixels) <= set(family_for(model_type).pixel_budget_args):
            raise AdapterError(f"model arguments {', '.join(pixels)} apply to Qwen-VL models, not {model_type!r}")
        # the adapter config is parsed (and refused) before any weights load
        self.adapter_config = parse_config(args["adapter"], model_type, folder=folder, visual_window=args["visual_window"])
        saved = saved_config_path(folder)
        if str(args["adapter"]).strip().lower() == "preset" and saved is not None:
            kept = parse_config("saved", model_type, folder=folder, visual_window=args["visual_window"])
            if kept != self.adapter_config:
                logger.warning(f"longctx_adapter: adapter=preset takes the {model_type} family preset, not the folder's "
                               f"saved {ADAPTER_CONFIG_NAME}; omit adapter (or adapter=saved) to use the saved config")

        device = args["device"]
        cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        state = PartialState(cpu=cpu)
        if state.num_processes > 1 and device == "auto":
            device = str(state.device)
        self._rank, self._world_size = state.process_index, state.num_processes
        self.pretrained_folder = folder
        self.model, self.processor = load_model(folder, dtype=args["dtype"], device=device,
                                                attn_implementation=args["attn_implementation"])
        if pixels:  # as lmms-eval's Qwen models build theirs
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(folder, **pixels)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.model_type = self.model.config.model_type
        self.handle = apply_adapter(self.model, self.adapter_config) if self.adapter_config is not None else None
        self.max_frames_num = args["max_frames_num"]
        self.fps = args["fps"]
        self.frame_sampling = args["frame_sampling"]
        self.force_include_last_frame = args["force_include_last_frame"]
        self.max_new_tokens = args["max_new_tokens"]
        self.system_prompt = args["system_prompt"] or None
        self.video_backend = args["video_backend"]
        self.last_stats: list = []
        self.last_clip = None
        described = "stock" if self.adapter_config is None else self.adapter_config.to_json()
        logger.info(f"longctx_adapter: {type(self.model).__name__} from {folder}, adapter {described}, frames "
                    f"{self.frame_sampling} (max {self.max_frames_num}), {self.video_backend}")

    # --- inputs ----------------------------------------------------------------------------------
    @property
    def device(self):
        return self.model.device

    def _load_video(self, path):
        from longctx_adapter.eval.video import load_video

        if self.frame_sampling == "lmms":
            return load_video(path, self.max_frames_num, fps=self.fps, backend=self.video_backend, sampling="lmms",
                              force_include_last_frame=self.force_include_last_frame)
        return load_video(path, None if self.fps else self.max_frames_num, fps=self.fps,
                          max_frames=self.max_frames_num if self.fps else None, backend=self.video_backend)

    def _inputs(self, context: str, visuals):
        from longctx_adapter.eval.video import build_prompt, video_inputs

        visuals = [v for v in (visuals or []) if v is not None]
        if visuals and isinstance(visuals[0], str):
            if len(visuals) > 1:
                logger.warning(f"longctx_adapter: {len(visuals)} videos in one request; using the first")
            clip = self.last_clip = self._load_video(visuals[0])
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
    def loglikelihood(self, requests) -> list:
        """Per request ``(loss, is_greedy)``: the mean negative log-likelihood of the continuation's tokens given
        the prompt (what lmms-eval's own models return: the language-model loss over the continuation), and whether
        every continuation token is the argmax. lmms-eval's multiple choice takes the choice of smallest loss."""
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
            results.append(_loglik_result(-scored["mean"], scored["greedy"]))
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
