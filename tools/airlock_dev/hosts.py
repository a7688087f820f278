"""Real hosts on loopback for the demo and the tests: one OpenSSH ``sshd`` per host.

Each host gets its own generated host key, its own port and its own root directory; one
generated client key is authorised on all of them, and a known_hosts file lists exactly their
host keys. Nothing is mocked: Airlock's SSH code talks to these the way it talks to production.
The sandbox is a development tool (``make demo``, ``tests/``); DAGs never import it.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from airlock.config import Environment, Host

SSHD = Path("/usr/sbin/sshd")
PRIVILEGE_SEPARATION_DIR = Path("/run/sshd")

SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
Subsystem sftp internal-sftp
LogLevel ERROR
# The host's own home: the session's shell reads its startup files from here, not from this
# machine's account (bash run by sshd sources ~/.bashrc even for a plain command, and a
# developer's .bashrc, e.g. `pyenv init`, costs every command 150 ms of CPU).
SetEnv HOME={home}
"""


class SandboxError(RuntimeError):
    """The sandbox could not start: a missing sshd, a busy port, a failed key generation."""


def port_is_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


#: Where :func:`free_port` picks from: below Linux's ephemeral range (32768-60999), so that no
#: outgoing connection (an SSH client, a health poll) takes the port between its choice and the
#: bind of the server it is for. A 48-host stack lost that race with ports of the ephemeral range.
FREE_PORTS = range(20000, 32768)
_handed_out: set[int] = set()


def free_port(address: str = "127.0.0.1") -> int:
    """A port nothing listens on and this process has not handed out before."""
    for _ in range(1000):
        port = random.choice(FREE_PORTS)  # noqa: S311  (a port, not a secret)
        if port not in _handed_out and port_is_free(address, port):
            _handed_out.add(port)
            return port
    raise SandboxError(f"no free port in {FREE_PORTS.start}-{FREE_PORTS.stop - 1} on {address}")


def wait_for_port(address: str, port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def _generate_key(path: Path, comment: str) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


@dataclass
class SandboxHost:
    """One sandbox host: an sshd process and the directory that stands for its disk."""

    host: Host
    root: Path
    home: Path
    process: subprocess.Popen | None = None

    @property
    def host_key(self) -> Path:
        return self.home / "ssh_host_ed25519_key"

    @property
    def login_home(self) -> Path:
        """The home directory of the host's login sessions (empty: no shell startup files)."""
        return self.home / "home"

    @property
    def app_port(self) -> int:
        return urlsplit(self.host.app_url).port or 80

    def known_hosts_line(self) -> str:
        key_type, key_data = self.host_key.with_suffix(".pub").read_text().split()[:2]
        entry = (
            self.host.address if self.host.ssh_port == 22 else f"[{self.host.address}]:{self.host.ssh_port}"
        )
        return f"{entry} {key_type} {key_data}"


@dataclass
class Sandbox:
    """
    Start and stop sandbox hosts for an environment whose hosts all live on loopback.

    :param environment: the environment whose hosts to start (each needs its own ``root``).
    :param directory: where keys, sshd configs and logs go (host roots come from the environment).
    :param app_settings: extra ``KEY=VALUE`` lines for each host's ``shared/app.env``
        (the demo app reads its port, database URL and interpreter from there).
    """

    environment: Environment
    directory: Path
    app_settings: dict[str, str] = field(default_factory=dict)
    hosts: list[SandboxHost] = field(default_factory=list)

    @property
    def client_key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.environment.ssh.known_hosts

    def ssh_connection_uri(self) -> dict[str, object]:
        """The ``airlock_ssh`` connection (as JSON for ``AIRFLOW_CONN_*``) that reaches every host."""
        import getpass

        return {"conn_type": "ssh", "login": getpass.getuser(), "extra": {"key_file": str(self.client_key)}}

    def start(self) -> None:
        if not SSHD.exists():
            raise SandboxError(f"{SSHD} is missing: install it with `apt-get install -y openssh-server`")
        for host in self.environment.hosts:
            if not host.address.startswith("127."):
                raise SandboxError(f"sandbox host {host.name} must be on loopback, not {host.address}")
            if host.root is None:
                raise SandboxError(f"sandbox host {host.name} needs its own root in the environment file")
        busy = [h for h in self.environment.hosts if not port_is_free(h.address, h.ssh_port)]
        if busy:
            names = ", ".join(f"{h.name} ({h.ssh_target})" for h in busy)
            raise SandboxError(f"port in use for sandbox host {names}: stop whatever listens there first")

        PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, exist_ok=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        _generate_key(self.client_key, "airlock-sandbox-client")
        authorized_keys = self.directory / "authorized_keys"
        authorized_keys.write_text(self.client_key.with_suffix(".pub").read_text())

        self.hosts = []
        for host in self.environment.hosts:
            sandbox_host = SandboxHost(
                host=host, root=Path(host.root), home=self.directory / "hosts" / host.name
            )
            _generate_key(sandbox_host.host_key, f"airlock-sandbox-{host.name}")
            sandbox_host.login_home.mkdir(mode=0o700, exist_ok=True)
            self._provision(sandbox_host)
            config = sandbox_host.home / "sshd_config"
            config.write_text(
                SSHD_CONFIG.format(
                    address=host.address,
                    port=host.ssh_port,
                    host_key=sandbox_host.host_key,
                    pid_file=sandbox_host.home / "sshd.pid",
                    authorized_keys=authorized_keys,
                    home=sandbox_host.login_home,
                )
            )
            log = (sandbox_host.home / "sshd.log").open("ab")
            sandbox_host.process = subprocess.Popen(
                [str(SSHD), "-f", str(config), "-D", "-e"],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            log.close()
            self.hosts.append(sandbox_host)

        for sandbox_host in self.hosts:
            host = sandbox_host.host
            if not wait_for_port(host.address, host.ssh_port):
                log_tail = (sandbox_host.home / "sshd.log").read_text()[-500:]
                self.stop()
                raise SandboxError(f"sshd for {host.name} did not listen on {host.ssh_target}: {log_tail}")

        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        self.known_hosts.write_text("".join(h.known_hosts_line() + "\n" for h in self.hosts))

    def _provision(self, sandbox_host: SandboxHost) -> None:
        """Lay out the host's directories and its ``shared/app.env``, as a provisioning tool would."""
        shared = sandbox_host.root / "shared"
        for directory in (sandbox_host.root / "releases", shared / "log", shared / "run"):
            directory.mkdir(parents=True, exist_ok=True)
        settings = {"PORT": str(sandbox_host.app_port), "HOST": "127.0.0.1", **self.app_settings}
        (shared / "app.env").write_text("".join(f"{key}={value}\n" for key, value in settings.items()))

    def stop_applications(self) -> None:
        """Stop whatever the demo app runs on each host (it outlives the SSH session that started it)."""
        for sandbox_host in self.hosts:
            run_dir = sandbox_host.root / "shared" / "run"
            for pid_file in sorted(run_dir.glob("*.pid")) if run_dir.is_dir() else []:
                with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
                    pid = int(pid_file.read_text().split()[0])
                    os.killpg(os.getpgid(pid), signal.SIGTERM)

    def stop(self) -> None:
        """Stop every process the sandbox started; safe to call twice."""
        self.stop_applications()
        for sandbox_host in self.hosts:
            process = sandbox_host.process
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def wipe(self) -> None:
        """Remove host roots and keys (used by tests; the demo keeps them between runs)."""
        self.stop()
        for host in self.environment.hosts:
            if host.root:
                shutil.rmtree(host.root, ignore_errors=True)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
