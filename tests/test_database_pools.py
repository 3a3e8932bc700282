"""PostgreSQL connections are budgeted: each process's pools are bounded by the documented
formula, ``tradeflow health`` shows the server's connections in use against its maximum, and
the stack works through PgBouncer in transaction pooling mode."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import dramatiq
import pytest
from conftest import run_cli, settings_env
from jobs_support import wait_for
from reliability_actors import declare_actors
from saga_helpers import wait_for_run
from sqlalchemy import text
from sqlalchemy.engine import make_url

from actors import audit_writer_of, build_broker
from actors.runtime import connections_per_process
from actors.scheduling import ScheduleControl
from saga import Step, Workflow, engine_of
from storage import RunStatus, create_db_engine, get_task

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

#: Where Debian installs PgBouncer (``apt-get install pgbouncer``; ``.ci/run`` does).
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

#: Worker threads of the in-process workers here.
THREADS = 4


@contextmanager
def _running(settings, *, threads: int = THREADS):
    """A broker with the reliability actors, its saga engine, and an in-process worker."""
    broker = build_broker(settings)
    declared = declare_actors(broker)
    worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    worker.start()
    try:
        yield broker, declared, engine_of(broker)
    finally:
        worker.stop(timeout=10_000)
        audit_writer_of(broker).close(5)
        broker.close()


def _workflow(prefix: str) -> Workflow:
    return Workflow(
        "budgeted",
        [
            Step("a", "hold", args=(prefix,)),
            Step("b", "hold", args=(prefix,), depends_on=["a"]),
            Step("c", "hold", args=(prefix,), depends_on=["a"]),
        ],
    )


def _count(broker, prefix: str, what: str) -> int:
    return int(broker.client.hget(f"{prefix}:count", what) or 0)


def _pool_capacity(engine) -> int:
    return engine.pool.size() + engine.pool._max_overflow


@pytest.mark.timeout(60)
def test_a_worker_process_stays_within_its_connection_budget(settings):
    """Every pool of a worker process together is bounded by ``connections_per_process``, and
    a burst of workflows and jobs on ``THREADS`` threads never opens more than that."""
    application = f"tfpool_{uuid.uuid4().hex[:8]}"
    url = make_url(settings.database_url).update_query_dict({"application_name": application})
    budgeted = settings.model_copy(
        update={"database_url": url.render_as_string(hide_password=False), "worker_threads": THREADS}
    )
    budget = connections_per_process(threads=THREADS)
    admin = create_db_engine(settings.database_url)
    peak = 0
    with _running(budgeted) as (broker, declared, engine):
        [schedules] = [m for m in broker.middleware if isinstance(m, ScheduleControl)]
        engines = [engine.database, audit_writer_of(broker).engine, schedules.engine]
        assert sum(_pool_capacity(each) for each in engines) == budget
        prefix = f"{settings.namespace}:{uuid.uuid4().hex[:6]}"
        run_ids = [engine.start(_workflow(prefix)) for _ in range(40)]
        for index in range(100):
            declared.note.send(prefix, f"job{index}")
        query = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name")
        deadline = time.monotonic() + 40
        while _count(broker, prefix, "hold") < 120 or _count(broker, prefix, "job99") < 1:
            assert time.monotonic() < deadline, "the burst did not finish"
            with admin.connect() as connection:
                peak = max(peak, connection.execute(query, {"name": application}).scalar())
            time.sleep(0.05)
        for run_id in run_ids:
            assert wait_for_run(engine.database, run_id, timeout=20).status == RunStatus.SUCCEEDED
    admin.dispose()
    print(f"\npeak {peak} connections of one process with {THREADS} threads; budget {budget}")
    assert 0 < peak <= budget


@pytest.mark.timeout(60)
def test_health_shows_connections_in_use_against_the_maximum(settings):
    done = run_cli("health", "--json", env=settings_env(settings))
    checks = {check["name"]: check for check in json.loads(done.stdout)["checks"]}
    detail = checks["connections"]["detail"]
    used, maximum = (int(n) for n in detail.split(" in use")[0].split(" of "))
    admin = create_db_engine(settings.database_url)
    with admin.connect() as connection:
        assert maximum == int(connection.execute(text("SHOW max_connections")).scalar())
    admin.dispose()
    assert 1 <= used <= maximum


@contextmanager
def _pgbouncer(settings):
    """A private PgBouncer in transaction mode, its database alias set to the test's schema:
    the test's settings reaching PostgreSQL through it, prepared statements off."""
    if not Path(PGBOUNCER).exists():
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    url = make_url(settings.database_url)
    schema = url.query["options"].split("=", 1)[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Outside pytest's temporary folders, which only root may enter: PgBouncer runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="tf-pgbouncer-"))
    (folder / "users.txt").write_text(f'"{url.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"tradeflow = host={url.host} port={url.port} dbname={url.database} "
        f"connect_query='SET search_path TO {schema}'\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 4\nmax_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {folder / 'pgbouncer.log'}\n"
    )
    os.chmod(folder, 0o777)
    command = [PGBOUNCER, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        command[1:1] = ["-u", "postgres"]
    bouncer = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _port_open(port), timeout=10, what="pgbouncer")
        bounced = url.set(port=port, database="tradeflow", query={"prepare_threshold": "none"})
        yield settings.model_copy(update={"database_url": bounced.render_as_string(hide_password=False)})
    finally:
        bouncer.send_signal(signal.SIGINT)
        try:
            bouncer.wait(10)
        except subprocess.TimeoutExpired:
            bouncer.kill()
            bouncer.wait()
        shutil.rmtree(folder, ignore_errors=True)


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(60)
def test_workflows_and_jobs_run_through_pgbouncer_in_transaction_mode(settings):
    with _pgbouncer(settings) as bounced:
        prefix = f"{settings.namespace}:{uuid.uuid4().hex[:6]}"
        with _running(bounced) as (broker, declared, engine):
            run_ids = [engine.start(_workflow(prefix)) for _ in range(20)]
            jobs = [declared.note.send(prefix, f"job{index}").message_id for index in range(30)]
            for run_id in run_ids:
                assert wait_for_run(engine.database, run_id, timeout=30).status == RunStatus.SUCCEEDED
            database = audit_writer_of(broker).engine
            wait_for(
                lambda: all(getattr(get_task(database, job), "status", None) == "completed" for job in jobs),
                timeout=20,
                what="the jobs' audit rows",
            )
