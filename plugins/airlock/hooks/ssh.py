"""SSH to one host of an environment, always verifying its host key.

The provider's ``SSHHook`` trusts ``~/.ssh/known_hosts`` of whoever runs the worker. Airlock
pins every environment to its own known_hosts file instead (``ssh.known_hosts`` in the
environment YAML), so a worker's personal file can neither widen nor weaken what a release
trusts, and a host whose key changed is refused before anything runs on it.
"""

from __future__ import annotations

import errno
import shlex
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paramiko
from airflow.providers.ssh.hooks.ssh import SSHHook
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from airlock.config import Host

#: Errors worth another connection attempt: the host may be rebooting or briefly overloaded.
TRANSIENT_CONNECT_ERRORS = (
    paramiko.ssh_exception.NoValidConnectionsError,
    socket.timeout,
    ConnectionResetError,
    EOFError,
)


class HostKeyError(Exception):
    """The host's SSH key is unknown or does not match the environment's known_hosts file."""


class RemoteCommandError(Exception):
    """A command on a host exited non-zero."""

    def __init__(self, host: Host, command: str, result: CommandResult):
        self.host = host
        self.result = result
        detail = (result.stderr or result.stdout).strip()[-2000:]
        super().__init__(
            f"Host {host.name} ({host.ssh_target}): `{command}` exited {result.exit_status}"
            + (f": {detail}" if detail else "")
        )


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str


def known_hosts_entry(host: Host) -> str:
    """How known_hosts names ``host``: ``[address]:port``, or the bare address on port 22."""
    return host.address if host.ssh_port == 22 else f"[{host.address}]:{host.ssh_port}"


def known_host_key(known_hosts: Path, host: Host) -> paramiko.PKey:
    """The key ``known_hosts`` lists for ``host`` (as ``[address]:port``, or ``address`` on 22)."""
    if not known_hosts.is_file():
        raise HostKeyError(
            f"Host {host.name} ({host.ssh_target}): known_hosts file {known_hosts} does not exist; "
            f"create it with `ssh-keyscan -p {host.ssh_port} {host.address} >> {known_hosts}` "
            "after checking the fingerprint out of band"
        )
    keys = paramiko.HostKeys(str(known_hosts)).lookup(known_hosts_entry(host))
    if not keys:
        raise HostKeyError(
            f"Host {host.name} ({host.ssh_target}) is not listed in {known_hosts}: add its key "
            f"(`ssh-keyscan -p {host.ssh_port} {host.address}`, fingerprint checked out of band)"
        )
    return next(iter(keys.values()))


class HostSSHHook(SSHHook):
    """
    SSH connection to one environment host, with the host key checked against a pinned file.

    Credentials (user, private key) come from the Airflow connection ``ssh_conn_id``; address and
    port come from the environment's host entry, so one connection serves every host. Connecting
    retries transient network errors with backoff; a wrong or unknown host key fails at once.

    :param host: the host to reach, from the environment model.
    :param known_hosts: file holding the expected host keys of the environment.
    :param ssh_conn_id: Airflow connection with the login and private key.
    :param conn_timeout: seconds to wait for the TCP connection and handshake.
    :param cmd_timeout: seconds a command may run before it is abandoned.
    :param connect_attempts: attempts for transient connection errors.
    """

    def __init__(
        self,
        *,
        host: Host,
        known_hosts: Path,
        ssh_conn_id: str,
        conn_timeout: int = 10,
        cmd_timeout: float = 300,
        connect_attempts: int = 3,
    ) -> None:
        super().__init__(
            ssh_conn_id=ssh_conn_id,
            remote_host=host.address,
            port=host.ssh_port,
            conn_timeout=conn_timeout,
            cmd_timeout=cmd_timeout,
            no_host_key_check=False,
        )
        self.host = host
        self.known_hosts = known_hosts
        self.connect_attempts = connect_attempts
        # Only the pinned known_hosts file decides; connection extras cannot relax it.
        self.allow_host_key_change = False
        self.no_host_key_check = False

    def get_conn(self) -> paramiko.SSHClient:
        if self.client and (transport := self.client.get_transport()) and transport.is_active():
            return self.client
        expected = known_host_key(self.known_hosts, self.host)
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.get_host_keys().add(known_hosts_entry(self.host), expected.get_name(), expected)
        connect_kwargs = {
            "hostname": self.host.address,
            "port": self.host.ssh_port,
            "username": self.username,
            "timeout": self.conn_timeout,
            "banner_timeout": self.banner_timeout,
            "auth_timeout": self.auth_timeout,
            "look_for_keys": False,
            "allow_agent": False,
        }
        if self.password:
            connect_kwargs["password"] = self.password.strip()
        if self.pkey:
            connect_kwargs["pkey"] = self.pkey
        if self.key_file:
            connect_kwargs["key_filename"] = self.key_file

        try:
            for attempt in Retrying(
                retry=retry_if_exception_type(TRANSIENT_CONNECT_ERRORS),
                stop=stop_after_attempt(self.connect_attempts),
                wait=wait_exponential(multiplier=1, max=10),
                reraise=True,
            ):
                with attempt:
                    sock = self.open_socket()
                    try:
                        client.connect(**connect_kwargs, sock=sock)
                    except BaseException:
                        sock.close()
                        raise
        except paramiko.BadHostKeyException as error:
            raise HostKeyError(
                f"Host {self.host.name} ({self.host.ssh_target}) presented a {error.key.get_name()} key "
                f"({error.key.fingerprint}) that does not match {self.known_hosts} "
                f"({error.expected_key.fingerprint}): refusing to connect. If the host was rebuilt, "
                "verify the new key out of band and replace its line in that file"
            ) from None
        if self.keepalive_interval and (transport := client.get_transport()):
            transport.set_keepalive(self.keepalive_interval)
        self.client = client
        return client

    def open_socket(self) -> socket.socket:
        """The TCP connection to the host, with ``TCP_NODELAY``: the handshake and every command
        are short exchanges, and Nagle's algorithm against the host's delayed ACK would hold
        a packet about 40 ms on each (a connection took 70 ms instead of 24, a command 50 ms
        instead of 8, measured on loopback). As when paramiko connects itself, a refused
        connection or an unreachable host is its ``NoValidConnectionsError`` (retried); any other
        error (a name that does not resolve, a timeout) is raised as it is."""
        address = (self.host.address, self.host.ssh_port)
        try:
            sock = socket.create_connection(address, timeout=self.conn_timeout)
        except OSError as error:
            if error.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
                raise
            raise paramiko.ssh_exception.NoValidConnectionsError({address: error}) from error
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def run(self, argv: list[str], *, check: bool = True, timeout: float | None = None) -> CommandResult:
        """Run ``argv`` on the host; every part is shell-quoted, so no input is ever code."""
        command = shlex.join(argv)
        return self.run_script(command, check=check, timeout=timeout, shown=command)

    def run_script(
        self, script: str, *, check: bool = True, timeout: float | None = None, shown: str | None = None
    ) -> CommandResult:
        """Run a shell script built by Airlock itself (its variable parts already quoted)."""
        exit_status, stdout, stderr = self.exec_ssh_client_command(
            self.get_conn(),
            script,
            get_pty=False,
            environment=None,
            timeout=timeout if timeout is not None else self.cmd_timeout,
        )
        result = CommandResult(exit_status, stdout.decode(errors="replace"), stderr.decode(errors="replace"))
        if check and exit_status != 0:
            raise RemoteCommandError(self.host, shown or script.splitlines()[0], result)
        return result

    def upload(self, local_path: Path, remote_path: str) -> None:
        """Copy a file to the host over SFTP (the caller renames it into place)."""
        with self.get_conn().open_sftp() as sftp:
            sftp.put(str(local_path), remote_path)

    @contextmanager
    def read_file(self, remote_path: str) -> Iterator[paramiko.SFTPFile]:
        """A regular file of the host, opened for reading over SFTP; a symbolic link is refused
        (``OSError``), so a file swapped for a link since it was listed is never followed."""
        with self.get_conn().open_sftp() as sftp:
            if not stat.S_ISREG(sftp.lstat(remote_path).st_mode or 0):
                raise OSError(f"{remote_path} on {self.host.name} is no longer a regular file")
            with sftp.open(remote_path, "rb") as remote:
                remote.prefetch()
                yield remote

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
