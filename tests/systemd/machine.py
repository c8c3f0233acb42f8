"""A Debian 12 container booted with `systemd-nspawn -b`, driven from outside.

The tree from scripts/systemd-tree.sh stays untouched: each run boots an overlay
(lower: the cached tree, upper: a directory of this run) into which the build is
installed with `meson install --destdir`, as docs/runbook.md says.  There is no
systemd on the host (so no machined: no `systemd-run --machine`, no `machinectl
shell`): commands run in the container's namespaces with nsenter(1), and start
services through the container's own systemctl.

Network: --private-network (only a loopback of its own).  /sys is writable
(SYSTEMD_NSPAWN_API_VFS_WRITABLE) so that udevd and device units work as on a
real host; units that would change the host's kernel from there (sysctl,
binfmt, modules, the coldplug trigger of every device) are masked in the tree.
Everything the run made is undone by stop(), also after a failure.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

MASKED = ("systemd-sysctl.service", "systemd-binfmt.service", "systemd-modules-load.service",
          "systemd-udev-trigger.service", "systemd-udev-settle.service", "apt-daily.timer",
          "apt-daily-upgrade.timer", "e2scrub_all.timer", "man-db.timer", "dpkg-db-backup.timer",
          "systemd-tmpfiles-clean.timer", "fstrim.timer")


class Machine:
    def __init__(self, run_dir: Path, tree: Path, name: str):
        self.run = Path(run_dir)
        self.tree = Path(tree)
        self.name = name
        self.root = self.run / "root"
        self.proc = None
        self.leader = None
        self.loops: list[str] = []
        self.console = self.run / "console.log"

    # ------------------------------------------------------------------ setup
    def overlay(self):
        for d in ("upper", "work", "root"):
            (self.run / d).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.tree},upperdir={self.run}/upper,workdir={self.run}/work",
                        str(self.root)], check=True, timeout=60)

    def mask(self, *units):
        d = self.root / "etc/systemd/system"
        d.mkdir(parents=True, exist_ok=True)
        for u in units:
            p = d / u
            if p.exists() or p.is_symlink():
                p.unlink()
            p.symlink_to("/dev/null")

    def boot(self, timeout=90):
        env = dict(os.environ, SYSTEMD_NSPAWN_API_VFS_WRITABLE="yes")
        cmd = ["systemd-nspawn", "-q", "-D", str(self.root), "-M", self.name, "-b",
               "--private-network", "--register=no", "--keep-unit", "--console=passive",
               "--bind=/dev/fuse", "--resolv-conf=off", "--timezone=off", "--link-journal=no"]
        with open(self.console, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.proc.returncode}:\n{self.log_tail()}")
            kids = _children(self.proc.pid)
            if kids:
                self.leader = kids[0]
                r = self.sh("systemctl is-system-running --wait", timeout=max(1, deadline - time.monotonic()),
                            check=False)
                state = r.stdout.strip()
                if state in ("running", "degraded"):
                    return state
                # "offline": its systemd does not answer yet
                if state in ("maintenance", "stopping"):
                    raise RuntimeError(f"the container's boot ended in {state!r}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"the container did not finish booting in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n=40):
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no console log)"

    # ------------------------------------------------------------------ driving
    def run_cmd(self, argv, timeout=60, check=True, input=None):
        """ARGV in the container (every namespace of its PID 1, its root)."""
        assert self.leader, "not booted"
        cp = subprocess.run(["nsenter", "-t", str(self.leader), "-m", "-u", "-i", "-n", "-p", "-r", "-w",
                             "--", *argv], capture_output=True, text=True, errors="replace",
                            timeout=timeout, input=input,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                                 "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})
        if check and cp.returncode != 0:
            raise AssertionError(f"in the container: {shlex.join(argv)} exited {cp.returncode}\n"
                                 f"stdout: {cp.stdout}\nstderr: {cp.stderr}")
        return cp

    def sh(self, script, timeout=60, check=True):
        return self.run_cmd(["/bin/sh", "-c", script], timeout=timeout, check=check)

    def show(self, unit, *props) -> dict:
        out = self.run_cmd(["systemctl", "show", unit, *(f"-p{p}" for p in props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def wait(self, what, pred, timeout=30, interval=0.2):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = pred()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")

    def journal(self, unit, lines=40):
        return self.run_cmd(["journalctl", "--no-pager", "-n", str(lines), "-u", unit], check=False).stdout

    def attach(self, image: Path) -> str:
        """A loop device for IMAGE on the host, with its node in the container's /dev."""
        dev = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True,
                             check=True, timeout=60).stdout.strip()
        self.loops.append(dev)
        minor = os.minor(os.stat(dev).st_rdev)
        self.sh(f"test -b {dev} || mknod {dev} b 7 {minor}")
        return dev

    # ------------------------------------------------------------------ teardown
    def stop(self):
        errs = []
        if self.proc is not None and self.proc.poll() is None:
            if self.leader:
                self.sh("systemctl poweroff --no-block", check=False, timeout=20)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                errs.append("the container did not power off in 30 s: killed")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        errs += cleanup(self.run, self.name, self.loops)
        return errs


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def machine_name(run: Path) -> str:
    """The container's name, from its run directory: cleanup_all() finds it again."""
    return "stellatest-" + Path(run).name.rsplit(".", 1)[-1]


def cleanup_all(run):
    """After a run that may have died anywhere (scripts/test.sh calls this): kill the
    systemd-nspawn booting RUN/root with its container, then cleanup()."""
    run = Path(run)
    root = str(run / "root")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"systemd-nspawn") and root.encode() in argv:
            # the container's PID 1 first: its pid namespace dies with it
            for kid in _children(int(pid)):
                try:
                    os.kill(kid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                os.killpg(int(pid), signal.SIGKILL)
            except OSError:
                os.kill(int(pid), signal.SIGKILL)
            for _ in range(100):
                if not os.path.exists(f"/proc/{pid}"):
                    break
                time.sleep(0.1)
    errs = cleanup(run, machine_name(run))
    with open("/proc/self/mountinfo") as f:
        left = [ln.split()[4] for ln in f if ln.split()[4].startswith(str(run))]
    if left:
        errs.append(f"still mounted: {left}")
    return errs


def cleanup(run: Path, name: str, loops=()):
    """Undo what a run left, whatever state it is in: the container's processes,
    loop devices backed by files under RUN, mounts under RUN, nspawn's state."""
    errs = []
    run = Path(run)
    # nspawn refuses to remove this directory itself when /run is not a tmpfs
    subprocess.run(["rm", "-rf", f"/run/systemd/nspawn/propagate/{name}",
                    f"/run/systemd/nspawn/unix-export/{name}"], timeout=60)
    out = subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=60).stdout
    for line in out.splitlines():
        dev = line.split(":", 1)[0]
        if str(run) in line or dev in loops:
            if subprocess.run(["losetup", "-d", dev], timeout=60).returncode != 0:
                errs.append(f"losetup -d {dev} failed")
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            p = line.split()[4].replace("\\040", " ")
            if p == str(run) or p.startswith(str(run) + "/"):
                mounts.append(p)
    for p in sorted(mounts, key=len, reverse=True):
        if subprocess.run(["umount", p], timeout=60).returncode != 0:
            subprocess.run(["umount", "-l", p], timeout=60)
    return errs
