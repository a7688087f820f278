"""Real sshd sandbox hosts, reached the way every Airlock task reaches a host."""

from __future__ import annotations

import socket
from contextlib import closing

import paramiko
import pytest

from airlock.hooks.hosts import host_session
from airlock.hooks.ssh import HostKeyError, HostSSHHook, RemoteCommandError
from airlock_dev.hosts import free_port


def hook_for(environment, host, known_hosts=None) -> HostSSHHook:
    return HostSSHHook(
        host=host,
        known_hosts=known_hosts or environment.ssh.known_hosts,
        ssh_conn_id=environment.ssh.conn_id,
        connect_attempts=1,
    )


def test_every_sandbox_host_answers_over_ssh_with_its_key_verified(sandbox, environment):
    for host in environment.hosts:
        with closing(hook_for(environment, host)) as hook:
            result = hook.run(["sh", "-c", 'echo "$SSH_CONNECTION"'])

        server_port = int(result.stdout.split()[3])
        assert server_port == host.ssh_port, f"{host.name} reached the sshd on {server_port}"


def test_each_host_has_its_own_root_with_its_own_app_settings(sandbox, environment):
    for host in environment.hosts:
        with closing(hook_for(environment, host)) as hook:
            settings = hook.run(["cat", f"{environment.root_of(host)}/shared/app.env"]).stdout

        assert f"PORT={host.app_url.rsplit(':', 1)[1]}" in settings


def test_a_host_presenting_another_key_is_refused_before_any_command(sandbox, environment, tmp_path):
    web_1, web_2 = environment.hosts[0], environment.hosts[1]
    # known_hosts that claims web-2's key belongs to web-1's address: a man in the middle.
    lines = environment.ssh.known_hosts.read_text().splitlines()
    web_2_key = next(line for line in lines if line.startswith(f"[127.0.0.1]:{web_2.ssh_port} ")).split(
        " ", 1
    )[1]
    forged = tmp_path / "known_hosts"
    forged.write_text(f"[127.0.0.1]:{web_1.ssh_port} {web_2_key}\n")
    marker = tmp_path / "touched"

    hook = hook_for(environment, web_1, known_hosts=forged)
    with pytest.raises(
        HostKeyError, match=r"Host web-1 \(127\.0\.0\.1:\d+\) presented a ssh-ed25519 key .* does not match"
    ):
        hook.run(["touch", str(marker)])

    assert not marker.exists()


def test_a_host_missing_from_known_hosts_is_refused_with_how_to_add_it(sandbox, environment, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")

    hook = hook_for(environment, environment.hosts[0], known_hosts=empty)
    with pytest.raises(HostKeyError, match=r"is not listed in .*known_hosts: add its key"):
        hook.get_conn()


def test_arguments_are_quoted_so_input_is_never_code(sandbox, environment, tmp_path):
    marker = tmp_path / "injected"
    with closing(hook_for(environment, environment.hosts[0])) as hook:
        result = hook.run(["echo", f"1.0; touch {marker}", "$(id)"])

    assert result.stdout.strip() == f"1.0; touch {marker} $(id)"
    assert not marker.exists()


def test_a_failing_command_names_host_command_and_status(sandbox, environment):
    with (
        closing(hook_for(environment, environment.hosts[1])) as hook,
        pytest.raises(RemoteCommandError, match=r"Host web-2 .*`ls /no/such/dir` exited 2: .*No such file"),
    ):
        hook.run(["ls", "/no/such/dir"])


def test_a_host_session_works_in_the_host_root_and_disconnects_even_when_a_command_fails(
    sandbox, environment
):
    web_3 = environment.hosts[2]
    sessions = []

    def run_in_session(*commands: list[str]) -> list[str]:
        with host_session(environment, web_3) as layout:
            sessions.append(layout)
            return [layout.hook.run(command).stdout for command in commands]

    reached, settings = run_in_session(
        ["sh", "-c", 'echo "$SSH_CONNECTION"'], ["cat", f"{environment.root_of(web_3)}/shared/app.env"]
    )
    with pytest.raises(RemoteCommandError, match=r"Host web-3 .*`ls /no/such/dir` exited 2"):
        run_in_session(["ls", "/no/such/dir"])

    assert int(reached.split()[3]) == web_3.ssh_port
    assert f"PORT={web_3.app_url.rsplit(':', 1)[1]}" in settings
    assert [layout.root for layout in sessions] == [environment.root_of(web_3)] * 2
    assert [layout.hook.client for layout in sessions] == [None, None], "a session left SSH open"


def test_a_sandbox_hosts_sessions_have_their_own_home_not_this_machines(sandbox, environment):
    """A sandbox host stands for a machine of its own: its commands do not run this machine's
    shell startup files (a developer's ~/.bashrc cost every command 150 ms of CPU)."""
    web_1 = sandbox.hosts[0]
    with closing(hook_for(environment, web_1.host)) as hook:
        home = hook.run(["sh", "-c", 'echo "$HOME"; ls -A "$HOME"']).stdout.splitlines()

    assert home == [str(web_1.login_home)]


def test_commands_and_the_handshake_are_not_held_by_nagles_algorithm(sandbox, environment):
    with closing(hook_for(environment, environment.hosts[0])) as hook:
        transport = hook.get_conn().get_transport()
        assert transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_a_host_refusing_connections_is_reported_as_unreachable_after_the_retries(
    sandbox, environment, tmp_path
):
    web_1 = environment.hosts[0]
    nobody = web_1.model_copy(update={"ssh_port": free_port()})
    key = next(
        line.split(" ", 1)[1]
        for line in environment.ssh.known_hosts.read_text().splitlines()
        if line.startswith(f"[127.0.0.1]:{web_1.ssh_port} ")
    )
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{nobody.ssh_port} {key}\n")
    hook = HostSSHHook(
        host=nobody, known_hosts=known_hosts, ssh_conn_id=environment.ssh.conn_id, connect_attempts=2
    )

    with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError, match="Unable to connect to port"):
        hook.get_conn()


def test_a_host_name_that_does_not_resolve_fails_at_once_saying_so(sandbox, environment, tmp_path):
    """Only a refused or unreachable host is worth another attempt (paramiko's
    NoValidConnectionsError); a misspelled name is not, and its error is the resolver's own."""
    web_1 = environment.hosts[0]
    misspelled = web_1.model_copy(update={"address": "web-1.no-such-domain.invalid"})
    key = next(
        line.split(" ", 1)[1]
        for line in environment.ssh.known_hosts.read_text().splitlines()
        if line.startswith(f"[127.0.0.1]:{web_1.ssh_port} ")
    )
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{misspelled.address}]:{web_1.ssh_port} {key}\n")
    hook = HostSSHHook(
        host=misspelled, known_hosts=known_hosts, ssh_conn_id=environment.ssh.conn_id, connect_attempts=3
    )

    with pytest.raises(socket.gaierror):
        hook.get_conn()
