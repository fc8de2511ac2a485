"""The .difypkg: what is inside, and whether Dify's own models accept the manifest and YAMLs."""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
import yaml

# Importing dify_plugin runs gevent's monkey.patch_all() (dify_plugin/_gevent.py), which would turn every thread
# of this pytest process into a greenlet. Only the SDK's models are needed here, so the patching module is
# replaced by an empty one before the first SDK import. (The plugin itself runs patched, in its own process.)
sys.modules.setdefault("dify_plugin._gevent", types.ModuleType("dify_plugin._gevent"))

from dify_plugin.core.entities.plugin.setup import PluginConfiguration  # noqa: E402
from dify_plugin.entities.tool import ToolConfiguration, ToolParameter, ToolProviderConfiguration  # noqa: E402
from packaging.requirements import Requirement  # noqa: E402

from audio import options  # noqa: E402
from audio.model import LOUDNESS_PRESETS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LANGUAGES = ("en_US", "zh_Hans", "ja_JP", "pt_BR")
# The tool's parameter names are a public contract: workflows and agents refer to them by name.
PUBLIC_PARAMETERS = [
    "text", "model", "voice", "model_2", "model_3", "speakers", "output_format", "bitrate", "sample_rate",
    "channels", "loudness",
    "pause_ms", "paragraph_pause_ms", "max_chars_per_request", "concurrency", "title", "artist", "album",
    "filename", "subtitles", "chapters", "cache", "max_output_mb",
    "intro", "outro", "music", "music_level", "intro_overlap_ms",
    "speed", "lexicon",
]  # fmt: skip
STATS_FIELDS = [
    "duration_s", "format", "sample_rate", "channels", "bitrate_kbps", "size_bytes", "sha256", "loudness_lufs",
    "true_peak_dbtp", "target", "requests", "retries", "cache_hits", "cache_misses", "timeline", "chapters",
    "warnings",
    "intro_s", "outro_s", "music_level_lu", "speech_loudness_lufs",
    "speed", "respellings",
]  # fmt: skip


def _load_packager():
    spec = importlib.util.spec_from_file_location("tts_pipeline_packager", REPO / "scripts" / "package.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


packager = _load_packager()


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return packager.build(REPO, tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def names(package) -> set[str]:
    with zipfile.ZipFile(package) as zf:
        return set(zf.namelist())


@pytest.fixture(scope="module")
def unpacked(package, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("unpacked")
    with zipfile.ZipFile(package) as zf:
        zf.extractall(target)
    return target


def _yaml(root: Path, rel: str) -> dict:
    return yaml.safe_load((root / rel).read_text(encoding="utf-8"))


# --- contents ------------------------------------------------------------------------------------------


def test_package_name_and_size(package):
    manifest = _yaml(REPO, "manifest.yaml")
    assert package.name == f"tts_pipeline-{manifest['version']}.difypkg"
    with zipfile.ZipFile(package) as zf:
        assert zf.testzip() is None
        assert sum(i.file_size for i in zf.infolist()) < packager.MAX_UNCOMPRESSED


def test_package_holds_every_referenced_file(names):
    for ref in packager.referenced_files(REPO):
        assert ref in names, ref
    for required in ("manifest.yaml", "main.py", "requirements.txt", "PRIVACY.md", "_assets/icon.svg",
                     "provider/tts_pipeline.yaml", "provider/tts_pipeline.py", "tools/tts_pipeline.yaml",
                     "tools/tts_pipeline.py", "audio/__init__.py", "audio/pipeline.py", "audio/options.py"):
        assert required in names, required


def test_package_leaves_out_development_files(names):
    banned_dirs = ("tests/", "benchmarks/", "examples/", "scripts/", ".venv/", ".git/", ".ci/", "dist/")
    banned_files = {"pyproject.toml", "requirements-dev.txt", "requirements-local.txt", "Makefile", "ruff.toml",
                    "pytest.ini", ".env", "uv.lock"}
    for name in names:
        assert not name.startswith(banned_dirs), name
        assert name not in banned_files, name
        assert "__pycache__/" not in name and not name.endswith((".pyc", ".difypkg")), name


def _imports(source: str, module: str) -> set[str]:
    """Absolute names of the modules a source file imports (relative imports resolved against `module`)."""
    found: set[str] = set()
    package = module.rsplit(".", 1)[0] if "." in module else ""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_runtime_imports_resolve_inside_the_package(names):
    """Walk the imports from main.py and the tool/provider sources: every project module they reach ships,
    and none of the local-runner modules (cli, engine) is needed at runtime."""
    local_top = {"audio", "tools", "provider", "main"}
    todo = ["main", "tools.tts_pipeline", "provider.tts_pipeline"]
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module.replace(".", "/")
        rel = f"{path}.py" if f"{path}.py" in names else f"{path}/__init__.py"
        assert rel in names, f"{module} is imported at runtime but {rel} is not in the package"
        source = (REPO / rel).read_text(encoding="utf-8")
        for imported in _imports(source, module if not rel.endswith("__init__.py") else f"{module}.__init__"):
            top = imported.split(".")[0]
            if top not in local_top:
                continue
            candidate = imported.replace(".", "/")
            if f"{candidate}.py" in names or f"{candidate}/__init__.py" in names:
                todo.append(imported)
            elif "." in imported and any(
                f"{imported.rsplit('.', 1)[0].replace('.', '/')}{end}" in names for end in (".py", "/__init__.py")
            ):
                continue  # `from audio.x import Name`: Name is an attribute of audio/x.py or audio/x/__init__.py
            else:
                pytest.fail(f"{module} imports {imported}, which is not in the package")
    assert not {"audio.cli", "audio.engine", "audio.__main__"} & seen


# --- manifest and YAMLs, loaded with the SDK's own models --------------------------------------------


def test_manifest_is_valid_for_the_sdk(unpacked):
    data = _yaml(unpacked, "manifest.yaml")
    manifest = PluginConfiguration(**data)
    assert manifest.version == "0.1.0" and manifest.name == "tts_pipeline" and manifest.author == "tts_pipeline"
    assert manifest.type.value == "plugin"
    assert manifest.icon == "icon.svg" and (unpacked / "_assets" / manifest.icon).is_file()
    perm = manifest.resource.permission
    assert perm and perm.model and perm.model.enabled and perm.model.tts
    assert not any([perm.model.llm, perm.model.text_embedding, perm.model.rerank, perm.model.speech2text,
                    perm.model.moderation])
    assert perm.storage and perm.storage.enabled and perm.storage.size >= 10 * 2**20
    assert manifest.resource.memory >= 256 * 2**20
    assert manifest.plugins.tools == ["provider/tts_pipeline.yaml"]
    assert manifest.meta.runner.language.value == "python"
    assert manifest.meta.runner.version == "3.12" and manifest.meta.runner.entrypoint == "main"
    assert {a.value for a in manifest.meta.arch} == {"amd64", "arm64"}
    assert manifest.meta.minimum_dify_version
    assert (unpacked / data["privacy"]).is_file()


def test_provider_and_tool_yaml_are_valid_for_the_sdk(unpacked, monkeypatch):
    monkeypatch.chdir(unpacked)  # the SDK resolves the tool YAML paths against the working directory
    provider = ToolProviderConfiguration(**_yaml(unpacked, "provider/tts_pipeline.yaml"))
    assert provider.identity.name == "tts_pipeline"
    assert provider.credentials_schema == []
    assert provider.extra.python.source == "provider/tts_pipeline.py"
    assert len(provider.tools) == 1
    tool: ToolConfiguration = provider.tools[0]
    assert tool.identity.name == "tts_pipeline"
    assert tool.extra.python.source == "tools/tts_pipeline.py"
    assert tool.output_schema and tool.output_schema["type"] == "object"


def _labels(node, where="") -> list[tuple[str, object]]:
    """Every i18n object in a YAML tree: values of label/description/human/human_description keys."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key in ("label", "human_description", "human") or (key == "description" and isinstance(value, dict)
                                                                  and "en_US" in value):
                found.append((here, value))
            else:
                found.extend(_labels(value, here))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found.extend(_labels(item, f"{where}[{i}]"))
    return found


@pytest.mark.parametrize("rel", ["manifest.yaml", "provider/tts_pipeline.yaml", "tools/tts_pipeline.yaml"])
def test_every_label_has_the_four_languages(rel):
    labels = _labels(_yaml(REPO, rel))
    assert labels
    for where, value in labels:
        assert isinstance(value, dict), where
        for lang in LANGUAGES:
            assert isinstance(value.get(lang), str) and value[lang].strip(), f"{rel}: {where} lacks {lang}"


@pytest.mark.parametrize("rel", ["manifest.yaml", "provider/tts_pipeline.yaml", "tools/tts_pipeline.yaml"])
def test_texts_fit_the_daemons_limits(rel):
    """dify-plugin-daemon validates every i18n text as < 1024 characters, tags against its fixed list."""
    data = _yaml(REPO, rel)
    for where, value in _labels(data):
        for lang, text in value.items():
            assert len(text) < 1024, f"{rel}: {where}.{lang}"
    tags = data.get("tags") or data.get("identity", {}).get("tags") or []
    daemon_tags = {"search", "image", "videos", "weather", "finance", "design", "travel", "social", "news",
                   "medical", "productivity", "education", "business", "entertainment", "utilities", "other"}
    assert set(tags) <= daemon_tags


def _params() -> dict[str, dict]:
    return {p["name"]: p for p in _yaml(REPO, "tools/tts_pipeline.yaml")["parameters"]}


def test_parameter_names_are_the_public_contract():
    assert [p["name"] for p in _yaml(REPO, "tools/tts_pipeline.yaml")["parameters"]] == PUBLIC_PARAMETERS
    for param in _yaml(REPO, "tools/tts_pipeline.yaml")["parameters"]:
        ToolParameter(**param)


def test_parameter_types_and_defaults():
    p = _params()
    assert p["text"]["type"] == "string" and p["text"]["form"] == "llm" and p["text"]["required"] is True
    assert p["model"]["type"] == "model-selector" and p["model"]["scope"] == "tts"
    assert p["model"]["form"] == "form" and p["model"]["required"] is True
    assert p["voice"]["type"] == "string" and not p["voice"].get("required")
    for name in ("model_2", "model_3"):  # optional extra models a speaker can be sent to
        assert p[name]["type"] == "model-selector" and p[name]["scope"] == "tts", name
        assert p[name]["form"] == "form" and p[name]["required"] is False, name
    assert p["speakers"]["type"] == "string" and p["speakers"]["form"] == "llm"
    assert p["lexicon"]["type"] == "string" and p["lexicon"]["form"] == "llm" and not p["lexicon"].get("required")
    for name in ("title", "artist", "album", "filename"):
        assert p[name]["type"] == "string" and not p[name].get("required"), name
    for name in ("chapters", "cache"):
        assert p[name]["type"] == "boolean" and p[name]["default"] is True, name

    def values(name: str) -> list[str]:
        assert p[name]["type"] == "select", name
        got = [o["value"] for o in p[name]["options"]]
        assert p[name]["default"] in got, name
        return got

    assert values("output_format") == list(options.OUTPUT_FORMATS) and p["output_format"]["default"] == "mp3"
    assert values("bitrate") == ["auto", "32", "48", "64", "96", "128", "192", "256", "320"]
    assert p["bitrate"]["default"] == "auto"
    assert {int(v) for v in values("bitrate")[1:]} <= set(options.BITRATES_KBPS)
    assert values("sample_rate") == ["auto", "16000", "22050", "24000", "44100", "48000"]
    assert {int(v) for v in values("sample_rate")[1:]} <= set(options.SAMPLE_RATES)
    assert values("channels") == ["mono", "stereo"] and p["channels"]["default"] == "mono"
    assert values("loudness") == ["podcast", "streaming", "mono_podcast", "broadcast", "audiobook", "off"]
    assert set(values("loudness")) == set(LOUDNESS_PRESETS) and p["loudness"]["default"] == "podcast"
    assert values("subtitles") == list(options.SUBTITLE_FORMATS) and p["subtitles"]["default"] == "none"
    for name, parse in (("output_format", options.output_format), ("bitrate", options.bitrate),
                        ("sample_rate", options.sample_rate), ("channels", options.channels),
                        ("loudness", options.loudness), ("subtitles", options.subtitles)):
        for option in p[name]["options"]:
            parse(option["value"])  # every offered value is accepted by the shared validation

    numbers = {"pause_ms": 300, "paragraph_pause_ms": 700, "max_chars_per_request": 600, "concurrency": 4,
               "max_output_mb": 15,  # 15 MiB: the largest tool file Dify 1.0–1.2 accepts
               "music_level": -20, "intro_overlap_ms": 500, "speed": 1}
    for name in ("intro", "outro", "music"):
        assert p[name]["type"] == "file" and not p[name].get("required"), name
    for name, default in numbers.items():
        assert p[name]["type"] == "number" and p[name]["default"] == default, name
        assert (p[name]["min"], p[name]["max"]) == options.LIMITS[name], name


def test_output_schema_declares_the_stats_fields():
    schema = _yaml(REPO, "tools/tts_pipeline.yaml")["output_schema"]
    assert list(schema["properties"]) == STATS_FIELDS
    timeline = schema["properties"]["timeline"]
    assert timeline["type"] == "array"
    assert set(timeline["items"]["properties"]) == {"index", "start", "end", "speaker", "voice", "text", "provider",
                                                          "model"}
    assert set(schema["properties"]["chapters"]["items"]["properties"]) == {"title", "start", "end"}


@pytest.mark.parametrize(("source", "base"), [("tools/tts_pipeline.py", "Tool"),
                                              ("provider/tts_pipeline.py", "ToolProvider")])
def test_each_source_defines_exactly_one_sdk_subclass(source, base):
    """The SDK's class loader refuses a source with several Tool/ToolProvider subclasses (or none)."""
    tree = ast.parse((REPO / source).read_text(encoding="utf-8"))
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    subclasses = [c for c in classes if any(getattr(b, "id", getattr(b, "attr", None)) == base for b in c.bases)]
    assert len(subclasses) == 1, [c.name for c in subclasses]
    other_sdk_bases = {"Tool", "ToolProvider"} - {base}
    assert not [c for c in classes if any(getattr(b, "id", None) in other_sdk_bases for b in c.bases)]


def test_requirements_pin_the_sdk_to_0_10():
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    reqs = [Requirement(line) for line in lines if line]
    sdk = [r for r in reqs if r.name.replace("-", "_").lower() == "dify_plugin"]
    assert len(sdk) == 1
    spec = sdk[0].specifier
    assert spec.contains("0.10.2") and not spec.contains("0.11.0") and not spec.contains("0.9.9")


def test_icon_is_a_small_svg():
    data = (REPO / "_assets" / "icon.svg").read_bytes()
    assert len(data) < 8 * 1024
    root = ET.fromstring(data)
    assert root.tag.endswith("svg") and root.get("viewBox")


def test_privacy_policy_says_where_data_goes():
    text = (REPO / "PRIVACY.md").read_text(encoding="utf-8").lower()
    for phrase in ("tts", "storage", "credentials", "network", "log"):
        assert phrase in text, phrase


def test_env_example_is_for_remote_debugging():
    text = (REPO / ".env.example").read_text(encoding="utf-8")
    assert "INSTALL_METHOD=remote" in text and "REMOTE_INSTALL_URL=" in text and "REMOTE_INSTALL_KEY=" in text


# --- the .difyignore matcher ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "path", "is_dir", "ignored"),
    [
        (["tests/"], "tests", True, True),
        (["tests/"], "tests", False, False),  # a trailing slash matches directories only
        (["tests/"], "audio/tests", True, True),  # no inner slash: at any depth
        (["/tests/"], "audio/tests", True, False),  # leading slash: anchored at the root
        (["audio/cli.py"], "audio/cli.py", False, True),
        (["audio/cli.py"], "x/audio/cli.py", False, False),  # an inner slash anchors too
        (["*.pyc"], "a/b/c.pyc", False, True),
        (["*.pyc", "!keep.pyc"], "a/keep.pyc", False, False),  # the last matching rule wins
        (["docs/*.md"], "docs/a.md", False, True),
        (["docs/*.md"], "docs/sub/a.md", False, False),  # * does not cross /
        (["docs/**/*.md"], "docs/sub/a.md", False, True),
        (["# comment", "", "Makefile"], "Makefile", False, True),
        ([".env.*"], ".env.example", False, True),
        (["file?.txt"], "file1.txt", False, True),
        (["[ab].txt"], "c.txt", False, False),
    ],
)
def test_ignore_rules(rules, path, is_dir, ignored):
    assert packager.IgnoreRules(rules).ignored(path, is_dir) is ignored


def test_build_refuses_a_package_that_lacks_a_referenced_file(tmp_path):
    for rel in ("manifest.yaml", "main.py", "requirements.txt", "PRIVACY.md", "_assets/icon.svg",
                "provider/tts_pipeline.yaml", "provider/tts_pipeline.py", "tools/tts_pipeline.yaml",
                "tools/tts_pipeline.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((REPO / rel).read_bytes())
    (tmp_path / ".difyignore").write_text("tools/*.py\n")
    with pytest.raises(SystemExit, match=r"tools/tts_pipeline\.py"):
        packager.build(tmp_path, tmp_path / "dist")
    (tmp_path / ".difyignore").write_text("")
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    with pytest.raises(SystemExit, match="pyproject"):
        packager.build(tmp_path, tmp_path / "dist")
