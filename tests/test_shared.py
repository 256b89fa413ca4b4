"""Process-wide shared objects: one per arguments even under a race, pickled by reference."""

from __future__ import annotations

import pickle
import threading
import time

from cml_tasks._shared import shared

made: list[int] = []


@shared
def slow_factory(n: int) -> list[int]:
    time.sleep(0.05)  # wide window for concurrent first calls
    made.append(n)
    return [n]


def test_concurrent_first_calls_build_one_object() -> None:
    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(slow_factory(1))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert made == [1]
    assert all(result is results[0] for result in results)
    slow_factory.cache_clear()
    assert slow_factory(1) is not results[0]


def test_pickled_by_reference_as_prefect_does_for_served_flows() -> None:
    import cloudpickle

    from cml_tasks.prefect.tasks import run_cml_job, shared_client

    assert pickle.loads(pickle.dumps(shared_client)) is shared_client
    assert pickle.loads(cloudpickle.dumps(run_cml_job)) is not None
