"""The Apache Beam runner: the plan's pending work units as a PCollection, each built by the same
`runners.build_units` the local runner uses, so Dataflow, Flink, Spark or Beam's local runners write
the bytes a single machine writes. `pip install "dancedata[beam]"`.

    python -m dancedata.build_shards aist/ --out gs://bucket/shards --runner beam -- \\
        --runner=DataflowRunner --project=P --region=R --temp_location=gs://bucket/tmp

The driver scans, plans and prepares the output folder (refuse to mix, resume, --update) as a local
build does; workers only build units. A worker sets up its extractor and decode processes once
(DoFn.setup), not per unit; a unit a retry finds committed is not built again. The driver writes the
manifest once the pipeline has finished (build_folder.finalize).
"""
from __future__ import annotations

import shlex

from dancedata.errors import EnvironmentFailure, InputError

NAMESPACE = "dancedata"


def _beam():
    try:
        import apache_beam as beam
    except ImportError:
        raise InputError('--runner beam needs Apache Beam: pip install "dancedata[beam]"') from None
    return beam


def default_options(build) -> list:
    """Beam's local runner in multi-process mode, one process per --workers, when no options are given."""
    return ["--runner=DirectRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={build.workers}"]


def pipeline_options(build, extra: list | None = None):
    _beam()  # a missing Beam is one line
    from apache_beam.options.pipeline_options import PipelineOptions

    arguments = shlex.split(build.beam_options) + list(extra or [])
    return PipelineOptions(arguments or default_options(build))


class BuildUnits:
    """A DoFn (made by `_do_fn`, so this module imports without Beam) that builds one unit per element."""

    def __init__(self, out: str, sampling, extractor_config, build):
        self.out, self.sampling, self.extractor_config, self.build = out, sampling, extractor_config, build

    def setup(self):
        from dancedata import build_folder, runners, work_unit
        from dancedata.extract import Extractor

        self.extractor = Extractor(self.extractor_config, frames_per_video=self.sampling.frames)
        # One decoder process per Beam worker process (Beam already runs one of these per core), or the
        # stored frames of the build --from-frames names.
        self.pool = runners.source(self.build, self.sampling, self.extractor_config.image_size, 1)
        self.folder = build_folder.OutputFolder(self.out)
        self.reuse = work_unit.Reuse(self.folder.reuse_records())
        self.fresh = True

    def process(self, unit):
        beam = _beam()
        from dancedata import runners

        if self.fresh:  # counted here: Beam reports counters incremented while processing elements
            beam.metrics.Metrics.counter(NAMESPACE, "worker_setups").inc()
            self.fresh = False
        record = self.folder.record(unit.name)
        if not self.folder.is_built(unit.name, unit.key, record):  # a retried bundle: committed units stay
            record = runners.build_units([unit], self.folder, self.reuse, self.extractor, self.sampling, self.build, self.pool)[unit.name]
            beam.metrics.Metrics.counter(NAMESPACE, "units_built").inc()
        beam.metrics.Metrics.counter(NAMESPACE, "videos").inc(len(unit.videos))
        yield unit.name, record["num_examples"]

    def teardown(self):
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.close()


def _do_fn(out, sampling, extractor_config, build):
    beam = _beam()
    return type("BuildUnitsFn", (BuildUnits, beam.DoFn), {})(out, sampling, extractor_config, build)


def run(pending: list, sampling, extractor_config, build, extra_options: list | None = None) -> dict:
    """Builds `pending` units on Beam; returns the pipeline's counters {name: value}."""
    beam = _beam()
    options = pipeline_options(build, extra_options)
    try:
        with beam.Pipeline(options=options) as pipeline:
            (
                pipeline
                | "units" >> beam.Create(pending, reshuffle=False)
                | "spread" >> beam.Reshuffle()  # one unit per bundle where the runner allows: even spread
                | "build" >> beam.ParDo(_do_fn(build.out, sampling, extractor_config, build))
            )
        result = pipeline.result
    except (InputError, KeyboardInterrupt):
        raise
    except Exception as error:  # a worker's failure comes back wrapped by the runner
        first = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise EnvironmentFailure(
            f"the Beam pipeline failed ({first[:300]}); committed shards are kept: run the same command to resume"
        ) from error
    counters = {}
    for counter in result.metrics().query(beam.metrics.MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + (counter.committed if counter.committed is not None else counter.attempted or 0)
    return counters
