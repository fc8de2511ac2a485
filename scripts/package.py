#!/usr/bin/env python3
"""Build dist/tts_pipeline-<version>.difypkg: a zip of the plugin files, honouring .difyignore.

    .venv/bin/python scripts/package.py [--out DIR] [--list]

The same archive `dify plugin package` makes: every file of the repository except what .difyignore (gitignore
syntax) excludes. Before writing, it checks that every file the manifest and YAMLs reference is inside, and
that the package stays under Dify's 50 MiB (uncompressed) limit. The result is unsigned: stock Dify accepts it
only with FORCE_VERIFYING_SIGNATURE=false.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
MAX_UNCOMPRESSED = 50 * 1024 * 1024
# A fixed timestamp makes the archive reproducible (same files → same bytes).
ZIP_DATE = (2025, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


class IgnoreRules:
    """The subset of gitignore syntax .difyignore uses: comments, `!` negation, trailing `/` for directories,
    a leading or inner `/` anchors to the root, `*`, `?`, `[...]` and `**`. The last matching rule wins, and an
    ignored directory hides everything below it (as in git)."""

    def __init__(self, lines: list[str]) -> None:
        self.rules: list[Rule] = []
        for raw in lines:
            line = raw.rstrip("\n").rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            if negate:
                line = line[1:]
            dir_only = line.endswith("/")
            line = line.rstrip("/")
            anchored = "/" in line  # a leading or inner slash anchors the pattern at the root
            body = _glob_to_regex(line.lstrip("/"))
            pattern = f"^{body}$" if anchored else f"^(?:.*/)?{body}$"
            self.rules.append(Rule(re.compile(pattern), negate, dir_only))

    @classmethod
    def from_file(cls, path: Path) -> IgnoreRules:
        return cls(path.read_text(encoding="utf-8").splitlines() if path.is_file() else [])

    def ignored(self, rel_path: str, is_dir: bool) -> bool:
        verdict = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(rel_path):
                verdict = not rule.negate
        return verdict


def _glob_to_regex(glob: str) -> str:
    out, i = [], 0
    while i < len(glob):
        ch = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if glob.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[":
            end = glob.find("]", i + 1)
            if end == -1:
                out.append(re.escape(ch))
            else:
                cls = glob[i + 1 : end].replace("\\", "\\\\")
                out.append(f"[^{cls[1:]}]" if cls.startswith("!") else f"[{cls}]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def package_files(root: Path = ROOT) -> list[str]:
    """Relative POSIX paths of the files that go into the package, sorted."""
    rules = IgnoreRules.from_file(root / ".difyignore")
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(d for d in dirnames if not rules.ignored(prefix + d, True))
        for name in sorted(filenames):
            rel = prefix + name
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file() or rules.ignored(rel, False):
                continue
            found.append(rel)
    return sorted(found)


def referenced_files(root: Path = ROOT) -> list[str]:
    """Files the manifest and the provider/tool YAMLs point at (the daemon needs every one of them)."""
    manifest = yaml.safe_load((root / "manifest.yaml").read_text(encoding="utf-8"))
    refs = ["manifest.yaml", "main.py", "requirements.txt", f"_assets/{manifest['icon']}"]
    if manifest.get("privacy"):
        refs.append(manifest["privacy"])
    for provider_path in manifest.get("plugins", {}).get("tools", []):
        refs.append(provider_path)
        provider = yaml.safe_load((root / provider_path).read_text(encoding="utf-8"))
        refs.append(provider["extra"]["python"]["source"])
        refs.append(f"_assets/{provider['identity']['icon']}")
        for tool_path in provider.get("tools", []):
            refs.append(tool_path)
            tool = yaml.safe_load((root / tool_path).read_text(encoding="utf-8"))
            refs.append(tool["extra"]["python"]["source"])
    return sorted(set(refs))


def build(root: Path = ROOT, out_dir: Path | None = None) -> Path:
    """Write the .difypkg and return its path. Raises SystemExit with a reason when the package is unfit."""
    manifest = yaml.safe_load((root / "manifest.yaml").read_text(encoding="utf-8"))
    files = package_files(root)
    missing = [ref for ref in referenced_files(root) if ref not in files]
    if missing:
        raise SystemExit(f"package would lack referenced files (check .difyignore): {', '.join(missing)}")
    if "pyproject.toml" in files:
        raise SystemExit("pyproject.toml must not ship: Dify would install from it instead of requirements.txt")
    total = sum((root / rel).stat().st_size for rel in files)
    if total > MAX_UNCOMPRESSED:
        raise SystemExit(f"package is {total / 2**20:.1f} MiB uncompressed; Dify's limit is 50 MiB")
    out_dir = Path(out_dir) if out_dir is not None else root / "dist"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{manifest['name']}-{manifest['version']}.difypkg"
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for rel in files:
            info = zipfile.ZipInfo(rel, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = ((root / rel).stat().st_mode & 0o777 | 0o100000) << 16
            zf.writestr(info, (root / rel).read_bytes())
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: dist/)")
    parser.add_argument("--list", action="store_true", help="only list the files that would be packaged")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(package_files(ROOT)))
        return 0
    target = build(ROOT, args.out)
    with zipfile.ZipFile(target) as zf:
        entries = zf.infolist()
    raw = sum(e.file_size for e in entries)
    print(
        f"{target.relative_to(Path.cwd()) if target.is_relative_to(Path.cwd()) else target}: {len(entries)} files, "
        f"{raw / 1024:.0f} KiB uncompressed, {target.stat().st_size / 1024:.0f} KiB packed (unsigned)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
