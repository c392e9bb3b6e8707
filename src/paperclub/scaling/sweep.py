"""Run a study: plan, run what the plan asks for, plan again, until every search is certified.

The output folder holds everything a later `paperclub scaling fit` needs and nothing it must trust blindly:
`study.toml` (a copy of the study), `corpus/` (the prepared token pool: scratch), `runs/<run id>/` (per run:
`config.json`, `log.txt`, `metrics.json` once finished; `checkpoint.pt` and `model.safetensors` are scratch) and
`ensembles/<job id>.json`. Jobs go to a local process pool (`workers`, each with `threads` torch threads) or, with
`ray_address`, to a Ray cluster running the very same job functions. A finished job is never run again; a killed
sweep resumes by running the same command.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from paperclub.atomic import write_json
from paperclub.errors import UserError
from paperclub.scaling.corpus import Corpus, load_corpus, prepare_corpus
from paperclub.scaling.evaluate import val_chunks
from paperclub.scaling.ladder import model_config
from paperclub.scaling.study import EnsembleJob, Study, SynthJob, load_study
from paperclub.scaling.train import RunConfig, read_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepConfig:
    workers: int = 1
    threads: int = 0  # torch threads per job; 0 = the CPU count divided among the workers
    ray_address: str = ""
    checkpoint_every_s: float = 120.0
    max_jobs: int = 0  # stop after this many jobs (0 = run the study to the end)
    compile: bool = False  # train through torch.compile (see train.train_run)

    def threads_per_job(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 1) // max(1, self.workers))


# ---- the jobs (module-level functions: they run in worker processes or on Ray) ----

@contextlib.contextmanager
def _job_log(path: Path):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def train_job(run: dict, corpus_root: str, run_dir: str, threads: int, checkpoint_every_s: float,
              progress: bool = False, root: str = ".", compile: bool = False) -> dict:
    import torch

    from paperclub.scaling.train import train_run

    torch.set_num_threads(threads)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with _job_log(Path(run_dir) / "log.txt"):
        metrics = train_run(RunConfig(**run), load_corpus(Path(corpus_root)), Path(run_dir), checkpoint_every_s,
                            progress=progress, root=Path(root), compile=compile)
    return {"run_id": metrics["run_id"], "val_loss": metrics["val_loss"]}


def ensemble_sizes(members: int) -> list[int]:
    """1, 2, 4, ... up to the member count (and the count itself)."""
    ks, k = [], 1
    while k < members:
        ks.append(k)
        k *= 2
    return [*ks, members]


def ensemble_job(job: dict, corpus_root: str, runs_dir: str, out_file: str, threads: int) -> dict:
    import torch

    from paperclub.scaling.evaluate import chunk_losses, val_chunks
    from paperclub.scaling.train import load_model

    torch.set_num_threads(threads)
    corpus = load_corpus(Path(corpus_root))
    members = [RunConfig(**m) for m in job["members"]]
    ids = [m.run_id(corpus.info["fingerprint"]) for m in members]
    models = [load_model(Path(runs_dir) / i, corpus.vocab_size) for i in ids]
    chunks, _ = val_chunks(corpus.val, members[0].val_tokens, members[0].seq_len, corpus.eot)
    result = {"job_id": job["job_id"], "size": job["size"], "tokens": job["tokens"], "members": ids,
              "corpus": corpus.info["fingerprint"], "ensembles": {}}
    for k in ensemble_sizes(len(models)):
        losses = chunk_losses(models[:k], chunks)
        result["ensembles"][str(k)] = {"val_loss": float(losses.mean()),
                                       "val_chunk_losses": [round(float(x), 5) for x in losses]}
        log.info("%s: %d members, val loss %.4f", job["job_id"], k, losses.mean())
    write_json(out_file, result)
    return {"job_id": job["job_id"], "val_loss": result["ensembles"][str(len(models))]["val_loss"]}


def synth_job(job: dict, corpus_root: str, out: str, threads: int) -> dict:
    """Export the teacher (one run or an ensemble) and write its samples to `out/<job['file']>`."""
    import shutil

    import torch

    from paperclub.scaling.distill import export_teacher, generate_synthetic

    torch.set_num_threads(threads)
    corpus, root = load_corpus(Path(corpus_root)), Path(out)
    teacher = [RunConfig(**m) for m in job["teacher"]]
    run_dirs = [root / "runs" / t.run_id(corpus.info["fingerprint"]) for t in teacher]
    folder = root / "teachers" / job["job_id"]
    shutil.rmtree(folder, ignore_errors=True)
    seq_len = teacher[0].seq_len
    (root / "synthetic").mkdir(exist_ok=True)
    with _job_log(root / "synthetic" / f"{job['job_id']}.log"):
        export_teacher(run_dirs, corpus, folder, seq_len)
        stats = generate_synthetic(folder, corpus, job["tokens"], job["samples"], job["prefix"], seq_len, job["seed"],
                                   root / job["file"])
    shutil.rmtree(folder, ignore_errors=True)
    write_json(root / f"{job['file']}.json", {**stats, "job_id": job["job_id"], "teacher": [r.name for r in run_dirs]})
    return {"job_id": job["job_id"], "val_loss": float("nan")}


# ---- executors: a local process pool, in-process for one worker, or Ray ----

def _die_with_parent() -> None:
    """Pool-worker initializer: on Linux, ask the kernel to send this worker SIGTERM when the sweep that started
    it dies, even by SIGKILL, so no training job outlives its sweep (a killed run resumes from its checkpoint)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM))
        if os.getppid() == 1:  # the parent died before the request took effect
            os._exit(1)


class _Local:
    def __init__(self, workers: int):
        self.pool = None
        if workers > 1:
            self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_die_with_parent)

    def submit(self, fn, *args) -> Future:
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except Exception as e:  # noqa: BLE001 - reported by the caller, like a pool's failure
            f.set_exception(e)
        return f

    def wait_any(self, handles: list) -> list:
        done, _ = wait_futures(handles, return_when=FIRST_COMPLETED)
        return list(done)

    @staticmethod
    def result(handle):
        return handle.result()

    def close(self, abort: bool = False) -> None:
        """Shut the pool down; with `abort` (the sweep was interrupted or failed) stop the running jobs now rather
        than wait for them: each resumes from its last checkpoint on the next sweep."""
        if self.pool is None:
            return
        if not abort:
            self.pool.shutdown(cancel_futures=True)
            return
        workers = list((getattr(self.pool, "_processes", None) or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for proc in workers:
            with contextlib.suppress(OSError, ValueError):
                proc.terminate()
        for proc in workers:
            with contextlib.suppress(OSError, ValueError):
                proc.join(10)


class _Ray:
    """Jobs as Ray tasks, each reserving `threads` CPUs. `address` is a running cluster ('auto', 'host:6379',
    'ray://host:10001') or 'local': a cluster started here for this sweep (`workers` x `threads` CPUs)."""

    def __init__(self, address: str, threads: int, workers: int):
        try:
            import ray
        except ImportError:
            raise UserError("--ray-address needs Ray: pip install ray (keep torch==2.13.0 pinned)") from None
        self.ray, self.threads, self._remote = ray, threads, {}
        self.owned = address == "local" and not ray.is_initialized()
        try:
            if address == "local":
                ray.init(num_cpus=workers * threads, include_dashboard=False, log_to_driver=False,
                         ignore_reinit_error=True)
            else:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot reach the Ray cluster at {address!r}: {e}") from None

    def submit(self, fn, *args):
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(num_cpus=self.threads)(fn)
        return self._remote[fn].remote(*args)

    def wait_any(self, handles: list) -> list:
        done, _ = self.ray.wait(handles, num_returns=1)
        return done

    def result(self, handle):
        return self.ray.get(handle)

    def close(self, abort: bool = False) -> None:
        if self.owned:
            self.ray.shutdown()  # stops the cluster this sweep started, and its running tasks with it


# ---- the plan-run loop ----

@contextlib.contextmanager
def _signals_interrupt():
    """While the sweep runs, SIGTERM and SIGINT interrupt it like Ctrl-C, so that either stops its workers. SIGINT
    is set explicitly: a shell starts a background job (`paperclub scaling sweep ... &`) with SIGINT ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def cost(job: RunConfig | EnsembleJob) -> float:
    """Roughly proportional to a job's compute: parameters x tokens seen (an evaluation counts as little)."""
    if not isinstance(job, RunConfig):
        return 0.0
    return model_config(job.size, 2048, job.seq_len).num_params() * job.tokens * job.epochs

class Results:
    """The finished runs and ensemble evaluations under an output folder."""

    def __init__(self, out: Path, fingerprint: str):
        self.out, self.fingerprint = out, fingerprint
        self.loss_of: dict[str, float] = {}

    def run_dir(self, run: RunConfig) -> Path:
        return self.out / "runs" / run.run_id(self.fingerprint)

    def loss(self, run: RunConfig) -> float | None:
        rid = run.run_id(self.fingerprint)
        if rid not in self.loss_of:
            metrics = read_metrics(self.out / "runs" / rid)
            if metrics is None:
                return None
            self.loss_of[rid] = float(metrics["val_loss"])
        return self.loss_of[rid]

    def reopen_for_weights(self, job: EnsembleJob | SynthJob) -> list[str]:
        """The runs whose weights `job` reads (an ensemble's members, a teacher) but are gone: weights are scratch,
        not committed, so a fresh checkout has the runs' metrics and no models. Each such run's metrics.json is
        kept as metrics.weights-lost.json and the run counts as unfinished, so that the sweep trains it again
        (same config and seed) before the job; returns their ids."""
        runs = job.teacher if isinstance(job, SynthJob) else job.members
        return self._reopen([self.run_dir(run) for run in runs])

    def reopen_teachers(self, student: RunConfig) -> list[str]:
        """The same for a logit-distilled student's teachers (named by run id)."""
        return self._reopen([self.out / "runs" / rid for rid in student.teacher])

    def _reopen(self, run_dirs: list[Path]) -> list[str]:
        reopened = []
        for run_dir in run_dirs:
            if read_metrics(run_dir) is not None and not (run_dir / "model.safetensors").is_file():
                os.replace(run_dir / "metrics.json", run_dir / "metrics.weights-lost.json")
                self.loss_of.pop(run_dir.name, None)
                reopened.append(run_dir.name)
        return reopened

    def ensemble_file(self, job: EnsembleJob) -> Path:
        return self.out / "ensembles" / f"{job.job_id()}.json"

    def evaluated(self, job: EnsembleJob | SynthJob) -> bool:
        if isinstance(job, SynthJob):
            return (self.out / job.file()).is_file()
        return self.ensemble_file(job).is_file()


def ensure_corpus(study: Study, out: Path) -> Corpus:
    root = out / "corpus"
    if not (root / "corpus.json").is_file():
        log.info("preparing the corpus under %s", root)
        prepare_corpus(root, study.corpus)
    corpus = load_corpus(root)
    if corpus.info.get("config") != asdict(study.corpus):
        raise UserError(f"{root} was prepared with {corpus.info.get('config')}, the study asks for "
                        f"{asdict(study.corpus)}: use another --out, or delete {root}")
    probe = RunConfig(size=study.sizes[0], tokens=study.budget, epochs=1, lr=1e-3, weight_decay=0.0, **study.train)
    _, docs = val_chunks(corpus.val, probe.val_tokens, probe.seq_len, corpus.eot)
    write_json(out / "validation.json", {"val_tokens": probe.val_tokens, "seq_len": probe.seq_len,
                                         "corpus": corpus.info, "chunk_docs": docs.tolist()}, indent=None)
    return corpus


def prepare_out(study_file: Path, out: Path) -> Study:
    study = load_study(study_file)
    out.mkdir(parents=True, exist_ok=True)
    copy = out / "study.toml"
    if copy.is_file() and copy.read_text() != Path(study_file).read_text():
        log.warning("%s differs from %s: the sweep follows the new study; earlier runs are kept and reused",
                    copy, study_file)
    if not copy.is_file() or copy.read_text() != Path(study_file).read_text():
        shutil.copyfile(study_file, copy)
    return study


def sweep(study_file: Path, out: Path, cfg: SweepConfig) -> dict:
    """Run the study in `study_file` under `out` until it needs nothing more; returns a summary."""
    study = prepare_out(Path(study_file), Path(out))
    corpus = ensure_corpus(study, out)
    results = Results(out, corpus.info["fingerprint"])
    threads = cfg.threads_per_job()
    executor = _Ray(cfg.ray_address, threads, cfg.workers) if cfg.ray_address else _Local(cfg.workers)
    slots = cfg.workers  # jobs in flight; on a Ray cluster, as many as its CPUs allow if --workers says so
    in_flight: dict = {}  # handle -> job key
    started = finished = failed = 0
    failures: dict[str, str] = {}
    bar = tqdm(desc="sweep", unit="job")
    aborted = True  # until the loop ends on its own
    interrupts = contextlib.ExitStack()
    interrupts.enter_context(_signals_interrupt())
    try:
        while True:
            runs, jobs = study.wanted(results.loss, results.evaluated, results.fingerprint)
            reopened = [r for j in jobs if j.job_id() not in in_flight.values() for r in results.reopen_for_weights(j)]
            reopened += [r for run in runs if run.teacher and run.run_id(results.fingerprint) not in in_flight.values()
                         for r in results.reopen_teachers(run)]
            if reopened:
                log.warning("training %d finished runs again for their weights (not kept in the results): %s",
                            len(reopened), ", ".join(reopened))
                continue
            busy = set(in_flight.values())
            todo = [("run", r.run_id(results.fingerprint), r) for r in runs] + [("job", j.job_id(), j) for j in jobs]
            todo = [t for t in todo if t[1] not in busy and t[1] not in failures]
            todo.sort(key=lambda t: cost(t[2]))  # cheap first: small models' searches finish (and fit) early
            bar.total = finished + len(in_flight) + len(todo)
            bar.refresh()
            if not todo and not in_flight:
                break
            while todo and len(in_flight) < slots and not (cfg.max_jobs and started >= cfg.max_jobs):
                kind, key, job = todo.pop(0)
                if kind == "run":
                    args = (asdict(job), str(out / "corpus"), str(results.run_dir(job)), threads,
                            cfg.checkpoint_every_s, cfg.workers == 1 and not cfg.ray_address, str(out), cfg.compile)
                    handle = executor.submit(train_job, *args)
                elif isinstance(job, SynthJob):
                    payload = {"job_id": key, "kind": job.kind, "tokens": job.tokens, "samples": job.samples,
                               "prefix": job.prefix, "seed": job.seed, "file": job.file(),
                               "teacher": [asdict(m) for m in job.teacher]}
                    handle = executor.submit(synth_job, payload, str(out / "corpus"), str(out), threads)
                else:
                    payload = {"job_id": key, "size": job.size, "tokens": job.tokens,
                               "members": [asdict(m) for m in job.members]}
                    handle = executor.submit(ensemble_job, payload, str(out / "corpus"), str(out / "runs"),
                                             str(results.ensemble_file(job)), threads)
                in_flight[handle] = key
                started += 1
            if not in_flight:
                break  # max_jobs reached
            for handle in executor.wait_any(list(in_flight)):
                key = in_flight.pop(handle)
                try:
                    summary = executor.result(handle)
                    log.info("finished %s (val loss %.4f)", key, summary["val_loss"])
                    finished += 1
                except UserError:
                    raise
                except Exception as e:  # noqa: BLE001 - one failed job must not sink the sweep
                    failures[key] = f"{type(e).__name__}: {e}"
                    failed += 1
                    log.error("job %s failed: %s", key, failures[key])
                bar.update(1)
        aborted = False
    finally:
        bar.close()
        executor.close(abort=aborted)
        interrupts.close()
    runs, jobs = study.wanted(results.loss, results.evaluated, results.fingerprint)
    summary = {"out": str(out), "jobs_finished": finished, "jobs_failed": failed, "failures": failures,
               "complete": not runs and not jobs and not failures,
               "runs_total": len(list((out / "runs").glob("*/metrics.json")))}
    write_json(out / "sweep.json", summary)
    return summary
