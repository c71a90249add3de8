"""``include:``: config fragments (our presets, or files of your own) merged into a config,
and where every key of the merged config came from.

A fragment holds ``allow:`` and ``secrets:`` (and may include others). The including
file's own rules and secrets come first, so that their ``allow[N]`` labels are the
positions in that file; included rules and secrets follow in include order, depth first.
A secret the including file names again takes the fragment's entry and overrides the keys
it gives (typically ``source:``, to read the preset's secret from Vault).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from egress.config.checker import Checker, file_path, join_key, kind_of
from egress.config.model import Origin
from egress.errors import ConfigError, ConfigProblem

FRAGMENT_KEYS = ("description", "include", "allow", "secrets")
MAX_INCLUDE_DEPTH = 8
PRESET_SCHEME = "preset:"


def preset_dir() -> Path:
    return Path(str(resources.files("egress").joinpath("presets")))


def preset_names() -> list[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: YAML keeps the last one
    silently, so a reviewer reading the first would approve what is not in force."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"key {key!r} is given twice in one mapping (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}); YAML would keep only the last",
                    key_node.start_mark,
                )  # fmt: skip
            seen.setdefault(key, key_node.start_mark.line + 1)
        return super().construct_mapping(node, deep)


def load_yaml(text: str, file: str, quote: bool = True) -> Any:
    """Parse YAML; ``quote``: let the error say what the parser found (it may quote text)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        if not quote:
            problem = "the parser's message is not shown, since it can quote the file"
        raise ConfigError(file, [ConfigProblem("", f"{where}invalid YAML: {problem}")]) from None


def key_lines(text: str) -> dict[str, int]:
    """The 1-based line of every key path in a YAML document (``allow[2].host`` -> 14)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    out: dict[str, int] = {"": 1}
    stack: list[tuple[Any, str]] = [(root, "")]
    while stack:
        node, key = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                path = join_key(key, str(k.value))
                out.setdefault(path, k.start_mark.line + 1)
                stack.append((v, path))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                path = f"{key}[{i}]"
                out.setdefault(path, v.start_mark.line + 1)
                stack.append((v, path))
    return out


@dataclass
class Document:
    """One YAML file of the config (the main file or an included fragment)."""

    file: str  # as named to the user
    base: Path  # relative paths inside it are relative to this folder
    data: dict[str, Any]
    lines: dict[str, int]
    path: Path | None = None  # where it was read (None: the embedded default)
    raw: bytes = b""  # its bytes as read: the config's SHA-256 covers them (egress.reload)

    def origin(self, key: str) -> Origin:
        line = self.lines.get(key)
        probe = key
        while line is None and probe:  # the nearest enclosing key that has a line
            probe = probe.rsplit(".", 1)[0] if "." in probe else probe.rsplit("[", 1)[0]
            line = self.lines.get(probe)
            if "." not in probe and "[" not in probe:
                line = line or self.lines.get(probe)
                break
        return Origin(self.file, line, key)


def read_document(path: Path, file: str, fragment: bool = False) -> Document | ConfigProblem:
    """Read one YAML file. For a fragment, a YAML error gives its position only: the
    parser's message quotes the text, and an include may name any file by mistake (a
    secrets file), which must not be printed."""
    try:
        raw = path.read_bytes()
        # As read_text would: universal newlines (a CRLF file parses as an LF one).
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except OSError as e:
        return ConfigProblem("", f"cannot read the file: {e.strerror}", file)
    except UnicodeDecodeError:
        return ConfigProblem("", "is not UTF-8 text (a config file is YAML)", file)
    try:
        data = load_yaml(text, file, quote=not fragment)
    except ConfigError as e:
        return ConfigProblem("", e.problems[0].message, file)
    if data is None:
        data = {}
    return Document(file, path.resolve().parent, data, key_lines(text), path, raw)


def _resolve(entry: str, doc: Document) -> tuple[Path, str] | str:
    """(path, name to show) of an include entry, or why it cannot be found."""
    if entry.startswith(PRESET_SCHEME) or (
        "/" not in entry and not entry.endswith((".yaml", ".yml"))
    ):
        name = entry.removeprefix(PRESET_SCHEME)
        names = preset_names()
        if name not in names:
            near = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
            hint = f"did you mean {near[0]!r}?" if near else f"presets: {', '.join(names)}"
            return f"{entry!r} is not a preset egress ships ({hint}); a file needs a path such as ./{name}.yaml"
        return preset_dir() / f"{name}.yaml", f"preset:{name}"
    path = file_path(doc.base, entry)
    return path, str(path)


def gather(
    c: Checker, doc: Document, key: str = "include", chain: tuple[str, ...] = ()
) -> list[Document]:
    """The fragments ``doc`` includes, depth first, each checked for its own keys.
    Problems are recorded in ``c`` with the file they are in."""
    raw = doc.data.get("include")
    if raw is None:
        return []
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        c.problems.append(
            ConfigProblem(key, f"must be a list of presets or files, not {kind_of(raw)}", doc.file)
        )
        return []
    out: list[Document] = []
    for i, entry in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(entry, str) or not entry:
            c.problems.append(
                ConfigProblem(where, "must be a preset name or a file path", doc.file)
            )
            continue
        found = _resolve(entry, doc)
        if isinstance(found, str):
            c.problems.append(ConfigProblem(where, found, doc.file))
            continue
        path, shown = found
        ident = str(path.resolve())
        if ident in chain or len(chain) >= MAX_INCLUDE_DEPTH:
            why = (
                "includes itself" if ident in chain else f"nests more than {MAX_INCLUDE_DEPTH} deep"
            )
            c.problems.append(ConfigProblem(where, f"{shown!r} {why}", doc.file))
            continue
        if any(str(Path(d.file).resolve()) == ident or d.file == shown for d in out):
            continue  # the same fragment twice: once is enough
        if path.suffix not in (".yaml", ".yml"):
            c.problems.append(ConfigProblem(where, f"{shown!r}: an included file must be a "
                                            ".yaml or .yml config fragment", doc.file))  # fmt: skip
            continue
        frag = read_document(path, shown, fragment=True)
        if isinstance(frag, ConfigProblem):
            c.problems.append(ConfigProblem(where, f"{shown}: {frag.message}", doc.file))
            continue
        sub = Checker()
        sub.mapping(frag.data, "", FRAGMENT_KEYS)
        for p in sub.problems:
            hint = (
                " (a fragment holds allow, secrets and include only)"
                if "unknown key" in p.message
                else ""
            )
            c.problems.append(ConfigProblem(p.key, p.message + hint, frag.file))
        if not isinstance(frag.data, dict):
            continue
        out.append(frag)
        out.extend(gather(c, frag, "include", (*chain, str(Path(doc.file).resolve()), ident)))
    return out


@dataclass
class Item:
    """One allow rule or secret entry of the merged config, and where it came from."""

    node: Any
    doc: Document
    key: str  # its key path inside doc ("allow[2]")
    overrides: Item | None = None  # the fragment's entry this one overrides


def merged_list(c: Checker, docs: list[Document], name: str) -> list[Item]:
    items: list[Item] = []
    for doc in docs:
        raw = doc.data.get(name)
        if raw is None:
            continue
        if not isinstance(raw, list):
            c.problems.append(
                ConfigProblem(
                    name,
                    f"must be a list{' of rules' if name == 'allow' else ''}, not {kind_of(raw)}",
                    doc.file,
                )
            )
            continue
        items += [Item(node, doc, f"{name}[{i}]") for i, node in enumerate(raw)]
    return items


def merge_secrets(c: Checker, items: list[Item], main: Document) -> list[Item]:
    """The including file's entry for a fragment's secret overrides that entry's keys."""
    by_name: dict[str, Item] = {}
    out: list[Item] = []
    for item in items:
        name = item.node.get("name") if isinstance(item.node, dict) else None
        if not isinstance(name, str):
            out.append(item)
            continue
        first = by_name.get(name.lower())
        if first is None:
            by_name[name.lower()] = item
            out.append(item)
        elif first.doc is main and item.doc is not main and first.overrides is None:
            first.node = {**item.node, **first.node}  # the fragment's keys, overridden
            first.overrides = item
        elif first.doc is main and item.doc is not main:
            assert first.overrides is not None
            c.problems.append(ConfigProblem(
                f"{item.key}.name",
                f"{name!r} is also defined in {first.overrides.doc.file} "
                f"({first.overrides.key}): rename one",
                item.doc.file,
            ))  # fmt: skip
        elif item.doc is not main:
            c.problems.append(ConfigProblem(
                f"{item.key}.name",
                f"{name!r} is also defined in {first.doc.file} ({first.key}): rename one, or "
                f"define it in the including file to override it",
                item.doc.file,
            ))  # fmt: skip
        else:
            out.append(item)  # two in one file: the secret-set check names it
    return out


def relocate(
    problems: list[ConfigProblem], items: dict[str, list[Item]], main: str
) -> list[ConfigProblem]:
    """Problems recorded against merged keys (``allow[7].host``) named in the file and key
    path where the user can fix them."""
    out = []
    for p in problems:
        if p.file is not None and p.file != main:
            out.append(p)
            continue
        moved = p
        for name, listed in items.items():
            prefix = f"{name}["
            if p.key.startswith(prefix):
                index_text, _, rest = p.key[len(prefix) :].partition("]")
                if index_text.isdigit() and int(index_text) < len(listed):
                    item = listed[int(index_text)]
                    if item.doc.file != main:
                        moved = ConfigProblem(item.key + rest, p.message, item.doc.file)
        out.append(moved)
    return out


def origins(main: Document, items: dict[str, list[Item]]) -> dict[str, Origin]:
    """Merged key path -> where it is written."""
    out = {key: Origin(main.file, line, key) for key, line in main.lines.items()}
    for name, listed in items.items():
        for n, item in enumerate(listed):
            merged = f"{name}[{n}]"
            for source in (item.overrides, item):  # the including file's keys win
                if source is None:
                    continue
                for key, line in source.doc.lines.items():
                    if key == source.key or key.startswith((source.key + ".", source.key + "[")):
                        out[merged + key[len(source.key) :]] = Origin(source.doc.file, line, key)
            out[merged] = item.doc.origin(item.key)
    return out
