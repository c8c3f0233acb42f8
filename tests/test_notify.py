"""The daemon under a service manager, without one: the sd_notify datagrams it sends
(READY=1, STATUS= with the health as it changes, STOPPING=1) read from a socket this
test names in NOTIFY_SOCKET, and its exit status when told to stop by a signal
(docs/runbook.md, "Installation"; tests/systemd/ does the same under a real systemd).
"""

import os
import shutil
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


def stops_default():
    """In the daemon's child before exec: the stop signals at their default action, as
    a service manager starts it.  A harness that ignores one (a shell's background job
    ignores SIGINT) would hand that on, and the daemon keeps such a signal ignored."""
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


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
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=stops_default)
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
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=stops_default)
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


@pytest.mark.parametrize("delay", [0.0, 0.002, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4])
def test_a_stop_signal_at_any_moment_of_a_start_ends_the_daemon(fuse_ok, mnt_base, store2, trust, delay):
    """SIGTERM sent DELAY after the start, whatever the daemon is doing then (parsing,
    opening the store, mounting, starting its threads, entering its loop): it ends within
    a bound, and nothing stays mounted.  Before anything is mounted it dies by the signal
    as a process without handlers would; once mounted it unmounts and exits 0.  (A signal
    that landed as libfuse's loop began to wait was once lost, and the daemon served on.)"""
    mnt = mnt_base / f"notify-early-{os.getpid()}"
    mnt.mkdir(exist_ok=True)
    p = subprocess.Popen([str(FS), "-f", "-o", f"trust={trust}", str(store2), str(mnt)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=stops_default)
    try:
        time.sleep(delay)
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
        assert p.returncode in (0, -signal.SIGTERM), f"exit {p.returncode}:\n{out}"
        assert not is_mounted(mnt)
    finally:
        end_foreground(p, mnt)


def test_ctrl_c_while_the_kit_cannot_be_fetched_ends_at_once(fuse_ok, mnt_base, trust):
    """A foreground mount of a kit on a mirror that hangs (timeout=60): Ctrl-C ends the
    wait at once, nothing mounted, as it would any command."""
    import serverlib
    mnt = mnt_base / f"notify-hang-{os.getpid()}"
    mnt.mkdir(exist_ok=True)
    with serverlib.FaultServer({"/kit.tar": b"\0" * 65536}) as fs:
        fs.hang = 60.0
        p = subprocess.Popen([str(FS), "-f", "-o", f"trust={trust},timeout=60,cache={mnt_base}/hang-cache",
                              fs.url("kit.tar"), str(mnt)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=stops_default)
        try:
            deadline = time.monotonic() + 15
            while fs.count == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert fs.count > 0, "the daemon never asked the mirror"
            t0 = time.monotonic()
            p.send_signal(signal.SIGINT)
            out, _ = p.communicate(timeout=20)
            assert time.monotonic() - t0 < 5, out
            assert p.returncode == -signal.SIGINT, f"exit {p.returncode}:\n{out}"
            assert not is_mounted(mnt)
        finally:
            end_foreground(p, mnt)
            shutil.rmtree(f"{mnt_base}/hang-cache", ignore_errors=True)


def test_sigterm_to_a_background_daemon_unmounts(fuse_ok, mnt_base, store2, trust):
    """Without -f the daemon detaches (a fork): the process that serves takes SIGTERM
    as the foreground one does, unmounts and ends."""
    from storelib import daemon_pids
    mnt = mnt_base / f"notify-bg-{os.getpid()}"
    mnt.mkdir(exist_ok=True)
    try:
        cp = subprocess.run([str(FS), "-o", f"trust={trust}", str(store2), str(mnt)],
                            capture_output=True, text=True, timeout=60, preexec_fn=stops_default)
        assert cp.returncode == 0, cp.stderr
        assert is_mounted(mnt)
        pids = daemon_pids(mnt)
        assert len(pids) == 1, pids
        os.kill(pids[0], signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (os.path.exists(f"/proc/{pids[0]}") or is_mounted(mnt)):
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pids[0]}"), "the daemon did not end on SIGTERM"
        assert not is_mounted(mnt)
    finally:
        for pid in daemon_pids(mnt):
            os.kill(pid, signal.SIGKILL)
        if is_mounted(mnt):
            subprocess.run(["umount", "-l", str(mnt)], timeout=30)
        mnt.rmdir()


def test_an_ignored_hangup_stays_ignored(fuse_ok, mnt_base, store2, trust):
    """Started under nohup (SIGHUP ignored): a hang-up leaves the daemon serving, as with
    libfuse's own handlers; SIGTERM still stops it."""
    mnt = mnt_base / f"notify-nohup-{os.getpid()}"
    mnt.mkdir(exist_ok=True)

    def nohup():
        stops_default()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    p = subprocess.Popen([str(FS), "-f", "-o", f"trust={trust}", str(store2), str(mnt)], preexec_fn=nohup,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        while not is_mounted(mnt) and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert is_mounted(mnt), "stellafs -f did not mount"
        p.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert p.poll() is None and is_mounted(mnt), "SIGHUP under nohup stopped the daemon"
        assert "current" in (mnt / "status").read_text()
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0, f"exit {p.returncode}:\n{out}"
        assert not is_mounted(mnt)
    finally:
        end_foreground(p, mnt)
