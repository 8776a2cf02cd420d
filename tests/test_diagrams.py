"""The diagram generator: byte-stable, complete, structurally valid, and golden on a tiny machine."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from hypha_sm.core.spec import MachineSpec, parse_machine
from hypha_sm.diagrams import render as r
from hypha_sm.diagrams.render import (
    dot_quote,
    mermaid_ids,
    mermaid_label,
    render_all,
    render_dot,
    render_mermaid,
    render_mermaid_page,
    render_state_sections,
    render_transition_table,
    stale_files,
    write_all,
)
from hypha_sm.machines_io import load_specs

HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="Graphviz `dot` is not installed")


@cache
def specs() -> dict[str, MachineSpec]:
    return load_specs()


MACHINES = sorted(specs())

_EDGE_RE = re.compile(r"^    (\[\*\]|[A-Za-z_]\w*) --> (\[\*\]|[A-Za-z_]\w*)(?: : ([^:;\n]+))?$")
_STATE_DECL_RE = re.compile(r'^    state "[^"\n]+" as [A-Za-z_]\w*$')
_DOT_EDGE_RE = re.compile(r'^    "([^"]+)" -> "([^"]+)" \[label="((?:[^"\\]|\\.)*)"')
_ROW_RE = re.compile(r"^\| (\d+) \| (.*) \|$")


def _mermaid_edges(text: str) -> list[tuple[str, str, str | None]]:
    return [
        (m[1], m[2], m[3]) for line in text.splitlines() if (m := _EDGE_RE.match(line)) is not None
    ]


_NOTE_RE = re.compile(r"^    note right of [A-Za-z_]\w*$")


def _mermaid_notes(text: str) -> dict[str, str]:
    """State id -> the text of the note beside it."""
    notes: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if _NOTE_RE.match(line):
            current = line.rsplit(" ", 1)[1]
            notes[current] = ""
        elif line == "    end note":
            current = None
        elif current is not None:
            notes[current] += line.strip() + "\n"
    return notes


def _mermaid_block(page: str) -> str:
    match = re.search(r"^```mermaid\n(.*?)^```$", page, re.DOTALL | re.MULTILINE)
    assert match, "the page has no ```mermaid fence"
    return match.group(1)


# --- the real machines ---------------------------------------------------------------------


def test_rendering_is_byte_stable() -> None:
    """Rendering every machine twice (with SVG when `dot` exists) gives identical bytes."""
    first = render_all(specs())
    second = render_all(specs())
    assert first == second
    assert {f"{m}.{ext}" for m in MACHINES for ext in ("md", "dot")} <= set(first)
    assert ("lease.svg" in first) is HAS_DOT
    for name, data in first.items():
        assert data.endswith(b"\n"), name
        assert not data.endswith(b"\n\n"), name
        assert b"\r" not in data, name
        assert b"graphviz version" not in data, name
        assert r.GENERATED_TAG.encode() in data[:400], f"{name} lacks the generated marker"


@pytest.mark.parametrize("name", MACHINES)
def test_every_transition_is_in_mermaid_dot_and_table(name: str) -> None:
    """Each declared transition is one Mermaid edge, one DOT edge and one table row, in order."""
    spec = specs()[name]
    ids = mermaid_ids(spec)
    page = render_mermaid_page(spec)

    moves = [t for t in spec.transitions if t.src != t.target]
    loops = [t for t in spec.transitions if t.src == t.target]
    edges = [e for e in _mermaid_edges(_mermaid_block(page)) if e[2] is not None]
    assert edges == [(ids[t.src], ids[t.target], t.label) for t in moves]
    notes = _mermaid_notes(_mermaid_block(page))
    for t in loops:  # a state's self-loops are lines of the note beside it
        assert t.label in notes[ids[t.src]], (t.src, t.label)

    dot = render_dot(spec)
    dot_edges = [m.groups() for line in dot.splitlines() if (m := _DOT_EDGE_RE.match(line))]
    assert dot_edges == [(t.src, t.target, t.label) for t in moves]
    for t in loops:
        (note,) = [
            line for line in dot.splitlines() if line.startswith(f'    "{t.src} (stays)" [')
        ]
        assert f"\\l  {dot_quote(t.label)[1:-1]}\\l" in note, (t.src, t.label)

    rows = [m.groups() for line in page.splitlines() if (m := _ROW_RE.match(line))]
    assert [int(index) for index, _ in rows] == [t.index for t in spec.transitions]
    for (_, rest), t in zip(rows, spec.transitions, strict=True):
        src, event, guard, to, effects, _note = rest.split(" | ")
        assert src == f"`{t.src}`"
        assert event == f"`{t.event}` ({spec.event_index[t.event].kind})"
        assert guard == (f"`{t.guard}`" if t.guard else "")
        assert to == ("(stays)" if t.dst is None else f"`{t.dst}`")
        assert effects == ", ".join(f"`{e}`" for e in t.effects)


@pytest.mark.parametrize("name", MACHINES)
def test_mermaid_is_structurally_valid(name: str) -> None:
    """StateDiagram-v2 first; every line a state alias or an `A --> B : label` edge; markers."""
    spec = specs()[name]
    ids = mermaid_ids(spec)
    lines = render_mermaid(spec).splitlines()
    assert lines[0] == "stateDiagram-v2"
    in_note = False
    for line in lines[1:]:
        if _NOTE_RE.match(line):
            in_note = True
        elif line == "    end note":
            in_note = False
        elif in_note:
            assert line.startswith("        "), line
        else:
            assert _EDGE_RE.match(line) or _STATE_DECL_RE.match(line), f"bad line: {line!r}"
    assert not in_note
    edges = _mermaid_edges("\n".join(lines))
    assert Counter(e for e in edges if "[*]" in e[:2]) == Counter(
        [("[*]", ids[spec.initial], None)] + [(ids[s], "[*]", None) for s in spec.terminal]
    )
    assert not set(ids.values()) & r._MERMAID_RESERVED
    assert len(set(ids.values())) == len(ids)


@needs_dot
@pytest.mark.parametrize("name", MACHINES)
def test_dot_parses_with_graphviz(name: str) -> None:
    """`dot -Tsvg` accepts the DOT text of every machine."""
    dot = shutil.which("dot")
    assert dot is not None
    done = subprocess.run(
        [dot, "-Tsvg"], input=render_dot(specs()[name]).encode(), capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"<svg" in done.stdout


@pytest.mark.parametrize("name", MACHINES)
def test_dot_styles_edges_by_event_kind(name: str) -> None:
    """Remote edges are coloured, timer edges dashed, so peers and time stand out; no HTML."""
    spec = specs()[name]
    edges = [line for line in render_dot(spec).splitlines() if _DOT_EDGE_RE.match(line)]
    moves = [t for t in spec.transitions if t.src != t.target]
    for line, t in zip(edges, moves, strict=True):
        kind = spec.event_index[t.event].kind
        assert line.endswith(f", {r.EDGE_STYLE[kind]}];"), line
        assert ("style=dashed" in line) is (kind == "timer"), line
        assert ('color="#1f5fbf"' in line) is (kind == "remote"), line
    assert "=<" not in render_dot(spec), "no HTML-like labels"


def test_index_lists_every_machine() -> None:
    """README.md links each machine's page and drawings and carries the do-not-edit note."""
    index = r.render_index(specs(), svg=True).splitlines()
    assert r.INDEX_NOTE in index
    for name, spec in specs().items():
        row = next(line for line in index if line.startswith(f"| [`{name}`]({name}.md) |"))
        assert f"({name}.dot)" in row
        assert f"({name}.svg)" in row
        assert spec.description in row
    assert ".svg)" not in r.render_index(specs(), svg=False)


# --- files on disk -------------------------------------------------------------------------


def test_stale_files_and_write_all(tmp_path: Path) -> None:
    """Nothing stale after write_all; a modified file and a stray generated .dot are reported."""
    out = tmp_path / "diagrams"
    files = render_all(specs(), svg=False)
    svgs = sorted(f"{name}.svg" for name in specs())
    assert stale_files(out, files) == sorted([*files, *svgs])  # nothing written yet
    assert write_all(out, files) == sorted(files)
    # Without Graphviz the SVGs cannot be made, and the check says so.
    assert stale_files(out, files) == svgs
    assert write_all(out, files) == []  # unchanged files are not rewritten

    (out / "lease.md").write_bytes(files["lease.md"] + b"edited\n")
    (out / "ghost.dot").write_bytes(files["node.dot"])  # e.g. a machine that was removed
    assert stale_files(out, files) == sorted(["ghost.dot", "lease.md", *svgs])

    assert write_all(out, files) == ["ghost.dot", "lease.md"]
    assert not (out / "ghost.dot").exists()
    assert stale_files(out, files) == svgs


def test_each_role_is_drawn_in_its_own_directory_with_one_index_section(tmp_path: Path) -> None:
    """``render_roles``: files under ``<role>/``, a section per role in the top index, and the
    files of a layout before roles (or of a role that is gone) reported and removed."""
    toy = {"door": parse_machine("machines/other/door.toml", DOOR)}
    files = r.render_roles({"worker": specs(), "other": toy}, svg=False)
    assert sorted(name for name in files if "/" not in name) == ["README.md"]
    assert set(files) - {"README.md"} == {
        f"worker/{n}" for n in render_all(specs(), svg=False)
    } | {f"other/{n}" for n in render_all(toy, svg=False)}
    index = files["README.md"].decode()
    assert index.index("## other") < index.index("## worker")
    assert "[`door`](other/door.md)" in index
    assert "[`lease`](worker/lease.md) | [DOT](worker/lease.dot), [SVG](worker/lease.svg)" in index

    out = tmp_path / "diagrams"
    write_all(out, files)
    (out / "lease.md").write_bytes(files["worker/lease.md"])  # the layout before roles
    (out / "gone").mkdir()
    (out / "gone" / "x.dot").write_bytes(files["other/door.dot"])
    svgs = sorted(name[:-4] + ".svg" for name in files if name.endswith(".dot"))
    assert stale_files(out, files) == sorted(["gone/x.dot", "lease.md", *svgs])
    assert write_all(out, files) == ["gone/x.dot", "lease.md"]
    assert stale_files(out, files) == svgs


@pytest.mark.parametrize("name", ["../x.md", "a/b/c.md", ".hidden/x.md", "worker/", "/x.md"])
def test_a_file_name_outside_the_diagrams_directory_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="not a plain file name"):
        write_all(tmp_path, {name: b"x"})


def test_hand_written_files_are_left_alone(tmp_path: Path) -> None:
    """Files without the generated marker are neither reported as extra nor removed."""
    files = render_all(specs(), svg=False)
    write_all(tmp_path, files)
    (tmp_path / "notes.md").write_text("# my notes\n")
    (tmp_path / "keep.txt").write_text("not a generated suffix\n")
    assert stale_files(tmp_path, files) == sorted(f"{name}.svg" for name in specs())
    assert write_all(tmp_path, files) == []
    assert (tmp_path / "notes.md").exists()
    assert (tmp_path / "keep.txt").exists()


def test_svg_follows_dot_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    """Svg=None renders SVG only if `dot` is on PATH; svg=True without `dot` fails clearly."""
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    files = render_all(specs())
    assert not any(name.endswith(".svg") for name in files)
    assert b"(lease.svg)" in files["README.md"]  # the committed SVGs stay linked
    with pytest.raises(FileNotFoundError, match="dot"):
        render_all(specs(), svg=True)


@needs_dot
def test_svg_is_normalised() -> None:
    """SVG has no Graphviz version comment, carries the marker, and is stable across runs."""
    dot = render_dot(specs()["job"])
    svg = r.dot_to_svg(dot)
    assert svg == r.dot_to_svg(dot)
    assert b"graphviz version" not in svg
    assert (
        b"<!-- Generated by `hypha-sm diagram` from machines/worker/job.toml. Do not edit. -->"
        in svg
    )
    assert svg.endswith(b"</svg>\n")


def test_unsafe_machine_names_are_refused() -> None:
    """A machine name that is not a plain file name (or would clash with README) is an error."""
    spec = parse_machine("machines/door.toml", DOOR)
    for bad in ("../evil", "README", "a/b"):
        with pytest.raises(ValueError, match="file name"):
            render_all({bad: dataclasses.replace(spec, name=bad)}, svg=False)


# --- golden output of a tiny machine -------------------------------------------------------

DOOR = """
[machine]
name = "door"
description = "A tiny door for golden tests."
initial = "closed"
terminal = ["end"]

[events]
knock = { kind = "remote", doc = "a peer knocks" }
opened = { kind = "result", doc = "the motor finished" }
tick = { kind = "timer", doc = "time is up" }
stop = { kind = "command", doc = "the operator stops it" }
poke = { kind = "internal", doc = "someone inside pokes it" }

[states.closed]
doc = "Shut."
deadline = "tick"
ignore = ["opened"]

[states.open]
doc = "Open | ajar."
reject = { knock = "already_open" }

[states.end]
doc = "Gone for good."

[[transitions]]
from = "closed"
on = "knock"
guard = "friendly"
to = "open"
effects = ["greet(hi)", "unlock"]

[[transitions]]
from = "closed"
on = "knock"
effects = ["refuse"]
doc = 'Say "no" | politely.'

[[transitions]]
from = "closed"
on = "tick"
to = "end"
effects = ["lock"]

[[transitions]]
from = "open"
on = "opened"

[[transitions]]
from = "open"
on = "poke"
to = "closed"

[[transitions]]
from = ["open", "closed"]
on = "stop"
to = "end"
effects = ["lock(forced)"]
"""

GOLDEN_MERMAID = """\
stateDiagram-v2
    state "end" as s_end
    [*] --> closed
    closed --> open : knock [friendly] / greet(hi), unlock
    closed --> s_end : tick / lock
    open --> closed : poke
    open --> s_end : stop / lock(forced)
    closed --> s_end : stop / lock(forced)
    note right of closed
        stays on:
        knock / refuse
    end note
    note right of open
        stays on:
        opened
    end note
    s_end --> [*]
"""

GOLDEN_DOT = """\
// Generated by `hypha-sm diagram` from machines/door.toml. Do not edit.
digraph "door" {
    graph [rankdir=LR, fontname="Helvetica", fontsize=12, labelloc=b, \
label="door: A tiny door for golden tests.\\nblue = remote (a peer), green = result (executor or \
delivery), dashed orange = timer, bold purple = command (operator, node monitor), grey = internal"];
    node [shape=ellipse, fontname="Helvetica", fontsize=12];
    edge [fontname="Helvetica", fontsize=10];
    "(initial)" [shape=point, width=0.15, label="", tooltip="initial"];
    "closed" [label="closed", tooltip="Shut.", penwidth=2];
    "open" [label="open", tooltip="Open | ajar."];
    "end" [label="end", tooltip="Gone for good.", peripheries=2];
    "(initial)" -> "closed";
    "closed" -> "open" [label="knock [friendly] / greet(hi), unlock", \
tooltip="#0: knock [friendly] / greet(hi), unlock", \
color="#1f5fbf", fontcolor="#1f5fbf", penwidth=1.5];
    "closed" -> "end" [label="tick / lock", tooltip="#2: tick / lock", \
color="#c05a00", fontcolor="#c05a00", style=dashed];
    "open" -> "closed" [label="poke", tooltip="#4: poke", color="#444444", fontcolor="#444444"];
    "open" -> "end" [label="stop / lock(forced)", tooltip="#5: stop / lock(forced)", \
color="#7b1fa2", fontcolor="#7b1fa2", style=bold];
    "closed" -> "end" [label="stop / lock(forced)", tooltip="#6: stop / lock(forced)", \
color="#7b1fa2", fontcolor="#7b1fa2", style=bold];
    "closed (stays)" [shape=note, fontsize=9, color="#888888", \
label="closed stays on:\\l  knock / refuse\\l", \
tooltip="#1: knock / refuse -- Say \\"no\\" | politely."];
    "closed" -> "closed (stays)" [style=dotted, arrowhead=none, color="#888888"];
    "open (stays)" [shape=note, fontsize=9, color="#888888", label="open stays on:\\l  opened\\l", \
tooltip="#3: opened"];
    "open" -> "open (stays)" [style=dotted, arrowhead=none, color="#888888"];
}
"""

GOLDEN_TABLE = """\
| # | From | Event | Guard | To | Effects | Note |
|---|---|---|---|---|---|---|
| 0 | `closed` | `knock` (remote) | `friendly` | `open` | `greet(hi)`, `unlock` |  |
| 1 | `closed` | `knock` (remote) |  | (stays) | `refuse` | Say "no" \\| politely. |
| 2 | `closed` | `tick` (timer) |  | `end` | `lock` |  |
| 3 | `open` | `opened` (result) |  | (stays) |  |  |
| 4 | `open` | `poke` (internal) |  | `closed` |  |  |
| 5 | `open` | `stop` (command) |  | `end` | `lock(forced)` |  |
| 6 | `closed` | `stop` (command) |  | `end` | `lock(forced)` |  |
"""

GOLDEN_STATES = """\
### `closed` (initial)

Shut.

- Deadline: `tick`
- Ignores: `opened`
- Rejects: none

### `open`

Open | ajar.

- Deadline: none
- Ignores: none
- Rejects: `knock` (reason `already_open`)

### `end` (terminal)

Gone for good.

- Absorbing: no transition leaves this state.
"""


@pytest.mark.parametrize(
    ("renderer", "expected"),
    [
        pytest.param(render_mermaid, GOLDEN_MERMAID, id="mermaid"),
        pytest.param(render_dot, GOLDEN_DOT, id="dot"),
        pytest.param(render_transition_table, GOLDEN_TABLE, id="table"),
        pytest.param(render_state_sections, GOLDEN_STATES, id="states"),
    ],
)
def test_golden_tiny_machine(renderer: Callable[[MachineSpec], str], expected: str) -> None:
    """A hand-written machine renders to exactly the expected text (reserved id, escapes)."""
    assert renderer(parse_machine("machines/door.toml", DOOR)) == expected


def test_golden_page_assembles_the_parts() -> None:
    """The page holds the marker, title, description, fenced Mermaid, table, states, events."""
    spec = parse_machine("machines/door.toml", DOOR)
    page = render_mermaid_page(spec)
    assert page.startswith(
        "<!-- Generated by `hypha-sm diagram` from machines/door.toml. Do not edit. -->\n"
        "# Machine `door`\n\nA tiny door for golden tests.\n"
    )
    assert "```mermaid\n" + GOLDEN_MERMAID + "```\n" in page
    assert "\n" + GOLDEN_TABLE + "\n## States\n\n" + GOLDEN_STATES + "\n## Events\n" in page
    assert page.endswith("| `poke` | internal | someone inside pokes it |\n")


@pytest.mark.parametrize(
    ("escape", "raw", "expected"),
    [
        pytest.param(
            mermaid_label,
            'a:b;c#d "e" <f> {g} |h\nnext',
            "a#58;b#59;c#35;d #quot;e#quot; #lt;f#gt; #123;g#125; #124;h next",
            id="mermaid",
        ),
        pytest.param(dot_quote, 'say "hi" \\ \nbye', '"say \\"hi\\" \\\\ \\nbye"', id="dot"),
    ],
)
def test_label_escaping(escape: Callable[[str], str], raw: str, expected: str) -> None:
    """Mermaid labels use entity codes for separators; DOT strings escape quotes and backslashes."""
    assert escape(raw) == expected


@needs_dot
def test_svg_freshness_is_judged_by_its_dot_source_not_its_bytes(tmp_path: Path) -> None:
    """An SVG is fresh while it was rendered from the current DOT, whatever Graphviz drew.

    So `hypha-sm diagram --check` gives the same answer with another Graphviz version or fonts,
    and on a machine without Graphviz, where the committed SVGs are kept, not deleted.
    """
    files = render_all(specs(), svg=True)
    write_all(tmp_path, files)
    assert stale_files(tmp_path, files) == []

    svg = tmp_path / "lease.svg"
    svg.write_bytes(svg.read_bytes().replace(b"<svg", b"<svg data-other-graphviz='1'", 1))
    assert stale_files(tmp_path, files) == []
    assert write_all(tmp_path, files) == []  # not rewritten: same source

    without_dot = render_all(specs(), svg=False)
    assert stale_files(tmp_path, without_dot) == []
    assert write_all(tmp_path, without_dot) == []
    assert svg.exists()

    other = dict(files)
    other["lease.dot"] = files["lease.dot"] + b"// changed\n"
    assert stale_files(tmp_path, other) == ["lease.dot", "lease.svg"]
