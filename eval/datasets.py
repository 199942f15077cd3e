"""Multiple-choice video QA items from local files: our JSONL format, V-NIAH, MLVU, Video-MME and MVBench.

Every loader returns a list of :class:`EvalItem`: an id, the question, the options (plain text, no letters), the
index of the right option, and where the frames come from. ``item.load_clip(num_frames)`` samples the frames
(:func:`longctx_adapter.eval.video.load_video` for files). Nothing is downloaded: point the loaders at the
annotation files and the video folder you already have. :func:`load_dataset` picks the loader from the path.

The formats assumed for the public benchmarks (as distributed on the Hugging Face Hub) are stated in each loader's
docstring. A missing video raises ``VideoDecodeError`` when the item is evaluated, not at load time
(``check_videos=True`` checks at load time).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from longctx_adapter.eval.items import ANNOTATIONS, LETTERS, MC_INSTRUCTION, EvalItem, format_question, read_records
from longctx_adapter.eval.niah import NiahItem
from longctx_adapter.eval.video import VideoDecodeError

from longctx_adapter.errors import AdapterError

__all__ = [
    "ANNOTATIONS",
    "EvalItem",
    "LETTERS",
    "MC_INSTRUCTION",
    "MVBENCH_TASKS",
    "format_question",
    "load_dataset",
    "load_jsonl_dataset",
    "load_mlvu",
    "load_mvbench",
    "load_videomme",
    "write_jsonl_dataset",
]

# ----------------------------------------------------------------------------------------------- our format


def _answer_index(answer, options, where: str) -> int | None:
    """An answer given as an index, a letter ("B", "(B)", "B."), or the option's text -> its index."""
    if answer is None:
        return None
    if isinstance(answer, bool):
        raise AdapterError(f"{where}: answer {answer!r} is not an option")
    if isinstance(answer, int):
        if not 0 <= answer < len(options):
            raise AdapterError(f"{where}: answer index {answer} out of range for {len(options)} options")
        return answer
    text = str(answer).strip()
    stripped = [_strip_letter(o) for o in options]
    for i, opt in enumerate(options):
        if text == opt or text == stripped[i]:
            return i
    match = re.fullmatch(r"\(?([A-Z])[).:]?", text)
    if match and LETTERS.index(match.group(1)) < len(options):
        return LETTERS.index(match.group(1))
    raise AdapterError(f"{where}: answer {answer!r} matches none of the options {options}")


def _strip_letter(option: str) -> str:
    """``"A. text"`` / ``"(A) text"`` -> ``"text"``."""
    return re.sub(r"^\s*\(?[A-Z][).:]\s*", "", str(option)).strip()


def _resolve_video(root: Path, name) -> str | None:
    if name is None:
        return None
    path = Path(name)
    return str(path if path.is_absolute() else root / path)


def load_jsonl_dataset(path, video_dir=None, check_videos: bool = False) -> list[EvalItem]:
    """Our own format: a JSONL file (or a folder holding ``annotations.jsonl``), one record per line:

    ``{"id": str, "video": path (relative to video_dir, default the file's folder), "question": str,
    "options": [str, ...], "answer": index | letter | option text, "start"?: s, "end"?: s, "frame_fps"?: f,
    "meta"?: {...}}``. Records with a ``"niah"`` key are V-NIAH items (see :mod:`longctx_adapter.eval.niah`).
    """
    path = Path(path)
    file = path / ANNOTATIONS if path.is_dir() else path
    root = Path(video_dir) if video_dir is not None else file.parent
    items = []
    for n, rec in enumerate(read_records(file)):
        where = f"{file} record {n}"
        if "niah" in rec:
            items.append(NiahItem.from_record(rec, file.parent))
            continue
        for key in ("question", "options"):
            if key not in rec:
                raise AdapterError(f"{where}: missing {key!r}")
        options = [str(o) for o in rec["options"]]
        items.append(
            EvalItem(
                id=str(rec.get("id", n)),
                question=str(rec["question"]),
                options=options,
                answer=_answer_index(rec.get("answer"), options, where),
                video=_resolve_video(root, rec.get("video")),
                start=rec.get("start"),
                end=rec.get("end"),
                frame_fps=rec.get("frame_fps"),
                meta=dict(rec.get("meta") or {}),
            )
        )
    _check(items, check_videos)
    return items


def write_jsonl_dataset(items, path) -> Path:
    """Write items in our format (``path`` a .jsonl file or a folder that gets ``annotations.jsonl``)."""
    path = Path(path)
    file = path / ANNOTATIONS if path.suffix != ".jsonl" else path
    file.parent.mkdir(parents=True, exist_ok=True)
    with open(file, "w", encoding="utf-8") as fh:
        for item in items:
            fh.write(json.dumps(item.to_json() if hasattr(item, "to_json") else item) + "\n")
    return file


def _check(items, check_videos: bool) -> None:
    if not check_videos:
        return
    missing = [it.video for it in items if it.video is not None and not os.path.exists(it.video)]
    if missing:
        raise VideoDecodeError(f"{len(missing)} video(s) not found, e.g. {missing[:3]}")


# ----------------------------------------------------------------------------------------------- Video-MME


def load_videomme(annotations, video_dir, durations=None, check_videos: bool = False) -> list[EvalItem]:
    """Video-MME as distributed (``lmms-lab/Video-MME``): ``videomme/test-00000-of-00001.parquet`` plus the
    videos unpacked to ``data/<videoID>.mp4``.

    Assumed columns (one row per question): ``video_id`` ("001"), ``duration`` ("short" | "medium" | "long"),
    ``domain``, ``sub_category``, ``url``, ``videoID`` (the YouTube id, also the file name), ``question_id``
    ("001-1"), ``task_type``, ``question``, ``options`` (four strings ``"A. ..."``), ``answer`` (a letter).
    ``annotations`` may be the parquet file (needs pyarrow), or a JSON/JSONL export with the same fields.
    ``video_dir`` is searched for ``<videoID>.<mp4|mkv|webm|avi>``. ``durations`` keeps only those categories.
    """
    path = Path(annotations)
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise AdapterError("reading Video-MME's parquet file needs pyarrow (pip install pyarrow)") from exc
        records = pq.read_table(path).to_pylist()
    else:
        records = read_records(path)
    root = Path(video_dir)
    keep = None if durations is None else {durations} if isinstance(durations, str) else set(durations)
    items = []
    for n, rec in enumerate(records):
        where = f"{path} row {n}"
        try:
            vid, question, raw_options = rec["videoID"], rec["question"], list(rec["options"])
        except KeyError as exc:
            raise AdapterError(f"{where}: missing Video-MME field {exc}") from None
        if keep is not None and rec.get("duration") not in keep:
            continue
        options = [_strip_letter(o) for o in raw_options]
        items.append(
            EvalItem(
                id=str(rec.get("question_id", f"{vid}-{n}")),
                question=str(question),
                options=options,
                answer=_answer_index(rec.get("answer"), raw_options, where),
                video=_find_video(root, str(vid)),
                meta={k: rec.get(k) for k in ("duration", "domain", "sub_category", "task_type", "video_id")
                      if rec.get(k) is not None},
            )
        )
    _check(items, check_videos)
    return items


def _find_video(root: Path, stem: str) -> str:
    for suffix in (".mp4", ".mkv", ".webm", ".avi", ".mov"):
        candidate = root / f"{stem}{suffix}"
        if candidate.exists():
            return str(candidate)
    return str(root / f"{stem}.mp4")


# ----------------------------------------------------------------------------------------------- MVBench

#: task -> (annotation file in json/, video folder under video/, "video" | "frame", has start/end bounds);
#: the table of the official MVBench evaluation notebook (OpenGVLab/Ask-Anything, video_chat2/mvbench.ipynb).
MVBENCH_TASKS = {
    "Action Sequence": ("action_sequence.json", "star/Charades_v1_480", "video", True),
    "Action Prediction": ("action_prediction.json", "star/Charades_v1_480", "video", True),
    "Action Antonym": ("action_antonym.json", "ssv2_video", "video", False),
    "Fine-grained Action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos", "video", False),
    "Unexpected Action": ("unexpected_action.json", "FunQA_test/test", "video", False),
    "Object Existence": ("object_existence.json", "clevrer/video_validation", "video", False),
    "Object Interaction": ("object_interaction.json", "star/Charades_v1_480", "video", True),
    "Object Shuffle": ("object_shuffle.json", "perception/videos", "video", False),
    "Moving Direction": ("moving_direction.json", "clevrer/video_validation", "video", False),
    "Action Localization": ("action_localization.json", "sta/sta_video", "video", True),
    "Scene Transition": ("scene_transition.json", "scene_qa/video", "video", False),
    "Action Count": ("action_count.json", "perception/videos", "video", False),
    "Moving Count": ("moving_count.json", "clevrer/video_validation", "video", False),
    "Moving Attribute": ("moving_attribute.json", "clevrer/video_validation", "video", False),
    "State Change": ("state_change.json", "perception/videos", "video", False),
    "Fine-grained Pose": ("fine_grained_pose.json", "nturgbd", "video", False),
    "Character Order": ("character_order.json", "perception/videos", "video", False),
    "Egocentric Navigation": ("egocentric_navigation.json", "vlnqa", "video", False),
    "Episodic Reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq", "frame", True),
    "Counterfactual Inference": ("counterfactual_inference.json", "clevrer/video_validation", "video", False),
}


def load_mvbench(json_dir, video_dir, tasks=None, check_videos: bool = False) -> list[EvalItem]:
    """MVBench as distributed (``OpenGVLab/MVBench``): ``json/<task>.json`` and ``video/<source>/...``.

    Each task file is a JSON list of ``{"video": file or frame-folder name, "question": str,
    "candidates": [str, ...], "answer": str (the right candidate's text), "start"?: s, "end"?: s}``; where a task
    has bounds (see :data:`MVBENCH_TASKS`) only [start, end] seconds are sampled; "frame" tasks (Episodic
    Reasoning) are folders of 3 fps JPEGs. ``json_dir`` is the ``json/`` folder, ``video_dir`` the ``video/``
    folder. ``tasks``: task names (keys of :data:`MVBENCH_TASKS`) or file stems; default every task file present.
    Files in ``json_dir`` not in the table are read too, with videos looked up directly under ``video_dir``.
    """
    json_dir, video_dir = Path(json_dir), Path(video_dir)
    if not json_dir.is_dir():
        raise AdapterError(f"MVBench json folder not found: {json_dir}")
    by_file = {spec[0]: (name, spec) for name, spec in MVBENCH_TASKS.items()}
    files = sorted(p.name for p in json_dir.glob("*.json"))
    if tasks is not None:
        wanted = {tasks} if isinstance(tasks, str) else set(tasks)
        files = [f for f in files if f in wanted or Path(f).stem in wanted or by_file.get(f, ("",))[0] in wanted]
    items = []
    for fname in files:
        name, (_, prefix, kind, bounded) = by_file.get(fname, (Path(fname).stem, (fname, "", "video", False)))
        for n, rec in enumerate(read_records(json_dir / fname)):
            where = f"{fname} record {n}"
            try:
                options = [str(c) for c in rec["candidates"]]
                question, video = rec["question"], rec["video"]
            except KeyError as exc:
                raise AdapterError(f"{where}: missing MVBench field {exc}") from None
            items.append(
                EvalItem(
                    id=f"{Path(fname).stem}/{n}",
                    question=str(question),
                    options=options,
                    answer=_answer_index(rec.get("answer"), options, where),
                    video=str(video_dir / prefix / video) if prefix else str(video_dir / video),
                    start=rec.get("start") if bounded else None,
                    end=rec.get("end") if bounded else None,
                    frame_fps=3.0 if kind == "frame" else None,
                    meta={"task": name},
                )
            )
    _check(items, check_videos)
    return items


# ----------------------------------------------------------------------------------------------- MLVU


def load_mlvu(json_dir, video_dir, tasks=None, check_videos: bool = False) -> list[EvalItem]:
    """MLVU dev set as distributed (``MLVU/MVLU``): ``MLVU/json/<n>_<task>.json`` and
    ``MLVU/video/<n>_<task>/<file>.mp4``.

    Each task file is a JSON list of ``{"video": file name, "duration": seconds, "question": str,
    "candidates": [str, ...], "answer": str (the right candidate's text), "question_type": str}``. The
    multiple-choice tasks are 1_plotQA, 2_needle, 3_ego, 4_count, 5_order, 6_anomaly_reco, 7_topic_reasoning;
    open-ended ones (8_sub_scene, 9_summary: no candidates) are skipped. A video is looked up in
    ``video_dir/<json stem>/`` then ``video_dir/``. ``tasks``: json stems or question types to keep.
    """
    json_dir, video_dir = Path(json_dir), Path(video_dir)
    if not json_dir.is_dir():
        raise AdapterError(f"MLVU json folder not found: {json_dir}")
    wanted = None if tasks is None else ({tasks} if isinstance(tasks, str) else set(tasks))
    items = []
    for file in sorted(json_dir.glob("*.json")):
        for n, rec in enumerate(read_records(file)):
            if "candidates" not in rec:
                continue  # open-ended task
            qtype = rec.get("question_type", file.stem)
            if wanted is not None and file.stem not in wanted and qtype not in wanted:
                continue
            where = f"{file.name} record {n}"
            options = [str(c) for c in rec["candidates"]]
            video = rec.get("video")
            if video is None or "question" not in rec:
                raise AdapterError(f"{where}: missing MLVU field 'video' or 'question'")
            path = video_dir / file.stem / video
            if not path.exists() and (video_dir / video).exists():
                path = video_dir / video
            items.append(
                EvalItem(
                    id=f"{file.stem}/{n}",
                    question=str(rec["question"]),
                    options=options,
                    answer=_answer_index(rec.get("answer"), options, where),
                    video=str(path),
                    meta={"task": qtype, "duration": rec.get("duration")},
                )
            )
    _check(items, check_videos)
    return items


# ----------------------------------------------------------------------------------------------- dispatch

DATASET_KINDS = ("auto", "jsonl", "niah", "videomme", "mvbench", "mlvu")


def load_dataset(path, kind: str = "auto", video_dir=None, tasks=None, limit: int | None = None) -> list[EvalItem]:
    """Items from ``path`` with the loader ``kind`` (``auto``: our JSONL / V-NIAH folder or file, a
    ``.parquet`` -> Video-MME). Benchmarks other than ours need ``video_dir``. ``limit`` keeps the first N."""
    if kind not in DATASET_KINDS:
        raise AdapterError(f"unknown dataset kind {kind!r}; use one of {list(DATASET_KINDS)}")
    path = Path(path)
    if not path.exists():
        raise AdapterError(f"dataset not found: {path}")
    if kind == "auto":
        if path.suffix == ".parquet":
            kind = "videomme"
        elif path.suffix == ".jsonl" or (path / ANNOTATIONS).is_file():
            kind = "jsonl"
        else:
            raise AdapterError(
                f"cannot tell the format of {path}; pass the kind (videomme, mvbench, mlvu) and the video folder"
            )
    if kind in ("jsonl", "niah"):
        items = load_jsonl_dataset(path, video_dir)
    else:
        if video_dir is None:
            raise AdapterError(f"{kind} needs the folder of its videos (--video-dir)")
        loader = {"videomme": load_videomme, "mvbench": load_mvbench, "mlvu": load_mlvu}[kind]
        items = loader(path, video_dir) if kind == "videomme" else loader(path, video_dir, tasks=tasks)
    if not items:
        raise AdapterError(f"no items in {path}")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise AdapterError(f"{path}: item ids are not unique (results are keyed by id)")
    return items[:limit] if limit else items
