"""The json-file log (jsonlog.py) and docker's human times (ages.py): what other tools read back."""

from __future__ import annotations

import json
import re
import threading

import pytest

from imagetool import ages, jsonlog


def _written(path) -> list[tuple[str, str]]:
    return [(d["stream"], d["log"]) for d in map(json.loads, path.read_text().splitlines())]


def test_output_is_cut_at_newlines_and_an_unfinished_line_is_kept_until_it_ends(tmp_path):
    w = jsonlog.Writer(tmp_path / "log")
    w.write("stdout", b"a\nb")
    w.write("stderr", b"e1\n")
    w.write("stdout", b"c\nd")
    w.close()   # "d" had no newline: written as it is
    assert _written(tmp_path / "log") == [("stdout", "a\n"), ("stderr", "e1\n"), ("stdout", "bc\n"),
                                          ("stdout", "d")]


def test_every_entry_has_docker_fields_and_nanosecond_utc_time(tmp_path):
    w = jsonlog.Writer(tmp_path / "log")
    w.write("stdout", "é\n".encode() + b"\xff\n")
    w.close()
    docs = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert [set(d) for d in docs] == [{"log", "stream", "time"}] * 2
    assert [d["log"] for d in docs] == ["é\n", "\ufffd\n"]   # bytes that are not UTF-8 are replaced
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", d["time"]) for d in docs)


def test_a_line_without_end_is_cut_so_memory_stays_bounded(tmp_path):
    w = jsonlog.Writer(tmp_path / "log")
    w.write("stdout", b"x" * (jsonlog.MAX_LINE * 2 + 5))
    assert len(w._partial["stdout"]) == 5
    w.close()
    assert [len(log) for _, log in _written(tmp_path / "log")] == [jsonlog.MAX_LINE, jsonlog.MAX_LINE, 5]


def test_a_second_writer_appends(tmp_path):
    for text in (b"first\n", b"second\n"):
        w = jsonlog.Writer(tmp_path / "log")
        w.write("stdout", text)
        w.close()
    assert [log for _, log in _written(tmp_path / "log")] == ["first\n", "second\n"]


@pytest.mark.parametrize("tail, expected", [(None, ["1\n", "2\n", "3\n"]), (2, ["2\n", "3\n"]), (0, []),
                                            (10, ["1\n", "2\n", "3\n"])])
def test_tail(tmp_path, tail, expected):
    w = jsonlog.Writer(tmp_path / "log")
    w.write("stdout", b"1\n2\n3\n")
    w.close()
    assert [e["log"] for e in jsonlog.entries(tmp_path / "log", tail=tail)] == expected


def test_torn_and_foreign_lines_are_skipped(tmp_path):
    path = tmp_path / "log"
    path.write_text('{"log": "ok\\n", "stream": "stdout", "time": "t"}\nnot json\n'
                    '{"log": 1, "stream": "stdout"}\n{"log": "x", "stream": "stdin"}\n{"log": "torn')
    assert [e["log"] for e in jsonlog.entries(path)] == ["ok\n"]


def test_a_missing_log_is_empty(tmp_path):
    assert list(jsonlog.entries(tmp_path / "nothing")) == []


def test_follow_returns_what_is_written_until_the_writer_is_done(tmp_path):
    path = tmp_path / "log"
    w = jsonlog.Writer(path)
    w.write("stdout", b"before\n")
    finished = threading.Event()

    def write_more():
        for n in range(3):
            w.write("stderr", f"more {n}\n".encode())
        w.close()
        finished.set()

    seen = []
    for e in jsonlog.entries(path, follow=True, done=finished.is_set, poll=0.01):
        seen.append(e["log"])
        if len(seen) == 1:
            threading.Thread(target=write_more).start()
    assert seen == ["before\n", "more 0\n", "more 1\n", "more 2\n"]


STATUS = [
    ({"status": "running", "started_at": "2026-01-01T00:00:00.5Z"}, 3.2, "Up 3 seconds"),
    ({"status": "running", "started_at": "2026-01-01T00:00:00Z"}, 0.4, "Up Less than a second"),
    ({"status": "running", "started_at": "2026-01-01T00:00:00Z"}, 90, "Up About a minute"),
    ({"status": "exited", "exit_code": 143, "finished_at": "2026-01-01T00:00:00Z"}, 2, "Exited (143) 2 seconds ago"),
    ({"status": "exited", "exit_code": 0, "finished_at": "2026-01-01T00:00:00Z"}, 3 * 3600, "Exited (0) 3 hours ago"),
    ({"status": "exited", "exit_code": 1, "finished": "2026-01-01T00:00:00Z"}, 60 * 5, "Exited (1) 5 minutes ago"),
    ({"status": "exited", "exit_code": None}, 1, "Exited (137)"),
    ({"status": "created"}, 1, "Created"),
]


@pytest.mark.parametrize("state, after, text", STATUS, ids=[t for _, _, t in STATUS])
def test_ps_status_reads_as_dockers(state, after, text):
    t0 = ages._epoch("2026-01-01T00:00:00Z")
    assert ages.status_text(state, now=t0 + after) == text


@pytest.mark.parametrize("seconds, text", [(1, "1 second"), (59, "59 seconds"), (60, "About a minute"),
                                           (150, "2 minutes"), (3600, "About an hour"), (5 * 86400, "5 days")])
def test_human_duration(seconds, text):
    assert ages.human_duration(seconds) == text


# ---------------------------------------------------------------- rotation (--log-opt max-size, max-file)


def _numbers(path, **kw) -> list[int]:
    return [int(e["log"]) for e in jsonlog.entries(path, **kw)]


def _count_to(path, count: int, options: jsonlog.LogOptions) -> None:
    """Write the numbers below `count`, one entry each, through a rotating Writer."""
    w = jsonlog.Writer(path, options)
    for n in range(count):
        w.write("stdout", f"{n}\n".encode())
    w.close()


def test_rotation_keeps_at_most_max_file_files_of_about_max_size(tmp_path):
    path = tmp_path / "container.log"
    _count_to(path, 5000, jsonlog.LogOptions(max_size=4000, max_file=3))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["container.log", "container.log.1", "container.log.2"]
    assert all((tmp_path / f).stat().st_size <= 4000 for f in files)
    kept = _numbers(path)
    assert kept == list(range(kept[0], 5000)) and len(kept) > 50   # the newest, in order, no gap


def test_max_file_1_starts_the_file_again(tmp_path):
    path = tmp_path / "container.log"
    _count_to(path, 1000, jsonlog.LogOptions(max_size=2000, max_file=1))
    assert [p.name for p in tmp_path.iterdir()] == ["container.log"] and path.stat().st_size <= 2000
    assert _numbers(path)[-1] == 999


def test_follow_goes_on_across_a_rotation(tmp_path):
    path = tmp_path / "container.log"
    w = jsonlog.Writer(path, jsonlog.LogOptions(max_size=300, max_file=2))
    w.write("stdout", b"0\n")
    seen, n = [], 0
    for e in jsonlog.entries(path, follow=True, done=lambda: n >= 40, poll=0.001):
        seen.append(int(e["log"]))
        while n < 40 and len(seen) > n:   # write the next entries once the previous ones were read
            n += 1
            w.write("stdout", f"{n}\n".encode())   # rotates every few entries
    w.close()
    assert seen == list(range(41))


@pytest.mark.parametrize("opts, text", [(["max-size=0"], "must be positive"), (["max-size=lots"], "invalid max-size"),
                                        (["max-file=3"], "needs max-size"), (["max-file=0", "max-size=1m"], "at least 1"),
                                        (["mode=non-blocking"], "invalid --log-opt"), (["max-size"], "invalid --log-opt")])
def test_bad_log_options(opts, text):
    from imagetool.errors import ImagetoolError

    with pytest.raises(ImagetoolError, match=text):
        jsonlog.LogOptions.parse(opts)


def test_log_options_parse():
    assert jsonlog.LogOptions.parse(["max-size=1m", "max-file=3"]) == jsonlog.LogOptions(1 << 20, 3)
    assert jsonlog.LogOptions.parse([]) == jsonlog.LogOptions(None, 1)
