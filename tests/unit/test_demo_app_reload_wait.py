"""`demo-app reload` waits on the master's FIFO, and still finishes with a master that never writes it."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "include" / "demo_app" / "app"))
import control
from host_layout import HostLayout

TOKEN = "0123456789abcdef"


@pytest.fixture
def waiting(tmp_path):
    """A layout, the reload's FIFO open for reading as ``reload`` opens it, and a state writer."""
    layout = HostLayout(tmp_path)
    layout.ensure_shared_dirs()
    fifo = layout.reload_done_fifo(TOKEN)
    os.mkfifo(fifo, 0o600)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)

    def finish(after: float, *, notify: bool) -> threading.Thread:
        def master() -> None:
            time.sleep(after)
            state = {"worker": {"pid": 1, "version": "2.0.0"}, "host": "127.0.0.1", "port": 1}
            state["last_reload"] = {"token": TOKEN, "ok": True, "error": None}
            layout.state_file.write_text(json.dumps(state))
            if notify:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                os.write(writer, b"\n")
                os.close(writer)

        thread = threading.Thread(target=master)
        thread.start()
        return thread

    yield layout, reader, finish
    os.close(reader)


def test_a_master_that_writes_the_fifo_ends_the_wait(waiting, capsys, monkeypatch):
    layout, reader, finish = waiting
    # With no look in between until the timeout, only the FIFO can end the wait in success.
    monkeypatch.setattr(control, "RELOAD_POLL_SECONDS", 30.0)
    monkeypatch.setattr(control, "RELOAD_TIMEOUT_SECONDS", 5.0)
    master = finish(0.1, notify=True)

    assert control.await_reload(layout, os.getpid(), TOKEN, "releases/2.0.0", reader) == 0
    master.join()
    assert "demo-app reloaded: worker pid 1 serving version 2.0.0" in capsys.readouterr().out


def test_an_older_master_that_never_writes_it_is_still_read_in_turn(waiting, capsys):
    layout, reader, finish = waiting
    master = finish(0.1, notify=False)

    assert control.await_reload(layout, os.getpid(), TOKEN, "releases/2.0.0", reader) == 0
    master.join()
    assert "demo-app reloaded" in capsys.readouterr().out


def test_a_reload_the_master_never_finishes_fails_at_the_timeout_naming_the_log(waiting, monkeypatch):
    layout, reader, _ = waiting
    monkeypatch.setattr(control, "RELOAD_TIMEOUT_SECONDS", 0.6)

    with pytest.raises(control.ControlError, match=r"did not finish reloading to releases/2.0.0 within"):
        control.await_reload(layout, os.getpid(), TOKEN, "releases/2.0.0", reader)
