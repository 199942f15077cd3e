"""Independent references for adapter tests: features from the stock submodules, embeddings spliced by hand.

Nothing here goes through longctx_adapter's call path; only the pure pooling op is shared, and it is tested
on its own against torch references in test_pooling.py.
"""

from __future__ import annotations

import torch

from longctx_adapter.ops.pooling import normalize_pooling, pool_video
from longctx_adapter.testing.tiny import frames_as_images, placeholder_token_id


def naive_starts(size, kernel, stride):
    """Window starts at 0, s, 2s, ... until a window reaches the end of the axis."""
    starts, start = [], 0
    while True:
        starts.append(start)
        if start + kernel >= size:
            return starts
        start += stride


def _select(model, hidden_states, crop_cls: bool):
    layer = model.config.vision_feature_layer
    feats = hidden_states[layer]
    return feats[:, 1:] if crop_cls else feats


@torch.no_grad()
def reference_videos(model, model_type, inputs, frame_counts) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(grid (T, H, W, D), tail or None) per video, computed from the stock submodules."""
    inner = model.model
    if model_type in ("llava", "llava_next"):
        pixels = inputs["pixel_values"]
        if model_type == "llava_next":
            pixels = pixels[:, 0]  # base tile of every image
        hs = inner.vision_tower(pixels, output_hidden_states=True).hidden_states
        feats = inner.multi_modal_projector(_select(model, hs, crop_cls=True))
        side = int(feats.shape[1] ** 0.5)
        grids, start = [], 0
        for count in frame_counts:
            grids.append((feats[start : start + count].reshape(count, side, side, -1), None))
            start += count
        return grids
    if model_type == "llava_next_video":
        out = inner.get_video_features(pixel_values_videos=inputs["pixel_values_videos"]).pooler_output
        frames = inputs["pixel_values_videos"].shape[1]
        side = int((out.shape[1] // frames) ** 0.5)
        return [(v.reshape(frames, side, side, -1), None) for v in out]
    if model_type == "llava_onevision":
        videos = inputs["pixel_values_videos"]
        batch, frames = videos.shape[:2]
        hs = inner.vision_tower(videos.flatten(0, 1), output_hidden_states=True).hidden_states
        feats = inner.multi_modal_projector(_select(model, hs, crop_cls=False))
        side = int(feats.shape[1] ** 0.5)
        grids = feats.reshape(batch, frames, side, side, -1)
        return [(g, inner.image_newline[None]) for g in grids]
    raise ValueError(model_type)


def placeholder_runs(row: list[int], token: int) -> list[tuple[int, int]]:
    """(start, end) of every run of `token` in one row of ids."""
    runs, i = [], 0
    while i < len(row):
        if row[i] == token:
            j = i
            while j < len(row) and row[j] == token:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    return runs


@torch.no_grad()
def reference_embeds(model, model_type, inputs, pooling, frame_counts, image_features=None):
    """(inputs_embeds, attention_mask, maps): every video pooled by hand at its shrunken run, rows left-padded;
    maps[b] pairs each of row b's caller text positions with its position in the reference layout.

    image_features: stock features of the images (one (n_i, D) per image) for prompts that also hold images
    on a class whose videos use their own token (LLaVA-NeXT-Video); those runs stay stock.
    """
    stages = normalize_pooling(pooling)
    token = placeholder_token_id(model, "image" if frames_as_images(model_type) else "video")
    image_token = placeholder_token_id(model, "image")
    videos = reference_videos(model, model_type, inputs, frame_counts)
    images = list(image_features or [])
    embed = model.get_input_embeddings()
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    rows, maps, cursor = [], [], 0
    for b in range(ids.shape[0]):
        live = mask[b].nonzero().squeeze(1).tolist()
        row = ids[b, live].tolist()
        spans = [(s, e, "video") for s, e in placeholder_runs(row, token)]
        if images and token != image_token:
            spans += [(s, e, "image") for s, e in placeholder_runs(row, image_token)]
        pieces, mapping, pos, last = [], [], 0, 0
        for start, end, kind in sorted(spans):
            pieces.append(embed(torch.tensor(row[last:start], dtype=torch.long)))
            mapping += [(live[k], pos + k - last) for k in range(last, start)]
            pos += start - last
            if kind == "video":
                grid, tail = videos[cursor]
                cursor += 1
                feats = pool_video(grid, stages).flatten()
                if tail is not None:
                    feats = torch.cat([feats, tail])
            else:
                feats = images.pop(0)
                assert feats.shape[0] == end - start
            pieces.append(feats)
            pos += feats.shape[0]
            last = end
        pieces.append(embed(torch.tensor(row[last:], dtype=torch.long)))
        mapping += [(live[k], pos + k - last) for k in range(last, len(row))]
        rows.append(torch.cat(pieces))
        maps.append(mapping)
    assert cursor == len(videos) and not images
    length = max(r.shape[0] for r in rows)
    pad = embed(torch.tensor([model.config.text_config.pad_token_id or 0]))[0]
    embeds = pad.expand(len(rows), length, -1).clone()
    ref_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, r in enumerate(rows):
        embeds[b, length - r.shape[0] :] = r
        ref_mask[b, length - r.shape[0] :] = 1
        maps[b] = [(c, length - r.shape[0] + p) for c, p in maps[b]]
    return embeds, ref_mask, maps


@torch.no_grad()
def reference_forward(model, model_type, inputs, pooling, frame_counts):
    """Stock model fed pooled features by hand. Returns (logits, text_positions) where text_positions maps
    each row's caller text positions to positions in the reference layout: list of (caller_idx, ref_idx)."""
    embeds, mask, maps = reference_embeds(model, model_type, inputs, pooling, frame_counts)
    return model(inputs_embeds=embeds, attention_mask=mask).logits, maps
