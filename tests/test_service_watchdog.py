"""The watchdog's decision to end a run, without a service: its server check is replaced by what a
real one can do meanwhile (a batch arrives, or nothing does), and its stop is recorded, not taken."""
from __future__ import annotations

import time

from dancedata.service_watchdog import ServiceWatchdog


def _stalled_watchdog(during_check):
    """A watchdog whose epoch has waited far past its timeout; `during_check(watchdog)` runs inside
    each server check. Returns (watchdog, stops): the waits it would have stopped the process after."""
    watchdog = ServiceWatchdog("grpc://127.0.0.1:1", steps=10, timeout=0.5, check_every=3600)
    watchdog.on_epoch_begin(0)
    watchdog.on_train_batch_end(2)
    watchdog.last = time.monotonic() - 60  # no batch for a minute
    stops = []

    def check():
        during_check(watchdog)
        watchdog.done.set()  # one round of the loop is the whole test

    def stop(waited):
        stops.append(waited)
        watchdog.done.set()

    watchdog._check_servers, watchdog._stop = check, stop
    return watchdog, stops


def test_a_run_that_recovers_during_the_last_check_is_not_stopped():
    watchdog, stops = _stalled_watchdog(lambda w: w.on_train_batch_end(3))  # the batch comes while servers are asked
    watchdog._run()
    assert stops == []
    assert watchdog.batches == 4


def test_a_run_still_stalled_after_the_check_is_stopped():
    watchdog, stops = _stalled_watchdog(lambda w: None)
    watchdog._run()
    assert len(stops) == 1 and stops[0] >= 60


def test_an_epoch_that_ends_during_the_check_is_not_stopped():
    watchdog, stops = _stalled_watchdog(lambda w: w.on_epoch_end(0))  # the checkpoint is not the service's time
    watchdog._run()
    assert stops == []


def test_every_answer_of_a_dispatcher_that_forgot_the_job_is_one_line():
    """A dispatcher restarted without its work_dir answers the trainer, or a worker relays its answer (the
    texts are TensorFlow 2.21's, the second seen in a CI run's traceback); other NotFound errors stay theirs."""
    import tensorflow as tf

    from dancedata.data_service import ServiceLost, lost_job

    forgot = ["Unknown iteration client id 8",
              "Failed to get element from worker localhost:47647: Failed to get an element, with a nonretryable error: "
              "Failed to get element: Failed to get split: Iteration id 2001 not found",
              "Job id 3 not found"]
    for text in forgot:
        lost = lost_job(tf.errors.NotFoundError(None, None, text), "127.0.0.1:5050")
        assert isinstance(lost, ServiceLost) and "127.0.0.1:5050 was restarted without its state" in str(lost), text
        assert lost_job(tf.errors.NotFoundError(None, None, text), None) is None  # no service: not about one
    assert lost_job(tf.errors.NotFoundError(None, None, "/data/shards/train-00001.tfrecord; No such file or directory"),
                    "127.0.0.1:5050") is None
    assert lost_job(tf.errors.UnavailableError(None, None, "Iteration id 2001 not found"), "127.0.0.1:5050") is None
