"""One config grammar for every command: each form parses to the config written out by hand here, every command
(run, ablate, profile, demo, demo --random, the lmms-eval plugin) hands its --config to that one parser, and on a
model folder with a saved longctx_adapter.json each command uses the saved config unless --config is given."""

from __future__ import annotations

import json

import pytest

from longctx_adapter import AdapterConfig, AdapterError, config_text
from longctx_adapter.cli.main import main
from longctx_adapter.config_text import ADAPTER_CONFIG_NAME, format_config, parse_config
from longctx_adapter.ops.pooling import count_tokens
from longctx_adapter.testing.tiny import synthetic_video, tiny_model, tiny_processor

MODEL_TYPE = "llava_onevision"  # the tiny one has a 7x7 grid; its preset knows the visual window (6272)
SAVED = AdapterConfig(
    pooling={"type": "progressive", "group": 2, "strides": [2, 4]},
    rope={"type": "yarn", "visual_window": 40, "scope": "visual"},
)
STAGE_FILE = {"type": "temporal", "kernel": 2, "stride": 2}
P242 = {"type": "progressive", "group": 2, "strides": [2, 4], "mode": "bilinear"}
YARN_VISUAL = {"type": "yarn", "scope": "visual"}

# form -> the config it means (None: the stock model), written out by hand. "{file}" is a JSON file holding
# STAGE_FILE, "saved" reads the folder's SAVED.
FORMS = {
    "none": None,
    "stock": None,
    "preset": AdapterConfig.preset(MODEL_TYPE),
    "saved": SAVED,
    "null": None,
    "{}": AdapterConfig(),
    "{file}": AdapterConfig(pooling=STAGE_FILE),
    '{"pooling": {"type": "temporal"}, "rope": null, "last_logits_only": true}':
        AdapterConfig(pooling=STAGE_FILE, last_logits_only=True),
    '{"type": "temporal", "kernel": 2}': AdapterConfig(pooling=STAGE_FILE),
    '[{"type": "temporal"}, {"type": "progressive", "group": 2, "strides": [2, 4]}]':
        AdapterConfig(pooling=[STAGE_FILE, P242]),
    "progressive:2,4,2": AdapterConfig(pooling=P242),
    "progressive:2/4/2": AdapterConfig(pooling=P242),
    "progressive:3,3,4,max": AdapterConfig(pooling={"type": "progressive", "group": 4, "strides": [3], "mode": "max"}),
    "temporal:2,2": AdapterConfig(pooling=STAGE_FILE),
    "temporal:3": AdapterConfig(pooling={"type": "temporal", "kernel": 3, "stride": 3}),
    "temporal": AdapterConfig(pooling=STAGE_FILE),
    "adaptive3d:2,3,3": AdapterConfig(pooling={"type": "adaptive3d", "output": [2, 3, 3]}),
    "conv3d:1,2,2": AdapterConfig(pooling={"type": "conv3d", "kernel": [1, 2, 2], "stride": [1, 2, 2]}),
    "conv3d:2,2,2,1,2,2": AdapterConfig(pooling={"type": "conv3d", "kernel": [2, 2, 2], "stride": [1, 2, 2]}),
    "prompt_guided:1,2,2": AdapterConfig(pooling={"type": "prompt_guided", "kernel": [1, 2, 2]}),
    "select_frames:2,1": AdapterConfig(pooling={"type": "select_frames", "segments": 2}),
    "yarn-visual": AdapterConfig(rope={**YARN_VISUAL, "visual_window": 6272}),
    "yarn": AdapterConfig(rope={"type": "yarn", "scope": "all", "visual_window": 6272}),
    "yarn-visual@32": AdapterConfig(rope={**YARN_VISUAL, "visual_window": 32}),
    "yarn:32:visual": AdapterConfig(rope={**YARN_VISUAL, "visual_window": 32}),
    "pi-all@16": AdapterConfig(rope={"type": "interpolate", "scope": "all", "visual_window": 16}),
    "linear-visual@16": AdapterConfig(rope={"type": "linear", "scope": "visual", "visual_window": 16}),
    "ntk-all@16": AdapterConfig(rope={"type": "ntk", "scope": "all", "visual_window": 16}),
    "none+yarn-visual@32": AdapterConfig(rope={**YARN_VISUAL, "visual_window": 32}),
    "progressive:2,4,2+yarn-visual+chunk:4": AdapterConfig(
        pooling=P242, rope={**YARN_VISUAL, "visual_window": 6272}, vision_chunk_frames=4
    ),
    "temporal:2,2+progressive:2,4,2+chunk:4+lastlogits+yarn:32:visual": AdapterConfig(
        pooling=[STAGE_FILE, P242], rope={**YARN_VISUAL, "visual_window": 32}, vision_chunk_frames=4,
        last_logits_only=True,
    ),
    "pooling=progressive:2,4,2+rope=yarn-all@32": AdapterConfig(
        pooling=P242, rope={"type": "yarn", "scope": "all", "visual_window": 32}
    ),
    "pool_single_images+progressive:2,4,2": AdapterConfig(pooling=P242, pool_single_images=True),
}
BAD = {
    "warp:3": "unknown config term",
    "progressive:2,8": "expected 3 integers",
    "temporal:1,2": "kernel 1 is smaller than its stride 2",
    "temporal:x": "expected integers",
    "chunk:x": "chunk:N",
    "chunk:0": "vision_chunk_frames",
    "yarn-sideways": "unknown rope value",
    "{nope": "not valid JSON",
    "missing.json": "does not exist",
    "": "empty config",
    "select_frames": "needs 'segments'",
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    saved, plain = root / "saved", root / "plain"
    for folder in (saved, plain):
        tiny_model(MODEL_TYPE).save_pretrained(folder)
        tiny_processor(MODEL_TYPE).save_pretrained(folder)
    (saved / ADAPTER_CONFIG_NAME).write_text(SAVED.to_json(indent=2))
    (root / "stage.json").write_text(json.dumps({"type": "temporal"}))
    from longctx_adapter.eval.video import write_video

    video = write_video(root / "clip.mp4", synthetic_video(8, 32, 32, seed=3), fps=4)
    return {"saved": saved, "plain": plain, "file": root / "stage.json", "video": video, "root": root}


def _form(text, folders):
    return text.replace("{file}", str(folders["file"]))


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_form_parses_to_its_config(form, folders):
    expected = FORMS[form]
    got = parse_config(_form(form, folders), MODEL_TYPE, folder=folders["saved"])
    assert got == expected


@pytest.mark.parametrize(("form", "needle"), sorted(BAD.items()))
def test_bad_forms_say_what_to_write(form, needle, folders):
    with pytest.raises(AdapterError, match=needle):
        parse_config(form, MODEL_TYPE, folder=folders["saved"])


def test_keywords_need_their_context(folders):
    with pytest.raises(AdapterError, match="'saved' reads the model folder's longctx_adapter.json"):
        parse_config("saved", MODEL_TYPE, folder=folders["plain"])
    with pytest.raises(AdapterError, match="'preset' needs the model type"):
        parse_config("preset")
    with pytest.raises(AdapterError, match="--visual-window"):
        parse_config("yarn-visual", "llava")  # no preset window for LLaVA-1.5
    assert parse_config("yarn-visual", "llava", visual_window=64).rope["visual_window"] == 64
    assert parse_config("yarn-visual").rope["visual_window"] is None  # no model type: apply_adapter decides
    bad = folders["root"] / "bad.json"
    bad.write_text('{"pooling": {"type": "temporal", "stride": -1}}')
    with pytest.raises(AdapterError, match=f"{bad}: .*temporal 'stride'"):
        parse_config(str(bad))


def test_the_default_is_the_saved_config_else_the_preset(folders):
    assert parse_config(None, MODEL_TYPE, folder=folders["saved"]) == SAVED
    assert parse_config(None, MODEL_TYPE, folder=folders["plain"]) == AdapterConfig.preset(MODEL_TYPE)
    assert parse_config(None, MODEL_TYPE) == AdapterConfig.preset(MODEL_TYPE)
    assert config_text.config_source(None, folders["saved"]) == "saved longctx_adapter.json"
    assert config_text.config_source(None, folders["plain"]) == "family preset"


@pytest.mark.parametrize("form", sorted(FORMS))
def test_format_config_parses_back(form, folders):
    config = FORMS[form]
    assert parse_config(format_config(config), MODEL_TYPE) == config
    assert format_config(AdapterConfig(pooling=P242, vision_chunk_frames=4)) == "progressive:2,4,2+chunk:4"


# ---------------------------------------------------------------------------------------------------------------------
# Every command hands --config to the one parser.


class _Parsed(Exception):
    """Raised by the spy right after a command's config is parsed, so nothing heavier runs."""

    def __init__(self, spec, model_type, folder, result):
        super().__init__(spec)
        self.spec, self.model_type, self.folder, self.result = spec, model_type, folder, result


@pytest.fixture
def spy(monkeypatch):
    real = config_text.parse_config
    depth = [0]

    def parse(spec, model_type=None, *, folder=None, visual_window=None):
        depth[0] += 1
        try:
            result = real(spec, model_type, folder=folder, visual_window=visual_window)
        finally:
            depth[0] -= 1
        if depth[0] == 0:
            raise _Parsed(spec, model_type, None if folder is None else str(folder), result)
        return result

    monkeypatch.setattr(config_text, "parse_config", parse)


def _command(command, form, folders, plugin_module=None, tmp_path=None):
    """Run `command` with --config form (None: no --config) until its config is parsed."""
    model = str(folders["saved"])
    extra = [] if form is None else ["--config", form]
    if command == "run":
        main(["run", "--model", model, "--video", folders["video"], "--question", "q", "--frames", "4", *extra])
    elif command == "ablate":
        main(["ablate", "--model", model, "--dataset", str(tmp_path), "--out", str(tmp_path), *extra])
    elif command == "profile":
        main(["profile", "--model", model, "--estimate-only", "--frames", "4", "--out", str(tmp_path), *extra])
    elif command == "demo":
        main(["demo", *extra])
    elif command == "demo --random":
        main(["demo", "--random", *extra])
    elif command == "lmms":
        kwargs = {} if form is None else {"adapter": form}
        plugin_module.LongctxAdapter(pretrained=model, device="cpu", **kwargs)
    raise AssertionError(f"{command} finished without parsing a config")


COMMANDS = ["run", "ablate", "profile", "demo", "demo --random", "lmms"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_parses_every_form(command, folders, spy, plugin, tmp_path):
    from longctx_adapter.demo.trained import MODEL_DIR, recommended_config

    folder = {"demo": MODEL_DIR, "demo --random": None}.get(command, str(folders["saved"]))
    for form in sorted(FORMS):
        if command == "demo --random" and form == "saved":
            continue  # the random demo has no model folder (parsing it is refused, tested above)
        text = _form(form, folders)
        with pytest.raises(_Parsed) as parsed:
            _command(command, text, folders, plugin, tmp_path)
        assert parsed.value.spec == text and parsed.value.model_type == MODEL_TYPE, form
        assert parsed.value.folder == (None if folder is None else str(folder)), form
        expected = recommended_config() if (command == "demo" and form == "saved") else FORMS[form]
        assert parsed.value.result == expected, (command, form)


@pytest.mark.parametrize("command", ["run", "lmms"])
def test_without_config_the_saved_file_wins(command, folders, spy, plugin, tmp_path):
    with pytest.raises(_Parsed) as parsed:
        _command(command, None, folders, plugin, tmp_path)
    assert parsed.value.spec is None and parsed.value.result == SAVED


# ---------------------------------------------------------------------------------------------------------------------
# End to end, one per command, on the tiny model folder with a saved config.


def test_run_uses_the_saved_config_and_takes_files_and_chunks(folders, capsys):
    base = ["run", "--model", str(folders["saved"]), "--video", folders["video"], "--question", "what is it ?",
            "--frames", "4", "--max-new-tokens", "1"]  # fmt: skip
    assert main(base) == 0
    out = capsys.readouterr().out
    assert f"{SAVED.to_json()} (saved longctx_adapter.json)" in out
    assert f"visual tokens : {4 * 16 + 1} -> {count_tokens(4, 7, 7, SAVED.pooling) + 1}" in out
    assert main([*base, "--config", str(folders["file"])]) == 0
    assert f"-> {count_tokens(4, 7, 7, STAGE_FILE) + 1}\n" in capsys.readouterr().out
    assert main([*base, "--config", "progressive:2,4,2+chunk:2"]) == 0
    assert "vision_chunk_frames\": 2" in capsys.readouterr().out
    assert main(["run", "--model", str(folders["plain"]), "--video", folders["video"], "--question", "q",
                 "--frames", "4", "--config", "saved"]) == 2  # fmt: skip
    assert "'saved' reads the model folder's longctx_adapter.json" in capsys.readouterr().err


def test_ablate_uses_the_saved_config_as_the_base_of_the_grid(folders, tmp_path, capsys):
    from longctx_adapter.eval.ablate import load_results
    from longctx_adapter.eval.niah import write_niah

    data = tmp_path / "niah"
    write_niah(data, 1, haystack_frames=8, size=32, num_options=2, depths=(0.5,), seed=1)
    argv = ["ablate", "--model", str(folders["saved"]), "--dataset", str(data), "--frames", "4", "--no-progress",
            "--grid", "rope=none,yarn-visual@32", "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 0
    records = sorted(load_results(tmp_path / "out").values(), key=lambda r: r["config"])
    assert [r["config"] for r in records] == ["config=saved rope=none", "config=saved rope=yarn-visual@32"]
    assert all(r["config_json"]["pooling"] == SAVED.to_dict()["pooling"] for r in records)
    assert records[0]["config_json"]["rope"] is None and records[1]["config_json"]["rope"]["visual_window"] == 32
    assert records[0]["tokens_after"] == count_tokens(4, 7, 7, SAVED.pooling) + 1
    # --config replaces the saved base; several bases give several sets of cells
    argv = ["ablate", "--model", str(folders["saved"]), "--dataset", str(data), "--frames", "4", "--no-progress",
            "--config", "none", "--config", "temporal:2,2+chunk:2", "--out", str(tmp_path / "out2")]  # fmt: skip
    assert main(argv) == 0
    records = {r["config"]: r for r in load_results(tmp_path / "out2").values()}
    assert set(records) == {"config=none", "config=temporal:2,2+chunk:2"}
    assert records["config=none"]["config_json"] is None
    assert records["config=temporal:2,2+chunk:2"]["config_json"]["vision_chunk_frames"] == 2


def test_profile_uses_the_saved_config_and_takes_the_whole_grammar(folders, tmp_path):
    assert main(["profile", "--model", str(folders["saved"]), "--frames", "4", "--estimate-only", "--out",
                 str(tmp_path / "a")]) == 0  # fmt: skip
    rows = json.loads((tmp_path / "a" / "rows.json").read_text())
    assert [r["config"] for r in rows] == ["none", "saved"]
    assert json.loads(rows[1]["config_json"]) == SAVED.to_dict()
    assert rows[1]["visual_tokens_after"] == count_tokens(4, 7, 7, SAVED.pooling) + 1
    forms = ["progressive:2,4,2+yarn-visual", str(folders["file"]), "preset"]
    argv = ["profile", "--model", str(folders["plain"]), "--frames", "4", "--estimate-only", "--out", str(tmp_path)]
    assert main([*argv, *(x for form in forms for x in ("--config", form))]) == 0
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["config"] for r in rows] == forms
    assert json.loads(rows[0]["config_json"])["rope"]["visual_window"] == 6272  # filled from the preset
    assert rows[2]["status"].startswith("unavailable") and "stride 8" in rows[2]["status"]  # 7x7 grid


def test_demo_takes_the_grammar(monkeypatch, capsys):
    from longctx_adapter.demo import trained

    monkeypatch.setattr(trained, "run_each", lambda function, runs: [function(*args) for _, args in runs])  # in process
    rows = trained.run_trained_demo(frames=8, questions=1, config="progressive:2,4,4+yarn-visual@32")
    stock, adapted = rows
    assert adapted["visual_tokens_after"] == count_tokens(8, 7, 7, {"type": "progressive", "strides": [2, 4]}) + 1
    assert adapted["rope_factor"] == pytest.approx(adapted["visual_tokens_after"] / 32)
    assert stock["visual_tokens_after"] == stock["visual_tokens_before"] == 8 * 16 + 1
    assert main(["demo", "--config", "warp:1"]) == 2
    assert "unknown config term" in capsys.readouterr().err


def test_lmms_plugin_uses_the_saved_config(folders, plugin):
    model = plugin.LongctxAdapter(pretrained=str(folders["saved"]), device="cpu")
    try:
        assert model.adapter_config == SAVED and model.handle is not None
        assert model.handle.config == SAVED
    finally:
        model.handle.remove()
    model = plugin.LongctxAdapter(pretrained=str(folders["saved"]), device="cpu", adapter="progressive:2/4/2+yarn-all@32")
    try:
        assert model.adapter_config == FORMS["pooling=progressive:2,4,2+rope=yarn-all@32"]
        assert model.handle.config == model.adapter_config
    finally:
        model.handle.remove()
