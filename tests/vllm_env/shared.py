"""Cases shared by the HF side (hf_side.py, main venv) and the vLLM tests (vLLM venv): plain data only."""

STEPS = 4
OV_FRAMES, NV_FRAMES, QWEN_FRAMES = 8, 8, 8
OV_SIDE, NV_SIDE, QWEN_SIDE = 28, 32, 32  # frames at the processors' target size, so no resize happens on either side
OV_PROMPT = NV_PROMPT = "user <video> what color is the square ? assistant"
QWEN_PROMPT = "user <|vision_start|><video><|vision_end|> what color is the square ? assistant"
QWEN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }} {% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><video><|vision_end|>"
    "{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %} assistant{% endif %}"
)

# adapter configs served by the tests (each must be servable: parameter-free pooling, fixed rope factor)
OV_POOLED = {
    "pooling": {"type": "progressive", "group": 2, "strides": [2, 4]},
    "rope": {"type": "yarn", "visual_window": 48, "factor": 2.0},
}
OV_CONV = {"pooling": [{"type": "temporal", "kernel": 2, "stride": 2}, {"type": "conv3d", "kernel": [1, 3, 3]}]}
# window centres on whole numbers (3x3 windows on the 4x4 merged grid: centres 1 and 3): positions equal HF's
QWEN_WHOLE = {
    "pooling": {"type": "conv3d", "kernel": [1, 3, 3], "stride": [1, 3, 3]},
    "rope": {"type": "yarn", "visual_window": 3, "factor": 2.0},
}
# half-integer centres (bilinear stride 2 on 4x4: 0.5 and 2.5): the integer rule rounds them (ties down)
QWEN_HALF = {"pooling": {"type": "progressive", "group": 2, "strides": [1, 2]}}
# LLaVA-NeXT-Video: the 4x4 grid after the model's own 2x average pooler (8x8 CLIP patches), one chain with a
# frame-varying stride and a fixed YaRN factor
NV_POOLED = {
    "pooling": {"type": "progressive", "group": 2, "strides": [1, 2]},
    "rope": {"type": "yarn", "visual_window": 48, "factor": 2.0},
}
