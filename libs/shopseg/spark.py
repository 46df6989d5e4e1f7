"""The one Spark session factory.

`get_spark` returns the active session when there is one (a notebook, a
Databricks cluster, `spark-submit`) and otherwise builds one. Local-mode
defaults are applied only when the master is local; on a cluster nothing the
cluster configured is overridden.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shopseg.config import SparkConf

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def _requested_master(settings: SparkConf) -> str:
    """The master the session will get: spark-submit's, else the conf's, else local[*]."""
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        # Launched by spark-submit or the pyspark shell: the JVM already runs
        # with the master it was given, and that choice wins over the file.
        from pyspark import SparkConf as JvmConf
        from pyspark import SparkContext

        SparkContext._ensure_initialized()
        submitted = JvmConf().get("spark.master", "local[*]")
        if settings.master and settings.master != submitted:
            log.info("spark-submit master %s wins over spark.master %s", submitted, settings.master)
        return submitted
    return settings.master or os.environ.get("MASTER", "local[*]")


def is_local_master(master: str) -> bool:
    return master.startswith("local")


# --------------------------------------------------------------------------- the runtime
# Classic Spark or Spark Connect: what the rest of the library asks of the session
# goes through here, so no other module reaches the JVM (`sparkContext`, `_jvm`,
# `.rdd`), which a Connect client (Databricks serverless, shared clusters) cannot.


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session: no JVM is reachable from Python."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def master_of(spark: SparkSession) -> str:
    """The session's master (`spark.master`; a Connect server's own, or "connect")."""
    if is_connect(spark):
        return spark.conf.get("spark.master", None) or "connect"
    return spark.sparkContext.master


def parallelism(spark: SparkSession) -> int:
    """How many tasks a job should offer: the default parallelism of a classic session
    (its cores), `spark.sql.shuffle.partitions` over Connect (which hides the cores)."""
    if is_connect(spark):
        return max(1, int(spark.conf.get("spark.sql.shuffle.partitions", "200")))
    return spark.sparkContext.defaultParallelism


def num_partitions(df: DataFrame) -> int | None:
    """`df`'s partitions where the session can say without a job; None over Connect."""
    if is_connect(df.sparkSession):
        return None
    return df.rdd.getNumPartitions()


def checkpoint_dir(spark: SparkSession) -> str | None:
    """The reliable checkpoints' folder: the SparkContext's, or over Connect the server's
    `spark.checkpoint.dir`."""
    if is_connect(spark):
        return spark.conf.get("spark.checkpoint.dir", None)
    return spark.sparkContext.getCheckpointDir()


def plain_types(df: DataFrame) -> DataFrame:
    """Over Spark Connect, `df` with every column cast to its own type by SQL name.

    A client-side DataType sent back to a Connect server (a cast to a schema's field
    type, `createDataFrame` with a schema) arrives with its collation spelled out,
    `string collate UTF8_BINARY`, which Delta writes into the table's schema and
    delta-rs (the log reader, BI tools on it) cannot parse. Cast by name, the type is
    Spark's default string; on a classic session `df` is returned as it is.
    """
    from pyspark.sql import functions as F

    if not is_connect(df.sparkSession):
        return df

    def plain(field):
        ddl = field.dataType.simpleString()
        column = F.col(f"`{field.name}`")
        return column.cast(ddl).alias(field.name) if "string" in ddl else column

    return df.select(*[plain(f) for f in df.schema])


@dataclass(frozen=True)
class SparkWork:
    """Spark jobs, stages and tasks a session has run (or a difference of two counts)."""

    jobs: int
    stages: int
    tasks: int

    def __sub__(self, other: SparkWork) -> SparkWork:
        return SparkWork(self.jobs - other.jobs, self.stages - other.stages,
                         self.tasks - other.tasks)  # fmt: skip

    def describe(self) -> str:
        return f"{self.jobs:,} Spark jobs, {self.stages:,} stages, {self.tasks:,} tasks"


def work_done(spark: SparkSession) -> SparkWork | None:
    """What the session has run so far: the DAG scheduler's next job and stage ids (every
    job and stage ever created, skipped stages included) and the tasks the executors
    completed or failed, from the status store once its listener has caught up. None
    over Spark Connect, whose server keeps its scheduler to itself."""
    if is_connect(spark):
        return None
    sc = spark.sparkContext._jsc.sc()
    with contextlib.suppress(Exception):  # a busy bus: the tasks lag by a few events
        sc.listenerBus().waitUntilEmpty(2000)
    dag = sc.dagScheduler()
    executors = sc.statusStore().executorList(False)
    tasks = sum(
        executors.apply(i).completedTasks() + executors.apply(i).failedTasks()
        for i in range(executors.size())
    )
    return SparkWork(int(dag.nextJobId()), int(dag.nextStageId()), int(tasks))


def set_log_level(spark: SparkSession, level: str) -> None:
    """The JVM's log level (classic sessions; a Connect server keeps its own)."""
    if not is_connect(spark):
        spark.sparkContext.setLogLevel(level)


def jvm_kmeans_from_centers(
    data: DataFrame,
    centers: list[list[float]],
    *,
    max_iter: int,
    features_col: str,
    prediction_col: str,
):
    """K-means (Lloyd's iterations, as spark.ml's K-means runs them) started from
    `centers`, through the JVM: spark.ml's `KMeans` takes no initial centres; MLlib's RDD
    K-means, which spark.ml's fit runs underneath, does (`setInitialModel`). The vectors
    reach it inside the JVM (`DatasetUtils.columnToOldVector`), never through Python, and
    the result is wrapped as a spark.ml `KMeansModel` with its training summary.

    Raises:
        RuntimeError: over Spark Connect, where no JVM is reachable.
    """
    from pyspark.ml.clustering import KMeansModel

    spark = data.sparkSession
    if is_connect(spark):
        raise RuntimeError("K-means from given centres needs the JVM: not over Spark Connect")
    jvm, gateway = spark._jvm, spark.sparkContext._gateway  # noqa: SLF001 - the runtime module
    mllib = jvm.org.apache.spark.mllib
    initial = gateway.new_array(mllib.linalg.Vector, len(centers))
    for i, center in enumerate(centers):
        values = gateway.new_array(jvm.double, len(center))
        for j, value in enumerate(center):
            values[j] = float(value)
        initial[i] = mllib.linalg.Vectors.dense(values)
    vectors = jvm.org.apache.spark.ml.util.DatasetUtils.columnToOldVector(data._jdf, features_col)
    # As spark.ml's fit does for input that is not persisted: every iteration reads them.
    vectors.persist(jvm.org.apache.spark.storage.StorageLevel.MEMORY_AND_DISK())
    try:
        fitted = (
            mllib.clustering.KMeans()
            .setK(len(centers))
            .setMaxIterations(max_iter)
            .setInitialModel(mllib.clustering.KMeansModel(initial))
            .run(vectors)
        )
    finally:
        vectors.unpersist(False)
    java_model = jvm.org.apache.spark.ml.clustering.KMeansModel(
        f"KMeans_seeded_{id(fitted):x}", fitted
    )
    model = KMeansModel(java_model)
    model._set(k=len(centers), maxIter=max_iter, featuresCol=features_col,
               predictionCol=prediction_col)  # fmt: skip
    model._transfer_params_to_java()
    summary = jvm.org.apache.spark.ml.clustering.KMeansSummary(
        java_model.transform(data._jdf), prediction_col, features_col, len(centers),
        fitted.numIter(), fitted.trainingCost(),
    )  # fmt: skip
    java_model.setSummary(jvm.scala.Some(summary))
    return model


def local_cores(master: str) -> int:
    """Cores a `local[N]` / `local[*]` / `local` master uses."""
    inside = master[master.find("[") + 1 : master.find("]")] if "[" in master else "1"
    inside = inside.split(",")[0]
    if inside == "*":
        return os.cpu_count() or 1
    return max(1, int(inside))


def local_defaults(settings: SparkConf, master: str) -> dict[str, str]:
    """Spark properties for local mode on a small machine (DESIGN.md, local Spark)."""
    cores = local_cores(master)
    log4j = resources.files("shopseg") / "resources" / "log4j2.properties"
    return {
        "spark.master": master,
        "spark.app.name": settings.app_name,
        "spark.driver.memory": settings.driver_memory,
        # Spark's 200 shuffle partitions are for clusters; a small multiple of
        # the cores keeps tasks few and big enough here. Measured on 10M events
        # (user features, 2 cores): 13.2 s with 2x the cores, 11.2 s with 4x,
        # 11.0 s with 8x; adaptive execution coalesces them on small data.
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions or 4 * cores),
        "spark.default.parallelism": str(2 * cores),
        # Delta rebuilds a table's state from its log in this many tasks
        # (default 50, for clusters): every write and read of a small table
        # paid for 50 tasks. 100 rows, 3 partitions, 2 cores: an overwrite of
        # the partitions took 4.5-10 s with 50, 1.6-2.1 s with 2.
        "spark.databricks.delta.snapshotPartitions": str(2 * cores),
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Worker Python must be this interpreter (the venv's) or workers fail
        # to import pyarrow.
        "spark.pyspark.python": sys.executable,
        # Delta expects INT64 microsecond timestamps; Spark defaults to INT96.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
        "spark.sql.session.timeZone": settings.time_zone,
        # Reliable checkpoints (ALS, the segment sweep) are removed once unused.
        "spark.cleaner.referenceTracking.cleanCheckpoints": "true",
        "spark.ui.enabled": str(settings.ui).lower(),
        "spark.ui.showConsoleProgress": "false",
        # The parallel collector, not the JVM's default G1: with two cores G1's
        # concurrent threads and write barriers compete with the tasks. Measured
        # here (same machine, one after the other): 56 feature, ingest and
        # segment tests 312 s against 338 and 374 s with G1; the suite's default
        # pipeline (10,000 users) 205.7 s against 218.8 s.
        "spark.driver.extraJavaOptions": " ".join(
            [f"-Dlog4j2.configurationFile={log4j}", "-XX:+UseParallelGC", *settings.java_options]
        ),
    }


def session_properties(settings: SparkConf, master: str, app_name: str) -> dict[str, str]:
    """Properties a new session is built with.

    Local mode gets the small-machine defaults; on a cluster only what the
    `spark.conf` section states explicitly is passed, so nothing the cluster
    configured is overridden.
    """
    props: dict[str, str] = {}
    if is_local_master(master):
        props.update(local_defaults(settings, master))
        props["spark.app.name"] = app_name
    props.update(settings.conf)
    return props


# Scala build of the Spark 4 line (pyspark's jars are `_2.13`).
SCALA_BINARY = "2.13"
DELTA_SQL_PROPERTIES = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def delta_package() -> str | None:
    """Maven coordinates of Delta's Spark package matching the installed delta-spark."""
    from importlib import metadata

    try:
        version = metadata.version("delta-spark")
    except metadata.PackageNotFoundError:
        return None
    return f"io.delta:delta-spark_{SCALA_BINARY}:{version}"


def _names_delta_jars(props: dict[str, str]) -> bool:
    """True when the properties already bring Delta (spark.jars or spark.jars.packages)."""
    return any(
        "delta-spark" in props.get(key, "") or "delta-core" in props.get(key, "")
        for key in ("spark.jars", "spark.jars.packages")
    )


def with_delta_package(props: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """`props` plus Delta's Spark package and SQL extensions, as `configure_spark_with_delta_pip`.

    Spark's Ivy resolves the package from Maven Central on the first run and
    from its cache (~/.ivy2.5.2) afterwards. Returns the package added, or
    None when the properties already name Delta jars or delta-spark is not
    installed.
    """
    package = delta_package()
    if package is None or _names_delta_jars(props):
        return props, None
    packages = ",".join(p for p in (props.get("spark.jars.packages"), package) if p)
    return {**props, **DELTA_SQL_PROPERTIES, "spark.jars.packages": packages}, package


def jars_cache_dir() -> Path:
    """Where Delta's resolved jars are kept between runs (`SHOPSEG_JARS_DIR`)."""
    default = Path.home() / ".cache" / "shopseg" / "jars"
    return Path(os.environ.get("SHOPSEG_JARS_DIR", default))


MANIFEST = "jars.txt"


def cached_jars(package: str) -> list[str] | None:
    """The jars a package resolved to on an earlier start, when every one is still there."""
    manifest = jars_cache_dir() / package.replace(":", "_") / MANIFEST
    if not manifest.is_file():
        return None
    jars = [line for line in manifest.read_text().splitlines() if line]
    return jars if jars and all(Path(j).is_file() for j in jars) else None


def remember_jars(spark: SparkSession, package: str) -> list[str]:
    """Copy the jars Ivy resolved for this session into the cache, with a manifest.

    The next local start names them in `spark.jars` and skips Ivy's resolution
    (`cached_jars`). Returns the cached paths ([] when Spark reports none).
    """
    resolved = [
        j.removeprefix("file://").removeprefix("file:")
        for j in spark.sparkContext.getConf().get("spark.jars", "").split(",")
        if j
    ]
    if not resolved:
        return []
    folder = jars_cache_dir() / package.replace(":", "_")
    folder.mkdir(parents=True, exist_ok=True)
    kept = []
    for jar in resolved:
        target = folder / Path(jar).name
        if not target.is_file():
            partial = target.with_suffix(f".{os.getpid()}.part")
            shutil.copyfile(jar, partial)
            partial.replace(target)
        kept.append(str(target))
    manifest = folder / f"{MANIFEST}.{os.getpid()}"
    manifest.write_text("\n".join(kept) + "\n")
    manifest.replace(folder / MANIFEST)
    return kept


def delta_classes_available(spark: SparkSession) -> bool:
    """True when the JVM has Delta Lake's Spark classes (Databricks, or --packages io.delta).

    Over Spark Connect the server is asked by its SQL extensions (or Databricks, which
    always has Delta)."""
    if is_connect(spark):
        extensions = spark.conf.get("spark.sql.extensions", None) or ""
        return "DeltaSparkSessionExtension" in extensions or (
            "DATABRICKS_RUNTIME_VERSION" in os.environ
        )
    try:
        jvm = spark.sparkContext._jvm  # noqa: SLF001 - py4j is the only way to ask the JVM
        # Jars from spark.jars.packages sit in the context class loader, not
        # the system one Class.forName would ask.
        loader = jvm.java.lang.Thread.currentThread().getContextClassLoader()
        loader.loadClass("io.delta.tables.DeltaTable")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


def apply_session_settings(spark: SparkSession, settings: SparkConf) -> None:
    """Session SQL settings that decide results, on every master, cluster included.

    The time zone decides which day `to_date(event_ts)` gives; Delta (and so
    the delta-rs writer) needs INT64 microsecond Parquet timestamps, where
    Spark's default is INT96. A value in `spark.conf` wins.
    """
    wanted = {
        "spark.sql.session.timeZone": settings.time_zone,
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }
    for key, value in wanted.items():
        spark.conf.set(key, settings.conf.get(key, value))


def _build(props: dict[str, str], remote: str | None = None) -> SparkSession:
    """A session from `props`; with `remote`, a Spark Connect session (a `local[N]` remote
    starts a local Connect server with `props` as its configuration)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    if remote and is_local_master(remote):
        from pyspark.sql.connect.session import SparkSession as ConnectSession

        remote, props = _start_local_connect_server(remote, props)
        # The server's own classic session now exists in this process: pyspark's generic
        # builder would refuse a remote session beside it; the Connect one does not.
        builder = ConnectSession.builder
    if remote:
        builder = builder.remote(remote)
        props = {k: v for k, v in props.items() if k != "spark.master"}
    for key, value in props.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _start_local_connect_server(master: str, props: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A Spark Connect server in this process on `master`, bound to 127.0.0.1 on a free
    port (pyspark's own local start binds every address on port 15002, so a second run
    or one left behind collides). Returns its address and the properties a Connect
    session may still set (the runtime SQL ones)."""
    import socket

    from pyspark.sql.connect.session import SparkSession as ConnectSession

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    opts = {
        **props,
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
    }
    remote_env = os.environ.pop("SPARK_REMOTE", None)
    try:
        ConnectSession._start_connect_server(master, dict(opts))  # noqa: SLF001
    finally:
        if remote_env is not None:
            os.environ["SPARK_REMOTE"] = remote_env
    # The server took every property; the Connect session may set only the runtime SQL
    # ones (static ones, such as the gRPC port, are refused with a warning each).
    from pyspark import SparkContext

    runtime = {c._1() for c in SparkContext._jvm.PythonSQLUtils.listRuntimeSQLConfigs()}  # noqa: SLF001
    opts = {k: v for k, v in opts.items() if k in runtime}
    # As pyspark's own local start: DataFrame functions build Connect columns from now on,
    # and a later generic builder returns this session instead of refusing.
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"
    os.environ["SPARK_LOCAL_REMOTE"] = "1"
    return f"sc://localhost:{port}", opts


def requested_remote(settings: SparkConf) -> str | None:
    """Spark Connect's address: `spark.remote`, else the SPARK_REMOTE environment variable."""
    return settings.remote or os.environ.get("SPARK_REMOTE") or None


def _start_local(props: dict[str, str], delta: bool, remote: str | None = None) -> SparkSession:
    """A local session, with Delta's package when `delta` and not already named.

    The first start resolves the package through Ivy (Maven Central, then
    Ivy's cache) and copies the jars it resolved into `jars_cache_dir()`;
    later starts name those jars in `spark.jars` and skip the resolution.
    When the package cannot be resolved (no Maven Central, a proxy), the
    session starts without it and the lakehouse falls back to delta-rs, with
    one warning saying why.
    """
    package = None
    # Under spark-submit the JVM is already running: packages come from its
    # own --packages.
    if delta and "PYSPARK_GATEWAY_PORT" not in os.environ:
        package = delta_package() if not _names_delta_jars(props) else None
        jars = cached_jars(package) if package else None
        if jars:
            named = ",".join(j for j in (props.get("spark.jars"), *jars) if j)
            log.info("Delta Lake's jars from %s", Path(jars[0]).parent)
            return _build({**props, **DELTA_SQL_PROPERTIES, "spark.jars": named}, remote)
        props, package = with_delta_package(props)
    if package is None:
        return _build(props, remote)
    try:
        spark = _build(props, remote)
    except Exception as exc:  # noqa: BLE001 - the JVM exits; its stderr says why
        plain = {k: v for k, v in props.items() if k not in DELTA_SQL_PROPERTIES}
        rest = [p for p in plain.get("spark.jars.packages", "").split(",") if p and p != package]
        plain.pop("spark.jars.packages", None)
        if rest:
            plain["spark.jars.packages"] = ",".join(rest)
        log.warning(
            "could not fetch Delta Lake's Spark package %s from Maven (%s: %s); starting "
            "Spark without it, so lakehouse.writer 'auto' writes through delta-rs",
            package,
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "no message",
        )
        return _build(plain, remote)
    if remote:  # the Connect server's jars are not visible from here: Ivy's cache serves
        return spark
    try:
        remember_jars(spark, package)
    except OSError as exc:  # a read-only home: the next start resolves again
        log.warning("could not cache Delta Lake's jars in %s: %s", jars_cache_dir(), exc)
    return spark


def get_spark(
    app_name: str, settings: SparkConf | None = None, *, delta: bool = True
) -> SparkSession:
    """Return the active SparkSession or build one.

    Args:
        app_name: application name (used only when a session is created here).
        settings: the `spark` config section.
        delta: in local mode, add Delta Lake's Spark package (the version of
            the installed delta-spark) unless `spark.conf` already names
            Delta jars. Clusters and active sessions are left as they are.

    Returns:
        A SparkSession with a checkpoint directory set.
    """
    from pyspark.sql import SparkSession

    settings = settings or SparkConf()
    active = SparkSession.getActiveSession()
    remote = requested_remote(settings)
    started = time.perf_counter()
    if active is not None:
        spark = active
        master = master_of(spark)
    elif remote:
        # Spark Connect: a local server built like a local session, or a server's address.
        master = remote
        if is_local_master(remote):
            os.environ["PYSPARK_PYTHON"] = sys.executable
            props = {"spark.app.name": app_name, **session_properties(settings, remote, app_name)}
            spark = _start_local(props, delta, remote)
        else:
            spark = _build(dict(settings.conf), remote)
        log.info("started Spark Connect %s (remote %s) in %.1f s", spark.version, remote,
                 time.perf_counter() - started)  # fmt: skip
    else:
        master = _requested_master(settings)
        props = {"spark.app.name": app_name, **session_properties(settings, master, app_name)}
        if is_local_master(master):
            # pyspark takes the worker interpreter from PYSPARK_PYTHON, not
            # from spark.pyspark.python, when the driver is a Python process.
            os.environ["PYSPARK_PYTHON"] = sys.executable
            spark = _start_local(props, delta)
        else:
            spark = _build(props)
        log.info(
            "started Spark %s (master %s) in %.1f s",
            spark.version,
            master,
            time.perf_counter() - started,
        )
    if is_local_master(master):
        set_log_level(spark, "ERROR")
        if settings.shuffle_partitions:
            spark.conf.set("spark.sql.shuffle.partitions", str(settings.shuffle_partitions))
    apply_session_settings(spark, settings)
    spark.conf.set(CHECKPOINTS, checkpoint_mode(settings.checkpoints, master))
    if settings.checkpoint_dir and not is_connect(spark):
        sc = spark.sparkContext
        if sc.getCheckpointDir() is None:
            sc.setCheckpointDir(settings.checkpoint_dir)
    return spark


# The session's checkpoint mode (`spark.checkpoints`), as `get_spark` resolved it.
CHECKPOINTS = "spark.shopseg.checkpoints"


def checkpoint_mode(configured: str, master: str) -> str:
    """`reliable` or `local`: `auto` is local in local mode, where one JVM holds every
    executor and a reliable checkpoint only adds a write and a read."""
    if configured != "auto":
        return configured
    return "local" if is_local_master(master) else "reliable"


def checkpointed(df: DataFrame) -> DataFrame:
    """`df` computed once, with its lineage cut, without being persisted (cached).

    A reliable checkpoint (survives a lost executor) when the session's mode
    (`CHECKPOINTS`, default reliable) says so and the SparkContext has a
    checkpoint directory; else a local one, kept by the executors.
    """
    spark = df.sparkSession
    if spark.conf.get(CHECKPOINTS, "reliable") == "reliable" and checkpoint_dir(spark):
        return df.checkpoint(eager=True)
    return df.localCheckpoint(eager=True)


@contextlib.contextmanager
def session_conf(spark: SparkSession, settings: Mapping[str, str]) -> Iterator[None]:
    """Set SQL settings for the plans built and run inside; restore the session's on exit."""
    before = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def concurrently(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """`fn` over `items`, up to `workers` calls at once; the results in the items' order.

    Each call runs on its own thread of this session, so their Spark jobs are
    scheduled side by side: on small data a job is a task or two, and one
    thread alone leaves cores idle (DESIGN.md's local Spark). Threads are
    pyspark's `InheritableThread` (their JVM side is released when they end).
    The first exception is raised once every running call has returned; no new
    call starts after it.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    from pyspark import InheritableThread

    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    pending = iter(enumerate(items))
    lock = threading.Lock()

    from pyspark.sql import SparkSession, is_remote

    # Over Spark Connect the active session is per thread, and pyspark.ml asks for it.
    connect = SparkSession.getActiveSession() if is_remote() else None

    def work() -> None:
        if connect is not None:
            type(connect)._set_default_and_active_session(connect)  # noqa: SLF001
        while True:
            with lock:
                step = None if errors else next(pending, None)
            if step is None:
                return
            index, item = step
            try:
                results[index] = fn(item)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                with lock:
                    errors.append(exc)

    # Over Spark Connect a thread carries the session it runs jobs on.
    session = {"session": connect} if connect is not None else {}
    threads = [InheritableThread(target=work, **session) for _ in range(min(workers, len(items)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results
