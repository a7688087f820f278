#!/bin/sh
# Start the demo host's sshd in the foreground, logging to stderr (`docker compose logs demo-host`).
# The host key is made once in the demo-host-keys volume; its known_hosts line is printed so it can
# be added to the environment's known_hosts file (Airlock verifies every host key).
set -eu

key=/var/lib/airlock-demo-host/ssh_host_ed25519_key
if [ ! -f "$key" ]; then
    ssh-keygen -q -t ed25519 -N '' -C demo-host -f "$key"
fi
echo "known_hosts line: $(hostname) $(cut -d ' ' -f 1,2 "$key.pub")" >&2

mkdir -p /run/sshd
exec /usr/sbin/sshd -D -e
