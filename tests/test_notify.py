"""The daemon under a service manager, without one: the sd_notify datagrams it sends
(READY=1, STATUS= with the health as it changes, STOPPING=1) read from a socket this
test names in NOTIFY_SOCKET, and its exit status when told to stop by a signal
(docs/runbook.md, "Installation"; tests/systemd/ does the same under a real systemd).
"""

import os
import signal
import socket
import subprocess
import time

import pytest

from storelib import (  # noqa: F401  (fuse_ok, mnt_base, signer, trust are fixtures)
    FS, fuse_ok, import_ok, is_mounted, mnt_base, pack_kit, signer, trust, version_tree)


@pytest.fixture
def store2(tmp_path, signer, trust):
    """A store with v1 (current) and v2 imported."""
    s = tmp_path / "store"
    for seq, v in ((1, "v1"), (2, "v2")):
        kit = pack_kit(version_tree(tmp_path / f"tree-{v}", v), tmp_path / f"{v}.tar", signer, v, seq)
        import_ok(s, trust, kit, *(["--activate"] if v == "v1" else []))
    return s


class Notify:
    """An AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []

    def wait_for(self, pred, what, since=0, timeout=15):
        """The first message from index SINCE on that satisfies PRED."""
        deadline = time.monotonic() + timeout
        for m in self.messages[since:]:
            if pred(m):
                return m
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                m = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            self.messages.append(m)
            if pred(m):
                return m
        raise AssertionError(f"no notify message {what} within {timeout}s; got {self.messages}")

    def statuses(self):
        return [line[7:] for m in self.messages for line in m.splitlines() if line.startswith("STATUS=")]

    def close(self):
        self.sock.close()


def end_foreground(p, mnt):
    """Whatever a test left: the daemon killed, the mount gone, the mount point removed."""
    if p.poll() is None:
        p.kill()
        p.wait(timeout=10)
    if is_mounted(mnt):
        subprocess.run(["umount", "-l", str(mnt)], timeout=30)
    mnt.rmdir()


def control(mnt, cmd):
    with open(os.path.join(mnt, "control"), "w") as f:
        f.write(cmd + "\n")


def test_status_follows_health_and_sigterm_exits_0(fuse_ok, mnt_base, tmp_path, store2, trust):
    mnt = mnt_base / f"notify-{os.getpid()}"
    mnt.mkdir(exist_ok=True)
    n = Notify(tmp_path / "notify.sock")
    env = dict(os.environ, NOTIFY_SOCKET=n.path)
    p = subprocess.Popen([str(FS), "-f", "-o", f"trust={trust}", str(store2), str(mnt)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        n.wait_for(lambda m: "READY=1" in m.splitlines(), "READY=1")
        first = n.wait_for(lambda m: "STATUS=" in m, "STATUS=")
        assert "STATUS=HEALTHY" in first and "current v1" in first, n.messages
        control(mnt, "activate v2")
        n.wait_for(lambda m: "current v2" in m, "STATUS= naming v2 after activate")
        seen = len(n.messages)
        control(mnt, "rollback")
        n.wait_for(lambda m: "current v1" in m, "STATUS= naming v1 after rollback", since=seen)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
        # systemctl stop sends SIGTERM: a planned stop is not a failure
        assert p.returncode == 0, f"stellafs -f exited {p.returncode} on SIGTERM; output:\n{out}"
        n.wait_for(lambda m: "STOPPING=1" in m.splitlines(), "STOPPING=1")
        assert not is_mounted(mnt)
    finally:
        n.close()
        end_foreground(p, mnt)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_other_stop_signals_exit_0(fuse_ok, mnt_base, store2, trust, sig):
    mnt = mnt_base / f"notify-sig-{os.getpid()}"
    mnt.mkdir(exist_ok=True)
    p = subprocess.Popen([str(FS), "-f", "-o", f"trust={trust}", str(store2), str(mnt)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while not is_mounted(mnt) and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert is_mounted(mnt), "stellafs -f did not mount"
        p.send_signal(sig)
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0, f"exit {p.returncode} on {sig.name}:\n{out}"
        assert not is_mounted(mnt)
    finally:
        end_foreground(p, mnt)
