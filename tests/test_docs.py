"""The documentation stays true: the site builds with `--strict`, and every example in it runs.

Examples harness (`test_examples_run`): each Markdown page with Python blocks (README.md and docs/) runs in a fresh
Python process (`tests/docs_runner.py`), its blocks in page order in one namespace, with the working directory set
to a scratch folder that holds stand-ins for what the examples name, so the code runs exactly as a user types it:

- `llava-hf/llava-onevision-qwen2-7b-ov-hf/`: a tiny random LLaVA-OneVision saved with its processor, built here with
  the real checkpoint's 27x27 SigLIP grid so the family preset (strides 2 and 8) applies. transformers loads a hub id
  that names a local folder from that folder, and `HF_HUB_OFFLINE=1` makes sure nothing is downloaded;
- `clip-vit-large-patch14-336/`: a tiny random CLIP with its tokenizer (the question scorer's checkpoint);
- `clip.mp4`: a short synthetic video written with PyAV;
- `longctx_adapter/models/tiny_video_lm`: a link to the shipped tiny trained model, as seen from the repository root.

A block that cannot run here (shell commands are not Python; vLLM, GPUs, downloads) carries
`<!-- not-run: REASON -->` before its fence; the test counts those blocks, refuses a marker without a reason and
compiles them, so no block is skipped silently and none holds invalid Python. The counts are printed
(`pytest -s tests/test_docs.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from docs_blocks import ROOT, blocks, pages

PYTHON_PAGES = [p.relative_to(ROOT).as_posix() for p in pages() if any(b.lang == "python" for b in blocks(p))]
HUB_ID = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
SCORER_DIR = "clip-vit-large-patch14-336"
HISTORY = re.compile(r"\b(issue|stop) #?\d+\b", re.IGNORECASE)


# ----------------------------------------------------------------------------------------------- the site


def test_docs_build_strict(tmp_path):
    """`mkdocs build --strict` (what `make docs` runs): broken links, anchors, snippets or API references fail."""
    pytest.importorskip("mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]' (make venv installs it)")
    pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="mkdocs-material is not installed: pip install -e '.[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-8000:]
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "api" / "public" / "index.html").is_file()


def _nav_pages(entries) -> set[str]:
    pages_found = set()
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            pages_found |= _nav_pages(value)
        elif isinstance(value, str) and not value.startswith(("http://", "https://")):
            pages_found.add(value)
    return pages_found


def test_nav_lists_every_page():
    """Every page under docs/ is in mkdocs.yml's nav, or listed under `not_in_nav` (a page reached by links only) or
    `exclude_docs` (a fragment another page includes); every nav entry is a page. The build itself only reports a
    page missing from the nav (`validation: omitted_files: info`), so a new page never breaks it: this test does."""
    import yaml

    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)  # no tags resolved
    nav = _nav_pages(config["nav"])
    listed = {line.strip() for key in ("not_in_nav", "exclude_docs") for line in config.get(key, "").splitlines()}
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    missing = sorted(on_disk - nav - listed)
    assert not missing, f"pages missing from mkdocs.yml: add them to nav (or to not_in_nav / exclude_docs): {missing}"
    assert nav - on_disk == set(), "nav entries without a page"


# ----------------------------------------------------------------------------------------------- examples


def _every_block():
    return [b for p in pages() for b in blocks(p)]


def test_every_python_block_runs_or_says_why_not():
    python = [b for b in _every_block() if b.lang == "python"]
    unexplained = [b.where for b in python if b.not_run is not None and len(b.not_run) < 8]
    assert not unexplained, f"not-run markers need a reason: {unexplained}"
    unlabelled = [b.where for b in _every_block() if not b.lang]
    assert not unlabelled, f"code blocks need a language (python, bash, json, text): {unlabelled}"
    for b in python:
        if b.not_run is not None:  # not run here, but still valid Python: a typo cannot hide behind the marker
            compile("\n" * (b.line - 1) + b.code, b.where, "exec")
    ran = sum(b.not_run is None for b in python)
    print(f"\nPython blocks: {len(python)}, run: {ran}, not run: {len(python) - ran}")
    for b in python:
        if b.not_run is not None:
            print(f"  not run: {b.where}: {b.not_run}")
    assert ran >= 10  # the examples are exercised, not marked away


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory):
    """The scratch folder's contents (module docstring), built once per session."""
    import torch
    from longctx_adapter.eval.video import write_video
    from transformers import (
        CLIPImageProcessor,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    from longctx_adapter.demo.trained import MODEL_DIR
    from longctx_adapter.testing.tiny import CHAT_TEMPLATE, synthetic_video, tiny_config, tiny_tokenizer
    from longctx_adapter.testing.tiny_scorer import tiny_clip, tiny_scorer_tokenizer

    root = tmp_path_factory.mktemp("docs_stand_ins")
    side, patch = 54, 2  # a 27x27 patch grid, as SigLIP-so400m/384 on the real checkpoint
    config = tiny_config("llava_onevision", max_position_embeddings=32768)
    config.vision_config.image_size, config.vision_config.patch_size = side, patch
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlavaOnevisionForConditionalGeneration(config).eval()
    square = {"height": side, "width": side}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size=square, image_grid_pinpoints=[[side * i, side * j] for i in (1, 2) for j in (1, 2)]
        ),
        video_processor=LlavaOnevisionVideoProcessor(size=square),
        tokenizer=tiny_tokenizer(),
        num_image_tokens=(side // patch) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=CHAT_TEMPLATE,
    )
    model.save_pretrained(root / HUB_ID)
    processor.save_pretrained(root / HUB_ID)

    tiny_clip(image_size=32).save_pretrained(root / SCORER_DIR)
    tiny_scorer_tokenizer().save_pretrained(root / SCORER_DIR)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        root / SCORER_DIR
    )

    write_video(root / "clip.mp4", synthetic_video(96, 64, 64), fps=8.0)
    (root / "longctx_adapter" / "models").mkdir(parents=True)
    (root / "longctx_adapter" / "models" / "tiny_video_lm").symlink_to(MODEL_DIR, target_is_directory=True)
    return root


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_examples_run(page, stand_ins, tmp_path):
    """Every Python block of `page` runs, in order, as a user would type it (module docstring: the harness)."""
    for entry in stand_ins.iterdir():
        (tmp_path / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "docs_runner.py"), page],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, f"an example of {page} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    python = [b for b in blocks(ROOT / page) if b.lang == "python"]
    assert len(summary["ran"]) == sum(b.not_run is None for b in python)
    assert len(summary["ran"]) + len(summary["not_run"]) == len(python)


def test_json_blocks_are_valid_configs():
    """JSON examples parse; the ones that are adapter configs validate as AdapterConfig."""
    from longctx_adapter import AdapterConfig

    fields = set(AdapterConfig.__dataclass_fields__)
    for block in (b for b in _every_block() if b.lang == "json" and b.not_run is None):
        data = json.loads(block.code)
        if isinstance(data, dict) and data and set(data) <= fields:
            AdapterConfig.from_dict(data)


def _commands(code: str):
    """Shell commands of a bash block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            yield words


def test_cli_commands_in_the_docs_parse():
    """Every `longctx-adapter` command shown parses with the CLI's parser: no example names a gone option."""
    from longctx_adapter.cli.main import build_parser

    checked = 0
    for block in (b for b in _every_block() if b.lang in ("bash", "sh", "shell") and b.not_run is None):
        for words in _commands(block.code):
            if words[0] != "longctx-adapter" or "..." in words:
                continue
            try:
                build_parser().parse_args(words[1:])
            except SystemExit as exc:
                pytest.fail(f"{block.where}: `{' '.join(words)}` does not parse (exit {exc.code})")
            checked += 1
    assert checked >= 5


# ----------------------------------------------------------------------------------------------- text


def test_readme_is_short_and_shows_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    assert "make demo" in text and "make test" in text
    assert text.index("make demo") < text.index("make test") < text.index("```python") < text.index("apply_adapter(model")
    # the site's --strict build checks links between docs pages; README is outside it, so its links are checked here
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    broken = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert not broken, f"README.md links to missing files: {broken}"


def _cli_help_texts():
    from longctx_adapter.cli.main import build_parser

    parser = build_parser()
    texts = [parser.format_help()]
    stack = [parser]
    while stack:
        for action in stack.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    texts.append(sub.format_help())
                    stack.append(sub)
    return texts


def test_no_history_in_user_facing_text():
    """README, docs pages, CLI help and source strings speak of what is, not of issues or work steps."""
    sources = [p for folder in ("longctx_adapter", "patches", "eval") for p in (ROOT / folder).rglob("*.py")]
    texts = {p.relative_to(ROOT).as_posix(): p.read_text() for p in [*pages(), *sources]}
    texts.update({f"CLI help {i}": t for i, t in enumerate(_cli_help_texts())})
    found = {name: HISTORY.findall(text) for name, text in texts.items() if HISTORY.search(text)}
    assert not found
    design = {name for name, text in texts.items() if re.search(r"\bDESIGN \d", text)}
    assert not design, f"cite docs/methods.md sections, not a design document the repository lacks: {design}"


def test_architecture_page_names_real_paths():
    """Every file or folder docs/architecture.md names exists and every package is in its tree, so the tree cannot
    go stale unnoticed. A tree line is `NAMES  description`: names separated by single spaces, folders end in `/`,
    two spaces of indentation per level."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    tree = re.search(r"```text\n(.*?)```", text, re.S).group(1)
    missing, parents = [], {}
    for line in tree.splitlines():
        depth = (len(line) - len(line.lstrip())) // 2
        names = re.split(r"\s{2,}", line.strip())[0].split(" ")
        base = [parents[d] for d in range(depth)]
        for name in names:
            if not ROOT.joinpath(*base, name).exists():
                missing.append("/".join([*base, name]))
        if len(names) == 1 and names[0].endswith("/"):
            parents[depth] = names[0].rstrip("/")
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"
    packages = {p.parent.name for folder in ("longctx_adapter", "patches", "eval") for p in (ROOT / folder).rglob("__init__.py")}
    unlisted = sorted(name for name in packages if f"{name}/" not in tree)
    assert not unlisted, f"packages missing from the tree in docs/architecture.md: {unlisted}"
