"""``make demo``: Airlock with three sandbox hosts, in the foreground until Ctrl-C.

Everything lives under ``.demo/`` (git-ignored) and in three PostgreSQL databases named after the
checkout's installation id (``.demo/installation_id``): the demo app's, Airlock's ops tables and
Airflow's metadata.
Running it again reuses that state. Ctrl-C stops every process it started (Airflow's
components, sshd hosts, the demo apps, Slack). ``python -m airlock_dev.demo clean`` (``make clean``)
drops the three databases.

``AIRLOCK_EXECUTOR=celery`` runs the tasks on two Celery workers instead of the LocalExecutor
(README, "Scaling out").
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time

from airlock.config import PROJECT_ROOT
from airlock_dev.hosts import SandboxError
from airlock_dev.stack import AirlockStack, Ports, say

NEXT_STEPS = """
  Airlock is running.

    Airflow UI   {url}      user: admin   password: {password}
                 (also in .demo/airflow/simple_auth_manager_passwords.json.generated)
    Hosts        web-1..3 over SSH on 127.0.0.1:2201-2203, app on http://127.0.0.1:8101-8103
    Slack        messages print here and go to .demo/slack.log
    Logs         .demo/logs/<component>.log

  Try it:
    1. Trigger release_demo with version 2.0.0 (DAG page > Trigger).
    2. Approve it under Browse > Required Actions (the request shows the release plan).
    3. Watch the waves in the grid: web-1 first, then web-2 and web-3.
       curl http://127.0.0.1:8101/version
    4. Then trigger 2.1.0-broken and watch the automatic rollback.
    5. rollback_demo goes back to the previous release; migrate_demo plans (dry_run) or applies
       a version's database migrations on their own (2.0.0 brought V1 and V2).
    6. A verified backup was taken at start (backup_demo runs hourly; trigger it any time):
       see .demo/backups/. restore_demo puts a backup back after approval (a safety backup of
       the current database comes first). health_demo checks everything every 5 minutes:
       stop an app (.demo/hosts/web-2/srv/demo-app/current/bin/demo-app --root
       .demo/hosts/web-2/srv/demo-app stop) and Slack gets one alert; `start` it again
       (same command) and the next run sends one "ok again".
    7. One release at a time: a run finding the lock held by a live run fails at once naming it;
       a lock left by a run that ended (or by a demo in another clone that is gone) is broken
       by the next run, which says so in Slack. unlock_demo breaks one by hand, after approval.

  Ctrl-C stops everything.
"""

CELERY_NOTE = (
    "Celery mode: tasks run on worker-1 and worker-2 (logs .demo/logs/worker-N.log, their own\n"
    "  directories under .demo/workers/); a task instance's hostname says which (127.0.0.2 or .3)."
)

DEMO_HOME = PROJECT_ROOT / ".demo"


def clean() -> int:
    """Drop the demo's databases (``make clean`` then removes ``.demo/``); refused while it runs."""
    if not (DEMO_HOME / "installation_id").exists():
        say("no demo databases to drop (.demo/installation_id is absent)")
        return 0
    stack = AirlockStack.demo(DEMO_HOME, Ports(api=int(os.environ.get("AIRLOCK_PORT", "8080"))))
    try:
        stack.check_ports()
    except SandboxError as error:
        say(f"not cleaning while the demo may be running: {error}")
        return 1
    dropped = stack.drop_databases()
    say(f"dropped PostgreSQL databases: {', '.join(dropped) or 'none (already gone)'}")
    return 0


def main() -> int:
    # The console shows progress lines and Slack messages; this process's SSH chatter goes
    # nowhere (Airflow's components get their own INFO level from the stack's settings).
    os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
    logging.disable(logging.INFO)
    port = int(os.environ.get("AIRLOCK_PORT", "8080"))
    executor = os.environ.get("AIRLOCK_EXECUTOR", "local")
    try:
        stack = AirlockStack.demo(DEMO_HOME, Ports(api=port), executor=executor)
    except ValueError as error:
        say(f"error: AIRLOCK_EXECUTOR: {error}")
        return 1

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        stack.start()
        print(NEXT_STEPS.format(url=stack.api_url, password=stack.password()), flush=True)
        if stack.executor == "celery":
            say(CELERY_NOTE)
        while all(process.poll() is None for process in stack.processes.values()):
            time.sleep(1)
        failed = [name for name, process in stack.processes.items() if process.poll() is not None]
        say(f"{', '.join(failed)} stopped unexpectedly; see .demo/logs/. Shutting down.")
        return 1
    except KeyboardInterrupt:
        say("stopping")
        return 0
    except (SandboxError, RuntimeError) as error:
        say(f"error: {error}")
        return 1
    finally:
        stack.stop()
        say("stopped every process the demo started")


if __name__ == "__main__":
    sys.exit(clean() if sys.argv[1:] == ["clean"] else main())
