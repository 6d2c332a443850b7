"""tmux output parsing and command lines: pane listing, quoting, respawn argv."""

from __future__ import annotations

import pytest

from fleetd import tmux


def row(
    tag: str,
    pane_id: str,
    pid: str = "100",
    dead: str = "0",
    status: str = "",
    signal: str = "",
    dtime: str = "",
    activity: str = "1764060012",
    session: str = "fleet",
    cmd: str = "node",
) -> str:
    return "\t".join([tag, pane_id, pid, dead, status, signal, dtime, activity, session, cmd])


def test_format_has_the_free_text_field_last() -> None:
    fields = tmux.PANE_FORMAT.split(tmux.FIELD_SEP)
    assert len(fields) == 10
    assert fields[0] == "#{@fleetd_agent}"
    assert fields[-1] == "#{pane_current_command}"
    assert tmux.list_panes("fleetd") == [
        *tmux.base("fleetd"),
        "list-panes",
        "-a",
        "-F",
        tmux.PANE_FORMAT,
    ]


def test_base_selects_private_socket_and_utf8() -> None:
    base = tmux.base("fleetd")
    assert base[0] == "tmux"
    assert base[base.index("-L") + 1] == "fleetd"
    # Without -u a non-UTF-8 locale makes tmux print the -F tabs as '_'.
    assert "-u" in base


def test_parse_real_looking_output() -> None:
    text = "\n".join(
        [
            row("coder", "%3", "4242", cmd="claude"),
            row("", "%0", "999", cmd="bash"),  # an operator's own pane: untagged
            row("reviewer", "%5", "4300", "1", "2", "", "1764060100", cmd="pi"),
            row("killed", "%6", "4301", "1", "", "9", "1764060101"),
            row("tabby", "%7", "4302", cmd="weird\tname\twith tabs"),
            "",
        ]
    )
    got = tmux.parse_panes(text + "\n")
    assert got.server_running is True
    assert got.bad_lines == 0
    assert got.duplicates == ()
    assert set(got.panes) == {"coder", "reviewer", "killed", "tabby"}

    coder = got.panes["coder"]
    assert (coder.pane_id, coder.pid, coder.dead) == ("%3", 4242, False)
    assert (coder.dead_status, coder.dead_signal, coder.dead_time) == (None, None, None)
    assert coder.activity == 1764060012.0
    assert (coder.session, coder.current_command) == ("fleet", "claude")

    reviewer = got.panes["reviewer"]
    assert reviewer.dead is True
    assert (reviewer.dead_status, reviewer.dead_signal) == (2, None)
    assert reviewer.dead_time == 1764060100.0

    killed = got.panes["killed"]
    assert (killed.dead, killed.dead_status, killed.dead_signal) == (True, None, 9)

    tabby = got.panes["tabby"]
    assert tabby.current_command == "weird\tname\twith tabs"
    assert (tabby.session, tabby.pid) == ("fleet", 4302)


def test_malformed_lines_are_counted_not_guessed() -> None:
    text = "\n".join(
        [
            row("good", "%1"),
            "coder\t%2\t100",  # too few fields
            "just some text",
            row("badpid", "%3", pid="abc"),
            row("badid", "3"),  # pane id without '%'
            row("baddead", "%4", dead="yes"),
        ]
    )
    got = tmux.parse_panes(text)
    assert set(got.panes) == {"good"}
    assert got.bad_lines == 5


def test_duplicate_tags_keep_lowest_pane_id_and_are_reported() -> None:
    # %10 > %9 numerically, not as strings: the comparison must be numeric.
    text = "\n".join(
        [
            row("coder", "%10", "1010"),
            row("coder", "%9", "909"),
            row("coder", "%11", "1111"),
            row("other", "%2", "202"),
        ]
    )
    got = tmux.parse_panes(text)
    assert got.panes["coder"].pane_id == "%9"
    assert got.panes["coder"].pid == 909
    assert got.duplicates == ("coder", "coder")
    assert got.panes["other"].pane_id == "%2"


def test_empty_output() -> None:
    got = tmux.parse_panes("")
    assert (got.panes, got.bad_lines, got.duplicates) == ({}, 0, ())


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("echo;", "echo\\;"),
        (";", "\\;"),
        ("a;b", "a;b"),  # only a trailing ';' separates commands
        ("plain", "plain"),
        ("", ""),
        ("x\\;", "x\\\\;"),
        ("#(id)", "#(id)"),  # arguments are not format-expanded
    ],
)
def test_arg(value: str, expected: str) -> None:
    assert tmux.arg(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("#(touch /tmp/pwned)", "##(touch /tmp/pwned)"),
        ("/srv/#{pane_pid}", "/srv/##{pane_pid}"),
        ("##", "####"),
        ("dir;", "dir\\;"),
        ("#;", "##\\;"),
        ("/home/dev/work", "/home/dev/work"),
    ],
)
def test_literal(value: str, expected: str) -> None:
    assert tmux.literal(value) == expected


def test_respawn_argv() -> None:
    argv = tmux.respawn(
        "fleetd",
        "%7",
        ["claude", "--model", "m;", "--print", "#{pane_pid}"],
        "/srv/#(id)/work;",
        {"FLEETD_AGENT": "coder", "TRAIL": "v;"},
    )
    assert argv == [
        *tmux.base("fleetd"),
        "clear-history",
        "-t",
        "%7",
        ";",
        "respawn-pane",
        "-k",
        "-t",
        "%7",
        "-c",
        "/srv/##(id)/work\\;",
        "-e",
        "FLEETD_AGENT=coder",
        "-e",
        "TRAIL=v\\;",
        "claude",
        "--model",
        "m\\;",
        "--print",
        "#{pane_pid}",
        ";",
        "display-message",
        "-p",
        "-t",
        "%7",
        "#{pane_pid}",
    ]


def test_respawn_single_argument_execs_without_the_users_shell() -> None:
    argv = tmux.respawn("s", "%1", ["/usr/bin/agent;"], "/w", {})
    start = argv.index("/w") + 1
    end = len(argv) - 6
    assert argv[start:end] == ["/bin/sh", "-c", 'exec "$0"', "/usr/bin/agent\\;"]
    assert argv[end:] == [";", "display-message", "-p", "-t", "%1", "#{pane_pid}"]


def test_other_command_lines_quote_names() -> None:
    window = tmux.new_window("s", "fleet", "w#1")
    assert window[window.index("-n") + 1] == "w##1"
    tag = tmux.tag_pane("s", "%3", "coder")
    assert tag[tag.index("@fleetd_agent") + 1] == "coder"
    assert tmux.capture("s", "%3", 200)[-2:] == ["-S", "-200"]


def test_no_server_and_last_lines() -> None:
    assert tmux.is_no_server("no server running on /tmp/tmux-0/fleetd")
    assert tmux.is_no_server("error connecting to /tmp/tmux-0/fleetd (No such file or directory)")
    assert not tmux.is_no_server("can't find pane: %9")
    assert tmux.last_lines("a\nb\nc\n\n  \n", 2) == "b\nc"


def test_last_lines_drops_tmux_dead_pane_notice() -> None:
    text = "step 1\nstep 2\nboom\n\nPane is dead (status 3, Wed Nov 25 09:52:09 2026)\n\n"
    assert tmux.last_lines(text, 2) == "step 2\nboom"
    assert tmux.last_lines("Pane is dead\n", 5) == ""
