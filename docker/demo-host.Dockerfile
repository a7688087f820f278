# One application host for the `demo` profile of docker-compose.yaml: an OpenSSH server that
# Airlock deploys to as `deploy`, and the Python (with psycopg) the demo app runs on. A stand-in
# for a real server, built from ./docker; not meant for anything but the demo.
FROM debian:bookworm-slim

# The package's host keys are removed: start-sshd makes one per volume instead, so every demo host
# has its own key and keeps it when the container is recreated (known_hosts stays valid).
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-server python3 python3-psycopg \
 && rm -rf /var/lib/apt/lists/* /etc/ssh/ssh_host_*

# '*' means "no password": sshd without PAM refuses key logins to a locked ('!') account.
RUN useradd --create-home --shell /bin/bash deploy \
 && usermod --password '*' deploy \
 && install -d -o deploy -g deploy /srv/demo-app \
 && install -d -m 0755 /run/sshd /var/lib/airlock-demo-host

COPY demo-host/sshd_config /etc/ssh/sshd_config.d/airlock.conf
COPY --chmod=0755 demo-host/start-sshd.sh /usr/local/bin/start-sshd

EXPOSE 22
CMD ["/usr/local/bin/start-sshd"]
