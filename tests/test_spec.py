"""Loading machine definitions: the real ones are valid, and each kind of bad one fails clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from hypha_sm import cli
from hypha_sm.core.engine import Ctx, Engine, Registry
from hypha_sm.core.errors import InvalidTransition, SpecError
from hypha_sm.core.spec import machines_hash, parse_machine, parse_machines
from hypha_sm.machines_io import load_specs, read_sources, roles, sources_hash
from hypha_sm.roles.worker.core.machines import REGISTRIES

GOOD = """
[machine]
name = "toy"
initial = "a"
terminal = ["z"]
deadlines_required = true

[events]
poke = { kind = "remote" }
done = { kind = "result" }
late = { kind = "timer" }

[states.a]
deadline = "late"
[states.z]

[[transitions]]
from = "a"
on = "poke"
guard = "ok"
to = "z"

[[transitions]]
from = "a"
on = "poke"

[[transitions]]
from = "a"
on = ["done", "late"]
to = "z"
"""


def test_the_shipped_machines_are_valid_and_bound_to_code() -> None:
    """Every file in machines/ parses, validates, and resolves every guard and action name."""
    specs = load_specs()
    assert set(specs) == {"node", "batch", "request", "lease", "job"}
    Engine(specs, REGISTRIES)


def test_a_minimal_machine_is_valid() -> None:
    """The toy machine used as the base of the bad cases below is itself valid."""
    spec = parse_machine("toy.toml", GOOD)
    assert [t.label for t in spec.transitions] == ["poke [ok]", "poke", "done", "late"]


BAD_CASES = [
    ("no initial", ('initial = "a"\n', ""), None, "exactly one initial state"),
    (
        "unknown initial",
        ('initial = "a"', 'initial = "q"'),
        None,
        "initial state 'q' is not declared",
    ),
    (
        "unknown target",
        (
            'to = "z"\n\n[[transitions]]\nfrom = "a"\non = "poke"\n',
            'to = "nowhere"\n\n[[transitions]]\nfrom = "a"\non = "poke"\n',
        ),
        None,
        "target state 'nowhere'",
    ),
    ("unreachable", ("[states.z]", "[states.z]\n[states.orphan]\n"), "orphan", "unreachable"),
    (
        "terminal with exit",
        ("[states.z]", '[states.z]\n[[transitions]]\nfrom = "z"\non = "poke"\nto = "a"\n'),
        "z",
        "terminal state cannot have transitions",
    ),
    (
        "guarded fallback",
        ('from = "a"\non = "poke"\n\n', 'from = "a"\non = "poke"\nguard = "other"\n\n'),
        "a",
        "last transition must be unguarded",
    ),
    ("unguarded first", ('guard = "ok"\nto = "z"', 'to = "z"'), "a", "must come last"),
    (
        "remote not answered",
        ('poke = { kind = "remote" }', 'poke = { kind = "remote" }\nnudge = { kind = "remote" }'),
        "a",
        "remote event 'nudge' is neither handled",
    ),
    (
        "deadline not handled",
        ('on = ["done", "late"]', 'on = ["done"]'),
        "a",
        "no transition handles its deadline event 'late'",
    ),
    (
        "deadline not a timer",
        ('deadline = "late"', 'deadline = "done"'),
        "a",
        "must be of kind 'timer'",
    ),
    ("bad kind", ('late = { kind = "timer" }', 'late = { kind = "clock" }'), None, "kind 'clock'"),
    (
        "unused event",
        ('late = { kind = "timer" }', 'late = { kind = "timer" }\nspare = { kind = "internal" }'),
        None,
        "'spare' is declared but never used",
    ),
    (
        "typo key",
        ("deadlines_required = true", 'deadlines_required = true\ninital = "a"'),
        None,
        "unknown key(s) ['inital'] in [machine]",
    ),
    (
        "typo table",
        ("[events]", "[extras]\nx = 1\n\n[events]"),
        None,
        "unknown key(s) ['extras'] in the file",
    ),
    (
        "typo in an event",
        ('poke = { kind = "remote" }', 'poke = { kind = "remote", size = 1 }'),
        None,
        "unknown key(s) ['size'] in event 'poke'",
    ),
    (
        "terminal as a table",
        ('terminal = ["z"]', "terminal = { z = true }"),
        None,
        "[machine] terminal must be a list of state names",
    ),
    (
        "bad effect",
        (
            'to = "z"\n\n[[transitions]]\nfrom = "a"\non = "poke"\n',
            'to = "z"\neffects = ["Bad Name"]\n\n[[transitions]]\nfrom = "a"\non = "poke"\n',
        ),
        None,
        "is not 'name' or 'name(arg)'",
    ),
    (
        "ignored and handled",
        ('deadline = "late"', 'deadline = "late"\nignore = ["poke"]'),
        "a",
        "handled and also ignored",
    ),
    (
        "reject result",
        ('deadline = "late"', 'deadline = "late"\nreject = { done = "nope" }'),
        "a",
        "only remote events can be rejected",
    ),
    (
        "unreachable with exits",
        ("[states.z]", '[states.z]\n[states.t]\n[[transitions]]\nfrom = "t"\non = "late"\n'),
        "t",
        "unreachable",
    ),
    ("not toml", ("[machine]", "[machine"), None, "not valid TOML"),
]


@pytest.mark.parametrize(
    ("case", "edit", "state", "message"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_a_bad_definition_fails_naming_file_machine_state_and_problem(
    case: str, edit: tuple[str, str], state: str | None, message: str
) -> None:
    """Each broken definition raises SpecError with the file, the machine, the state and the problem."""
    old, new = edit
    assert old in GOOD, case
    with pytest.raises(SpecError) as err:
        parse_machine("machines/toy.toml", GOOD.replace(old, new, 1))
    text = str(err.value)
    machine = "?" if case == "not toml" else "toy"  # unreadable TOML has no name to give
    assert text.startswith(f"machines/toy.toml: machine {machine!r}")
    assert message in text
    if state is not None:
        assert err.value.state == state
        assert f"state {state!r}" in text


def test_a_trap_state_is_refused() -> None:
    """A live state from which no terminal state can be reached is a trap."""
    text = GOOD.replace("[states.z]", "[states.z]\n[states.t]\n").replace(
        'on = ["done", "late"]\nto = "z"',
        'on = ["done", "late"]\nto = "t"\n\n[[transitions]]\nfrom = "t"\non = "poke"\n',
    )
    text = text.replace("[states.t]\n", '[states.t]\ndeadline = "late"\nignore = ["done"]\n')
    text += '\n[[transitions]]\nfrom = "t"\non = "late"\n'
    with pytest.raises(SpecError) as err:
        parse_machine("machines/toy.toml", text)
    assert str(err.value) == (
        "machines/toy.toml: machine 'toy', state 't': trap state: no terminal state is reachable "
        "from it"
    )


LOOP = """
[machine]
name = "loop"
initial = "a"
terminal = []

[events]
poke = { kind = "remote" }

[states.a]
[states.b]

[[transitions]]
from = "a"
on = "poke"
to = "b"

[[transitions]]
from = "b"
on = "poke"
to = "a"
"""


@pytest.mark.parametrize(
    ("case", "edit", "trap"),
    [
        ("states that lead to each other", None, None),
        ("a state that only loops on itself", ('to = "a"', 'to = "b"'), "b"),
        ("a state whose only edge is internal", ('to = "a"\n', ""), "b"),
    ],
)
def test_a_machine_without_terminal_states_needs_a_way_out_of_every_state(
    case: str, edit: tuple[str, str] | None, trap: str | None
) -> None:
    """A machine that never ends (no terminal state) may not hold a state it cannot leave."""
    text = LOOP if edit is None else LOOP.replace(*edit)
    if trap is None:
        parse_machine("machines/loop.toml", text)
        return
    with pytest.raises(SpecError) as err:
        parse_machine("machines/loop.toml", text)
    assert str(err.value) == (
        f"machines/loop.toml: machine 'loop', state {trap!r}: trap state: it has no way out"
    ), case


def test_unresolved_guard_names_the_machine_state_and_known_names() -> None:
    """A guard the code does not register fails when the engine is built, listing the known ones."""
    spec = parse_machine("machines/toy.toml", GOOD)
    with pytest.raises(SpecError) as err:
        Engine({"toy": spec}, {"toy": Registry.new("toy")})
    assert "guard 'ok' does not resolve" in str(err.value)
    assert err.value.state == "a"


def _noop(ctx: Ctx) -> None: ...


def _noop_with_arg(ctx: Ctx, arg: str) -> None: ...


# GOOD with a registered name of each kind in use: guard "ok", action "noop", action(arg)
# "noop_with_arg". Each case replaces one by a name the code does not register.
WITH_ACTIONS = GOOD.replace('on = "poke"\n\n', 'on = "poke"\neffects = ["noop"]\n\n', 1).replace(
    'to = "z"\n', 'to = "z"\neffects = ["noop_with_arg(y)"]\n', 2
)
UNRESOLVED_CASES = [
    ("guard", 'guard = "ok"', 'guard = "missing"', "guard 'missing'", ["ok"]),
    ("action", '"noop"', '"missing"', "action 'missing'", ["noop"]),
    (
        "action(arg)",
        '"noop_with_arg(y)"',
        '"missing(y)"',
        "action(arg) 'missing'",
        ["noop_with_arg"],
    ),
]


@pytest.mark.parametrize(
    ("kind", "old", "new", "named", "known"),
    UNRESOLVED_CASES,
    ids=[c[0] for c in UNRESOLVED_CASES],
)
def test_an_unresolved_name_is_refused_listing_the_known_names_of_its_kind(
    kind: str, old: str, new: str, named: str, known: list[str]
) -> None:
    """A guard, action or action(arg) the code does not register fails the engine's build,
    naming the state and listing the registered names of that kind, so the file can be fixed."""
    assert old in WITH_ACTIONS, kind
    registry = Registry.new("toy")
    registry.guards["ok"] = lambda ctx: True
    registry.actions["noop"] = _noop
    registry.actions_with_arg["noop_with_arg"] = _noop_with_arg
    Engine({"toy": parse_machine("machines/toy.toml", WITH_ACTIONS)}, {"toy": registry})
    spec = parse_machine("machines/toy.toml", WITH_ACTIONS.replace(old, new))
    with pytest.raises(SpecError) as err:
        Engine({"toy": spec}, {"toy": registry})
    assert str(err.value) == (
        f"machines/toy.toml: machine 'toy', state 'a': {named} does not resolve; known: {known}"
    )


@pytest.mark.parametrize("state", [None, "a"])
def test_a_spec_error_keeps_its_parts_and_reads_file_machine_state_problem(
    state: str | None,
) -> None:
    """SpecError carries what it names; its text leads with the file, then the machine, then
    the state where there is one, then the problem."""
    err = SpecError("machines/toy.toml", "toy", state, "it is wrong")
    assert (err.file, err.machine, err.state, err.problem) == (
        "machines/toy.toml",
        "toy",
        state,
        "it is wrong",
    )
    where = "" if state is None else f", state {state!r}"
    assert str(err) == f"machines/toy.toml: machine 'toy'{where}: it is wrong"


def test_an_invalid_transition_keeps_its_parts_and_names_them_all() -> None:
    """InvalidTransition carries the machine, record key, phase and event, and says each."""
    err = InvalidTransition("lease", "l-1", "active", "renew", "no transition")
    assert (err.machine, err.key, err.phase, err.event) == ("lease", "l-1", "active", "renew")
    assert str(err) == "lease 'l-1' in phase 'active' on 'renew': no transition"


def test_code_registering_an_unused_action_is_refused() -> None:
    """Guards and actions in code that no transition names are drift, and fail the load."""
    spec = parse_machine("machines/toy.toml", GOOD)
    registry = Registry.new("toy")
    registry.guard(lambda ctx: True).__name__  # noqa: B018
    registry.guards["ok"] = registry.guards.pop("<lambda>")

    def stray(ctx: object) -> None: ...

    registry.actions["stray"] = stray  # type: ignore[assignment]
    with pytest.raises(
        SpecError, match="action 'stray' is registered in code but no transition uses it"
    ):
        Engine({"toy": spec}, {"toy": registry})


def test_a_machine_the_code_expects_but_no_file_defines_is_refused() -> None:
    """Code registering machines "a" and "b" with no file for either names the first."""
    with pytest.raises(SpecError) as err:
        Engine({}, {"b": Registry.new("b"), "a": Registry.new("a")})
    assert (
        str(err.value) == "machines/: machine 'a': code expects this machine; no file defines it"
    )


def test_a_machine_file_no_code_registers_for_is_refused() -> None:
    """Files defining machines the code does not know name the first such machine's file."""
    first = parse_machine("machines/a.toml", GOOD.replace('name = "toy"', 'name = "a"'))
    second = parse_machine("machines/b.toml", GOOD.replace('name = "toy"', 'name = "b"'))
    with pytest.raises(SpecError) as err:
        Engine({"b": second, "a": first}, {})
    assert str(err.value) == (
        "machines/a.toml: machine 'a': no code registers guards and actions for this machine"
    )


def test_two_files_declaring_the_same_machine_name_are_refused_naming_both() -> None:
    """Machine names are unique across files: the later file fails, naming the earlier one."""
    sources = {"machines/b.toml": GOOD.encode(), "machines/a.toml": GOOD.encode()}
    with pytest.raises(SpecError) as err:
        parse_machines(sources)
    assert (
        str(err.value)
        == "machines/b.toml: machine 'toy': machine name also used in machines/a.toml"
    )


def test_code_registering_an_unused_guard_is_refused() -> None:
    """A guard no transition names is drift too, and the error says which."""
    registry = Registry.new("toy")
    registry.guards["ok"] = lambda ctx: True
    registry.guards["stray"] = lambda ctx: True
    with pytest.raises(SpecError) as err:
        Engine({"toy": parse_machine("machines/toy.toml", GOOD)}, {"toy": registry})
    assert str(err.value) == (
        "machines/toy.toml: machine 'toy': guard 'stray' is registered in code but no "
        "transition uses it"
    )


def test_machines_hash_is_stable_and_changes_with_content() -> None:
    """The log header's machines hash depends on the files' names and bytes only."""
    sources = read_sources()
    assert machines_hash(sources) == machines_hash(dict(reversed(list(sources.items()))))
    changed = dict(sources)
    changed["machines/worker/node.toml"] += b"\n# comment\n"
    assert machines_hash(changed) != machines_hash(sources)


def test_the_log_hash_names_files_without_the_role_directory() -> None:
    """Logs recorded before machines were grouped by role keep matching the same files."""
    sources = read_sources()
    assert all(key.startswith("machines/worker/") for key in sources)
    legacy = {f"machines/{key.rsplit('/', 1)[1]}": data for key, data in sources.items()}
    assert sources_hash(sources) == machines_hash(legacy)


def test_machines_lists_every_role_and_refuses_a_role_without_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hypha-sm machines` checks each role's directory; one no code runs is a one-line error."""
    assert roles() == ["data", "ps", "scheduler", "worker"]
    for role in roles():
        for name, data in read_sources(role=role).items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(data)
    monkeypatch.setenv("HYPHA_SM_MACHINES", str(tmp_path / "machines"))
    assert cli.main(["machines"]) == 0
    out = capsys.readouterr().out
    assert "worker: all valid; sha256:" in out
    assert "scheduler: all valid; sha256:" in out
    (tmp_path / "machines" / "stray").mkdir()
    (tmp_path / "machines" / "stray" / "toy.toml").write_text(GOOD)
    assert roles(tmp_path / "machines") == ["data", "ps", "scheduler", "stray", "worker"]
    assert cli.main(["machines"]) == 2
    assert capsys.readouterr().err == (
        "hypha-sm: error: machines/stray/: machine 'stray': no code runs this role's machines\n"
    )


@pytest.mark.parametrize("text", ['machine = "toy"\n', "[events]\n", "[machine]\nname = 3\n"])
def test_a_file_without_a_named_machine_table_is_refused_by_name(text: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_machine("machines/x.toml", text)
    assert (
        str(err.value)
        == "machines/x.toml: machine '?': missing [machine] table with a string 'name'"
    )


def test_terminal_and_deadlines_required_may_be_left_out() -> None:
    """No ``terminal`` is none (a machine that runs for ever); no ``deadlines_required`` is false."""
    text = LOOP.replace("terminal = []\n", "", 1)
    assert "terminal" not in text
    assert "deadlines_required" not in text
    spec = parse_machine("machines/loop.toml", text)
    assert spec.terminal == frozenset()
    assert not spec.deadlines_required


def test_with_deadlines_required_a_live_state_without_a_timer_edge_is_refused() -> None:
    """State a neither declares a deadline nor handles a timer: refused only when required."""
    text = GOOD.replace('deadline = "late"\n', "", 1).replace(
        'on = ["done", "late"]', 'on = ["done"]'
    )
    text = text.replace('late = { kind = "timer" }\n', "")
    with pytest.raises(SpecError) as err:
        parse_machine("machines/toy.toml", text)
    assert str(err.value) == (
        "machines/toy.toml: machine 'toy', state 'a': no deadline edge: every live state of "
        "this machine needs a timer transition"
    )
    relaxed = text.replace("deadlines_required = true", "deadlines_required = false")
    assert not parse_machine("machines/toy.toml", relaxed).deadlines_required
