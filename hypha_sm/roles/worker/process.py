"""The process runtime: run one job as an operating-system process tree, and stop all of it.

This is the shell side of ``StartJob`` / ``StopJob`` for executors with ``runtime = "process"``.
It knows nothing about the event loop; the loop drives it and turns its outcomes into events:

- ``await nursery.start(job.run)`` (or ``await job.start(nursery)``) returns once the process
  runs (-> ``JobStarted``) or raises :class:`StartError` with a reason (-> ``JobStartFailed``);
  a failed start leaves nothing behind: no process, no work dir.
- ``await job.wait()`` returns the exit code once **every** process of the job is gone
  (-> ``JobExited``). Negative codes are signals (``-9`` = SIGKILL).
- ``await job.stop(grace)`` asks the job to stop: SIGTERM to the whole tree, ``grace`` seconds,
  then SIGKILL to whatever is left; it returns like ``wait``. ``grace=0`` is ``StopJob.force``.

A job's processes are found through a cgroup v2 made for the job (when the node may create
one), and always also through the job's environment marker, the node's adopted children (it is
a child subreaper), the process group (the child is a session leader), the tree snapshots and
any process whose cwd is inside the work dir: ``sweep.py`` explains each. The log says what was
checked when it reports every process gone.

The work dir ``<work_dir>/hypha-<work_dir_id>`` (mode 0700) is the child's cwd; stdout and stderr
go to capped ``stdout.log`` / ``stderr.log`` there and, line by line, to the logger
``hypha_sm.job``. It is removed when the job exits 0 and kept (marked ``.hypha-failed``) when it
does not, up to ``keep_failed`` failed dirs. :func:`clean_orphans` sweeps what a crashed node
left behind; the node calls it on start.

The child gets ``PR_SET_PDEATHSIG = SIGKILL`` through util-linux's ``setpriv``, which sets it
and execs the job: no Python runs in the child between fork and exec (a ``preexec_fn`` would
run every at-fork handler registered in the node, such as the telemetry exporters' threads,
and can deadlock). Linux ties the signal to the *thread* that forked, so the child is spawned
from the trio thread itself (``trio.lowlevel.open_process`` forks in a worker thread, which
trio retires after idling, and that would kill the job). The spawn blocks the loop for the
few milliseconds ``Popen`` takes. The signal reaches the direct child only; a crash leaves
grandchildren to :func:`clean_orphans`. The cgroup, CPU affinity and ``RLIMIT_AS`` are applied
by the node to the child's pid as soon as the spawn returns, while the child is still
exec'ing.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import psutil  # type: ignore[import-untyped]  # types-psutil is not a dev dependency yet
import trio

from hypha_sm.core.resources import Amounts
from hypha_sm.roles.worker.limits import (
    PRLIMIT,
    SETPRIV,
    SH,
    Limits,
    apply_limits,
    cores_in_use,
    drop,
    find_cgroup_parent,
    nvidia_devices,
    pick_cores,
)
from hypha_sm.roles.worker.output import CappedLog, pump
from hypha_sm.roles.worker.sweep import (
    MARKER,
    adopted_children,
    alive,
    cgroup_scope,
    cwd_inside,
    is_subreaper,
    job_marker,
    killpg,
    marker_of,
    reap_adopted,
    signal_all,
)
from hypha_sm.roles.worker.users import Credentials
from hypha_sm.roles.worker.workdirs import DIR_PREFIX, FAILED_MARK, prune_failed

log = logging.getLogger("hypha_sm.roles.worker.process")
#: Job output is forwarded here, one record per line.
job_log = logging.getLogger("hypha_sm.job")

SOCKET_NAME: Final = "bridge.sock"
#: The job's spec, always written here; ``$JOB_JSON_FILE`` names it.
SPEC_NAME: Final = "job.json"
#: Largest spec also given inline (``$JOB_JSON``, ``{JOB_JSON}``); the kernel's limit per
#: argument or variable is 128 KiB.
MAX_INLINE_SPEC: Final = 64 * 1024
STDOUT_NAME: Final = "stdout.log"
STDERR_NAME: Final = "stderr.log"
DEFAULT_LOG_CAP: Final = 10 * 1024 * 1024
DEFAULT_GRACE: Final = 5.0
DEFAULT_KEEP_FAILED: Final = 20
POLL: Final = 0.05
_SNAPSHOT_EVERY: Final = 0.5
#: How long the output pipes may stay open after the job's last visible process ended.
_PIPE_GRACE: Final = 2.0
_GB: Final = 1_000_000_000


#: Main processes of live jobs: the node's children that are not escaped processes.
_job_mains: set[int] = set()
#: Markers of jobs whose processes may live (processes carrying them are not escapees).
_live_ids: set[str] = set()


class StartError(Exception):
    """The job could not be started; ``reason`` says why. Nothing of it is left running."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ProcessSpec:
    """What to run: the ``StartJob`` fields plus the executor's configured ``cmd`` and ``args``."""

    job_id: str
    work_dir_id: str
    cmd: str
    args: Sequence[str] = ()
    #: Compact JSON of the whole job spec, given as ``{JOB_JSON}`` and ``$JOB_JSON``.
    job_json: str = "{}"
    resources: Amounts = field(default_factory=Amounts)
    #: The user the job runs as (``users.py``); None: the node's own.
    user: Credentials | None = None


@dataclass(frozen=True)
class ProcessSettings:
    """Node-wide settings of the process runtime."""

    #: Base directory; each job gets ``<work_dir>/hypha-<work_dir_id>``.
    work_dir: Path
    #: Bytes kept of each of stdout and stderr; output beyond is dropped and noted.
    log_cap: int = DEFAULT_LOG_CAP
    #: Seconds between SIGTERM and SIGKILL when ``stop`` is called without a grace.
    grace: float = DEFAULT_GRACE
    #: Failed work dirs kept for inspection; older ones are removed.
    keep_failed: int = DEFAULT_KEEP_FAILED
    #: Try a cgroup v2 per job (``None`` parent: the node's own cgroup, when writable).
    use_cgroup: bool = True
    cgroup_parent: Path | None = None
    #: Environment the job inherits (default: the node's).
    base_env: Mapping[str, str] | None = None


# --------------------------------------------------------------------------- templating


def render_args(args: Iterable[str], values: Mapping[str, str]) -> list[str]:
    """Replace ``{NAME}`` for each name in ``values`` in every arg; other ``{X}`` stay as they are.

    Plain string replacement, all occurrences, names applied in order (the original semantics).
    """
    out = []
    for arg in args:
        for name, value in values.items():
            arg = arg.replace("{" + name + "}", value)
        out.append(arg)
    return out


#: The node's own settings and secrets (e.g. collector tokens in OTEL_EXPORTER_OTLP_HEADERS)
#: are not the job's business.
NODE_ONLY_PREFIXES: Final = ("HYPHA_", "OTEL_")


def job_env(base: Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
    """The job's environment: ``base`` without the node's own variables, plus ``values``."""
    kept = {k: v for k, v in base.items() if not k.startswith(NODE_ONLY_PREFIXES)}
    return {**kept, **values}


# --------------------------------------------------------------------------- the job


class ProcessJob:
    """One job run as a process tree. Use once: ``run`` (via ``nursery.start``), then ``wait``."""

    def __init__(self, spec: ProcessSpec, settings: ProcessSettings) -> None:
        self.spec = spec
        # Every line about the job carries its id, so telemetry can add the job's trace id.
        self._log = logging.LoggerAdapter(log, {"job_id": spec.job_id})
        self.settings = settings
        #: ``<work_dir>/hypha-<work_dir_id>``; the job's cwd.
        self.work_dir = settings.work_dir.absolute() / f"{DIR_PREFIX}{spec.work_dir_id}"
        #: Where the bridge listens; given to the job as ``SOCKET_PATH``.
        self.socket_path = self.work_dir / SOCKET_NAME
        #: What could not be enforced on this machine (filled by ``run`` before the spawn).
        self.unenforced: list[str] = []
        self.pid: int | None = None
        self.exit_code: int | None = None
        self._popen: subprocess.Popen[bytes] | None = None
        self._cgroup: Path | None = None
        self._known: dict[int, psutil.Process] = {}
        self._stop_requested = trio.Event()
        self._marker = job_marker(settings.work_dir, spec.work_dir_id)
        self._sweeping = False
        self._kill_at: float | None = None
        self._done = trio.Event()
        self._started = False
        self._prepared = False
        self._cgroup_used = False
        #: Remove the work dir when the job ends, even if it failed (it was stopped for its
        #: disk use: keeping the dir would keep the disk full).
        self.discard_dir = False

    # ------------------------------------------------------------------ public API

    def prepare(self) -> Path:
        """Create the work dir (mode 0700) so the bridge can bind before the spawn; return it.

        Raises:
            StartError: the dir exists already or cannot be created.
        """
        if self._prepared:
            return self.work_dir
        try:
            self.settings.work_dir.mkdir(parents=True, exist_ok=True)
            self.work_dir.mkdir(mode=0o700)
            self.work_dir.chmod(0o700)  # mkdir's mode is masked by the umask
            user = self.spec.user
            if user is not None:
                os.chown(self.work_dir, user.uid, user.gid)
        except FileExistsError:
            raise StartError(f"work dir {self.work_dir} exists already") from None
        except OSError as exc:
            raise StartError(f"cannot create work dir {self.work_dir}: {exc}") from exc
        self._prepared = True
        return self.work_dir

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the job under ``nursery``; return once it runs. Raises :class:`StartError`."""
        await nursery.start(self.run)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Start the job, report ``task_status.started()``, supervise it; return its exit code.

        Returns only once every process of the job is gone and the work dir is settled.

        Raises:
            StartError: before ``started``, when the job could not be started.
        """
        if self._started:
            raise RuntimeError("a ProcessJob runs once")
        self._started = True
        try:
            await self._run(task_status)
        finally:
            cores_in_use.pop(self.spec.job_id, None)
            _live_ids.discard(self._marker)
            self._done.set()
        assert self.exit_code is not None
        return self.exit_code

    async def wait(self) -> int:
        """The exit code, once every process of the job is gone (negative = signal)."""
        await self._done.wait()
        if self.exit_code is None:
            raise RuntimeError(f"job {self.spec.job_id} never started")
        return self.exit_code

    async def stop(self, grace: float | None = None) -> int:
        """SIGTERM the whole tree, wait ``grace`` seconds (default from settings), SIGKILL the rest.

        Returns the exit code once every process is gone. Calling again with a shorter grace (for
        example ``0`` for a forced stop) brings the SIGKILL forward.
        """
        grace = self.settings.grace if grace is None else max(0.0, grace)
        kill_at = trio.current_time() + grace
        if self._kill_at is None or kill_at < self._kill_at:
            self._kill_at = kill_at
        self._stop_requested.set()
        return await self.wait()

    @property
    def cgroup_used(self) -> bool:
        """Whether the job runs in a cgroup of its own (known once it started)."""
        return self._cgroup_used

    # ------------------------------------------------------------------ start

    def _limits(self) -> Limits:
        res = self.spec.resources
        limits = Limits()
        if self.settings.use_cgroup:
            limits.cgroup = self._make_cgroup()
        else:
            limits.unenforced.append("cgroup: disabled by settings")
        limits.cores = pick_cores(self.spec.job_id, res.cpu)
        if res.cpu > 0 and limits.cores is None:
            limits.unenforced.append(
                f"cpu: {res.cpu} cores asked, {len(os.sched_getaffinity(0))} available: "
                "no affinity set"
            )
        if res.memory > 0:
            limit = int(res.memory * _GB)
            if limits.cgroup is not None and (limits.cgroup / "memory.max").exists():
                try:
                    (limits.cgroup / "memory.max").write_text(str(limit))
                except OSError as exc:
                    limits.unenforced.append(f"memory: cgroup memory.max failed ({exc})")
                    limits.rlimit_as = limit
            else:
                why = "no cgroup" if limits.cgroup is None else "no cgroup memory controller"
                limits.unenforced.append(
                    f"{why}: memory limit via RLIMIT_AS (virtual memory, crude)"
                )
                limits.rlimit_as = limit
        if res.gpu > 0:
            devices = nvidia_devices()
            if devices:
                limits.cuda_visible = ",".join(map(str, devices))
                limits.unenforced.append(
                    f"gpu: {res.gpu} GB of VRAM is not enforced; all {len(devices)} devices visible"
                )
            else:
                limits.unenforced.append("gpu: no NVIDIA devices")
        if SETPRIV is None:
            limits.unenforced.append("parent-death signal: setpriv (util-linux) not found")
        return limits

    def _make_cgroup(self) -> Path | None:
        parent = self.settings.cgroup_parent or find_cgroup_parent()
        if parent is None:
            self.unenforced.append("no cgroup v2: stop via process group and tree sweep")
            return None
        with contextlib.suppress(OSError):  # may fail (processes in parent): memory then absent
            (parent / "cgroup.subtree_control").write_text("+memory +cpu")
        path = (
            parent / f"{DIR_PREFIX}{cgroup_scope(self.settings.work_dir)}-{self.spec.work_dir_id}"
        )
        try:
            path.mkdir()
        except OSError as exc:
            self.unenforced.append(f"no cgroup ({exc}): stop via process group and tree sweep")
            return None
        self._cgroup = path
        self._cgroup_used = True
        return path

    def _remove_cgroup(self) -> None:
        if self._cgroup is not None:
            try:
                self._cgroup.rmdir()
            except OSError as exc:
                self._log.warning(
                    "job %s: cannot remove cgroup %s: %s", self.spec.job_id, self._cgroup, exc
                )
            self._cgroup = None

    def _write_spec(self) -> Path:
        """The spec as ``<work dir>/job.json`` (0600, the job's own), for ``$JOB_JSON_FILE``."""
        path = self.work_dir / SPEC_NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(self.spec.job_json)
        user = self.spec.user
        if user is not None:
            os.chown(path, user.uid, user.gid)
        return path

    def _spawn(self, limits: Limits) -> tuple[int, int]:
        """Fork and exec in this thread (see the module doc); return the parent's pipe ends."""
        spec_file = self._write_spec()
        # The kernel takes at most 128 KiB per argument or variable: a larger spec goes by file
        # only ($JOB_JSON_FILE, and {JOB_JSON} in args becomes the file's path).
        inline = len(self.spec.job_json.encode("utf-8", "surrogatepass")) <= MAX_INLINE_SPEC
        values = {
            "SOCKET_PATH": str(self.socket_path),
            "WORK_DIR": str(self.work_dir),
            "JOB_JSON": self.spec.job_json if inline else str(spec_file),
            "JOB_JSON_FILE": str(spec_file),
        }
        base = os.environ if self.settings.base_env is None else self.settings.base_env
        env = job_env(
            base,
            {
                **values,
                "CUDA_VISIBLE_DEVICES": limits.cuda_visible,
                MARKER: self._marker,
            },
        )
        if not inline:
            del env["JOB_JSON"]
        # Resolve the command as exec would (PATH from the job's env, relative to its cwd), so a
        # missing one is a start failure rather than the launcher's exit code.
        cmd: str | None = str(self.work_dir / self.spec.cmd)  # absolute stays absolute
        if os.sep not in self.spec.cmd:
            cmd = shutil.which(self.spec.cmd, path=env.get("PATH", os.defpath))
        if cmd is None or not os.path.isfile(cmd):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.spec.cmd)
        if not os.access(cmd, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), self.spec.cmd)
        argv = [cmd, *render_args(self.spec.args, values)]
        go_r = go_w = -1
        if limits.cgroup is not None:
            # The job waits for the node to put it in its cgroup before its own code runs: a
            # job that forks at once (and a loaded node) must not leave children outside it.
            # The pipe is its stdin until then (POSIX shells only name fds 0-9).
            go_r, go_w = os.pipe()
            script = 'read -r _ || exit 111; exec "$@" </dev/null'
            argv = [SH, "-c", script, "hypha-job", *argv]
        user = self.spec.user
        if user is not None:
            if SETPRIV is None:
                raise StartError("running a job as its own user needs setpriv (util-linux)")
            env["HOME"] = str(self.work_dir)
            if limits.rlimit_as is not None and PRLIMIT is not None:
                # Set before the uid changes: afterwards only CAP_SYS_RESOURCE may set it.
                rlimit = f"--as={limits.rlimit_as}:{limits.rlimit_as}"
                argv = [PRLIMIT, rlimit, "--", SETPRIV, *drop(user), "--", *argv]
                limits.rlimit_as = None
            else:
                argv = [SETPRIV, *drop(user), "--", *argv]
        elif SETPRIV is not None:
            argv = [SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self._popen = subprocess.Popen(
                argv,
                stdin=go_r if go_r >= 0 else subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                cwd=self.work_dir,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
            _job_mains.add(self._popen.pid)
            _live_ids.add(self._marker)
            try:
                self.unenforced.extend(apply_limits(self._popen.pid, limits))
            except ProcessLookupError:
                pass  # it already exited; wait() reports its code
            except BaseException:
                self._popen.kill()
                self._popen.wait()
                _job_mains.discard(self._popen.pid)
                raise
            if go_w >= 0:
                with contextlib.suppress(OSError):  # it may have died meanwhile
                    os.write(go_w, b"go\n")
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
            for fd in (go_r, go_w):
                if fd >= 0:
                    os.close(fd)
        return out_r, err_r

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        self.prepare()
        try:
            limits = self._limits()
            self.unenforced.extend(limits.unenforced)
            out_r, err_r = self._spawn(limits)
        except BaseException as exc:
            self._remove_cgroup()
            shutil.rmtree(self.work_dir, ignore_errors=True)
            if isinstance(exc, FileNotFoundError | PermissionError | NotADirectoryError):
                raise StartError(f"cannot run {self.spec.cmd!r}: {exc.strerror}") from exc
            if isinstance(exc, OSError | subprocess.SubprocessError | ValueError):
                # ValueError: a NUL byte in an argument or the environment (e.g. the spec).
                raise StartError(f"cannot start {self.spec.cmd!r}: {exc}") from exc
            raise
        popen = self._popen
        assert popen is not None
        self.pid = popen.pid
        self._log.info(
            "job %s: started pid %d in %s%s",
            self.spec.job_id,
            popen.pid,
            self.work_dir,
            f"; not enforced: {'; '.join(self.unenforced)}" if self.unenforced else "",
        )
        out = CappedLog(
            self.work_dir / STDOUT_NAME, self.settings.log_cap, self.spec.job_id, "stdout"
        )
        err = CappedLog(
            self.work_dir / STDERR_NAME, self.settings.log_cap, self.spec.job_id, "stderr"
        )
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                pumps = trio.CancelScope()

                async def pump_both() -> None:
                    with pumps:
                        async with trio.open_nursery() as inner:
                            inner.start_soon(pump, trio.lowlevel.FdStream(out_r), out)
                            inner.start_soon(pump, trio.lowlevel.FdStream(err_r), err)
                    if pumps.cancelled_caught:
                        self._log.warning(
                            "job %s: its output pipes were still open %g s after its last "
                            "process we can see ended (a process outside its cgroup, marker "
                            "and tree holds them); stopped reading them",
                            self.spec.job_id,
                            _PIPE_GRACE,
                        )

                nursery.start_soon(pump_both)
                try:
                    await self._supervise(popen)
                finally:
                    if self.exit_code is None:  # cancelled: still stop the whole tree
                        with trio.CancelScope(shield=True):
                            await self._cancelled(popen)
                    # Every process we can see is gone; one we cannot see may hold the output
                    # pipes open. Their last bytes get a moment, then the job ends regardless.
                    pumps.deadline = trio.current_time() + _PIPE_GRACE
        finally:
            out.close()
            err.close()
            self._remove_cgroup()
            if self.exit_code is not None:
                self._settle_work_dir()

    # ------------------------------------------------------------------ supervision

    async def _supervise(self, popen: subprocess.Popen[bytes]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._snapshot_loop, popen)
            await _wait_exit(popen, self._stop_requested)
            nursery.cancel_scope.cancel()
        if popen.returncode is None:  # stop requested while running
            await self._terminate()
        else:  # the main process ended by itself: leftovers get the default grace
            self._sweeping = True
            if self._members():
                self._log.info(
                    "job %s: main process exited; stopping what it left", self.spec.job_id
                )
                if self._kill_at is None:
                    self._kill_at = trio.current_time() + self.settings.grace
                await self._terminate()
        await _wait_exit(popen, None)
        _job_mains.discard(popen.pid)
        self.exit_code = popen.returncode
        left = self._members()
        if left:  # never claim what was not checked: say what is still there
            self._log.warning(
                "job %s: exited with %s; still alive after the stop: %s",
                self.spec.job_id,
                self.exit_code,
                ", ".join(str(p.pid) for p in left),
            )
            await self._terminate()
        self._log.info(
            "job %s: exited with %s; every process gone (checked: %s)",
            self.spec.job_id,
            self.exit_code,
            self._checked,
        )

    async def _cancelled(self, popen: subprocess.Popen[bytes]) -> None:
        self._log.info("job %s: supervision cancelled; stopping the job", self.spec.job_id)
        if self._kill_at is None:
            self._kill_at = trio.current_time() + self.settings.grace
        await self._terminate()
        await _wait_exit(popen, None)
        _job_mains.discard(popen.pid)
        self.exit_code = popen.returncode

    async def _snapshot_loop(self, popen: subprocess.Popen[bytes]) -> None:
        while True:
            self._members()
            await trio.sleep(_SNAPSHOT_EVERY)

    def _members(self) -> list[psutil.Process]:
        """Every live process of the job; remembers them so that a later sweep still finds them.

        While stopping (``_sweeping``), children the node adopted that carry no job's marker
        count too: they escaped from a job and scrubbed their environment.
        """
        mine = self._marker
        found: dict[int, psutil.Process] = {}
        if self._cgroup is not None:
            with contextlib.suppress(OSError, ValueError):
                for pid in (self._cgroup / "cgroup.procs").read_text().split():
                    with contextlib.suppress(psutil.Error):
                        found[int(pid)] = psutil.Process(int(pid))
        roots = [p for p in self._known.values() if alive(p)]
        if self.pid is not None and self._popen is not None and self._popen.returncode is None:
            with contextlib.suppress(psutil.Error):
                roots.append(psutil.Process(self.pid))
        reap_adopted(_job_mains)
        for child in adopted_children(_job_mains):
            marker = marker_of(child.pid)
            if marker == mine or (marker is None and self._sweeping):
                roots.append(child)
        for root in roots:
            found[root.pid] = root
            with contextlib.suppress(psutil.Error):
                for child in root.children(recursive=True):
                    found.setdefault(child.pid, child)
        pgid = self.pid
        me = os.getpid()
        for p in psutil.process_iter():
            if p.pid in found or p.pid == me:
                continue
            try:
                in_group = pgid is not None and os.getpgid(p.pid) == pgid
            except OSError:
                continue
            if in_group or cwd_inside(p, self.work_dir) or marker_of(p.pid) == mine:
                found[p.pid] = p
        living = {pid: p for pid, p in found.items() if alive(p)}
        self._known.update(living)
        self._known = {pid: p for pid, p in self._known.items() if alive(p)}
        return list(living.values())

    @property
    def _checked(self) -> str:
        """What ``_members`` looks at, for the log line that says every process is gone."""
        ways = ["cgroup"] if self._cgroup is not None else []
        ways += ["marker", "process group", "tree", "cwd"]
        if is_subreaper():
            ways.append("adopted children")
        return ", ".join(ways)

    async def _terminate(self) -> None:
        """TERM the group and every member; until the kill deadline; then KILL until none is left."""
        self._sweeping = True
        members = self._members()
        self._log.info(
            "job %s: SIGTERM to %d processes (%s)",
            self.spec.job_id,
            len(members),
            ", ".join(str(p.pid) for p in members),
        )
        killpg(self.pid, signal.SIGTERM)
        signal_all(members, signal.SIGTERM)
        while self._members():
            assert self._kill_at is not None
            if trio.current_time() >= self._kill_at:
                break
            await trio.sleep(POLL)
        while members := self._members():
            self._log.info(
                "job %s: SIGKILL to %s",
                self.spec.job_id,
                ", ".join(str(p.pid) for p in members),
            )
            if self._cgroup is not None:
                with contextlib.suppress(OSError):
                    (self._cgroup / "cgroup.kill").write_text("1")
            killpg(self.pid, signal.SIGKILL)
            signal_all(members, signal.SIGKILL)
            await trio.sleep(POLL)

    # ------------------------------------------------------------------ after the exit

    def _settle_work_dir(self) -> None:
        if self.discard_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self._log.info(
                "job %s: stopped for its disk use; removed %s", self.spec.job_id, self.work_dir
            )
            return
        if self.exit_code == 0:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self._log.info("job %s: succeeded; removed %s", self.spec.job_id, self.work_dir)
            return
        with contextlib.suppress(OSError):
            (self.work_dir / FAILED_MARK).write_text(f"{self.exit_code}\n")
            if self.spec.user is not None:
                # Kept for the operator, not for the next job that gets this uid.
                os.chown(self.work_dir, os.geteuid(), os.getegid())
        # A job the node stopped (its lease ended, the node stops) was cancelled, as the core
        # records it; "failed" is for a job that ended badly on its own.
        how = "stopped" if self._stop_requested.is_set() else "failed"
        self._log.info(
            "job %s: %s (%s); kept %s for inspection",
            self.spec.job_id,
            how,
            self.exit_code,
            self.work_dir,
        )
        prune_failed(self.settings.work_dir, self.settings.keep_failed)


async def _wait_exit(popen: subprocess.Popen[bytes], stop: trio.Event | None) -> None:
    """Until the process exits (reaped; ``returncode`` set) or ``stop`` is set."""
    pidfd: int | None = None
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(popen.pid)
    try:
        while popen.poll() is None:
            if stop is not None and stop.is_set():
                return
            if pidfd is not None:
                with trio.move_on_after(POLL if stop is not None else 1.0):
                    await trio.lowlevel.wait_readable(pidfd)
            else:
                await trio.sleep(POLL)
    finally:
        if pidfd is not None:
            os.close(pidfd)


async def sweep_forever(interval: float = 1.0) -> None:
    """The node's housekeeping as a child subreaper.

    Collects adopted processes that exited, and kills adopted ones marked with a job that has
    ended (they escaped it).
    """
    while True:
        reap_adopted(_job_mains)
        for child in adopted_children(_job_mains):
            marker = marker_of(child.pid)
            if marker is not None and marker not in _live_ids and alive(child):
                log.warning(
                    "pid %d escaped job %s, which has ended: killing it", child.pid, marker
                )
                with contextlib.suppress(psutil.Error):
                    child.kill()
        await trio.sleep(interval)
