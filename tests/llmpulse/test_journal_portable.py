"""The client shim where :mod:`fcntl` does not exist (Windows): importing it and its
on-disk journal still work, with the journal directory's lock held by a pid file."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from llmpulse.harness import child_env

NO_FCNTL = textwrap.dedent('''
    import sys

    class _NoFcntl:
        """Makes ``import fcntl`` fail as it does on Windows."""
        def find_spec(self, name, path=None, target=None):
            if name == "fcntl":
                raise ImportError("No module named 'fcntl'")
            return None

    sys.modules.pop("fcntl", None)
    sys.meta_path.insert(0, _NoFcntl())
''')

SCRIPT = textwrap.dedent('''
    import os, subprocess, sys
    from pathlib import Path

    try:
        import fcntl  # noqa: F401
        raise SystemExit("fcntl is still importable")
    except ImportError:
        pass
    from llmpulse import Monitor
    from llmpulse.journal import Journal, erase_from_journal

    d, other = Path(sys.argv[1]), Path(sys.argv[2])
    j = Journal(d)
    assert j.append("llmpulse.inference", b"k", b'{"user":"a"}\\n{"user":"b"}', n_events=2)
    for attempt in (lambda: Journal(d), lambda: erase_from_journal(d, lambda line: True)):
        try:
            attempt()
            raise SystemExit("a second holder got the lock")
        except RuntimeError as exc:
            assert "in use" in str(exc), exc
    j.close()
    assert erase_from_journal(d, lambda line: b'"a"' in line) == 1
    j = Journal(d)
    assert [r.payload for r in iter(j.next_record, None)] == [b'{"user":"b"}']
    j.close()

    # a lock left by a process that died is taken over; one of a live process is not
    dead = subprocess.Popen([sys.executable, "-c", "pass"]); dead.wait()
    (d / "LOCK.pid").write_text(str(dead.pid))
    Journal(d).close()
    (d / "LOCK.pid").write_text(str(os.getppid()))
    try:
        Journal(d)
        raise SystemExit("took the lock of a live process")
    except RuntimeError:
        pass

    mon = Monitor(app="a", bootstrap="127.0.0.1:9", journal_dir=other)
    mon.close(timeout=0.1)
    print("ok")
''')


def test_shim_and_journal_without_fcntl(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", NO_FCNTL + SCRIPT, str(tmp_path / "j"),
                        str(tmp_path / "mon")], env=child_env(tmp_path), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), (r.stdout, r.stderr)
