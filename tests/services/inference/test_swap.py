"""Hot swap: immutable versions, announcements, reconciliation, verification, the LRU memory
budget, and swapping under load with zero failed requests."""

from __future__ import annotations

import threading

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.inference.plane import ServingConfig
from services.inference.tensors import encode_bytes
from tests.helpers import wait_for

from .conftest import TEXTS, make_learner, publish


def _watching(plane):
    stop = threading.Event()
    thread = threading.Thread(target=plane.watch, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def _subscribed(store):
    wait_for(
        lambda: store.redis.pubsub_numsub(store.channel)[0][1] > 0,
        10,
        "the watcher's subscription",
        interval=0.01,
    )


def test_swap_and_pinned_versions(service, learner):
    store, plane = service.store, service.plane
    first = publish(store, learner)
    service.ready()
    assert service.infer().get_response().model_version == first.version
    learner.learn(["a red fox"], ["animal"])
    second = publish(store, learner, parent=first)
    assert plane.refresh("demo", second.version)
    assert service.infer().get_response().model_version == second.version
    # ModelMetadata names the version a request gets (the training benchmark's freshness probe)
    assert list(service.client().get_model_metadata("demo").versions) == [second.version]
    assert service.infer(version=first.version).get_response().model_version == first.version
    assert not plane.refresh("demo", first.version)  # a stale announcement: the head decides
    assert set(plane.resident()) == {("demo", first.version), ("demo", second.version)}


def test_a_rollback_is_followed_and_stale_announcements_are_skipped(service, learner):
    store, plane = service.store, service.plane
    versions = [publish(store, learner)]
    service.ready()
    service.infer()
    for fox in ("a red fox", "an arctic fox", "a fennec fox"):
        learner.learn([fox], ["animal"])
        versions.append(publish(store, learner, parent=versions[-1]))
    assert plane.refresh("demo", versions[1].version)  # announced v2, but v4 is the head
    assert service.infer().get_response().model_version == versions[3].version
    store.rollback("demo", versions[1].version)
    assert plane.refresh("demo", versions[1].version)
    assert service.infer().get_response().model_version == versions[1].version


def test_watcher_swaps_on_announcement_and_counts_freshness(service, learner):
    store, plane = service.store, service.plane
    first = publish(store, learner)
    assert plane.get("demo").version == first.version
    stop, watcher = _watching(plane)
    _subscribed(store)
    learner.learn(["a red fox"], ["animal"])
    second = publish(store, learner, parent=first)
    wait_for(
        lambda: plane.get("demo").version == second.version,
        10,
        f"the swap to {second.version}",
        interval=0.01,
        seen=lambda: plane.get("demo").version,
    )
    stop.set()
    watcher.join()
    assert service.sample("perennial_inference_swaps_total", {"adapter": "demo"}) == 2
    assert service.sample("perennial_inference_freshness_seconds_count", {"adapter": "demo"}) == 2
    assert (
        service.sample(
            "perennial_inference_adapter_version_info",
            {"adapter": "demo", "version": first.version},
        )
        == 0
    )  # the old series is removed
    assert (
        service.sample(
            "perennial_inference_adapter_version_info",
            {"adapter": "demo", "version": second.version},
        )
        == 1
    )


def test_reconcile_catches_a_missed_announcement(service, learner):
    store, plane = service.store, service.plane
    first = publish(store, learner)
    plane.get("demo")
    learner.learn(["a red fox"], ["animal"])
    second = publish(store, learner, parent=first)  # nobody was subscribed: the message is lost
    assert plane.current_version("demo") == first.version
    assert plane.reconcile() == 1
    assert plane.current_version("demo") == second.version


def test_an_announcement_during_a_first_load_is_not_lost(service, learner, monkeypatch):
    """The first request reads head v1 and builds it; v2 is announced before v1 is served:
    the watcher waits for that load and swaps to v2 instead of dropping the announcement."""
    store, plane = service.store, service.plane
    first = publish(store, learner)
    building, release = threading.Event(), threading.Event()
    build = plane._build

    def slow_build(adapter, version):
        building.set()
        assert release.wait(10), "the test never released the first load"
        return build(adapter, version)

    monkeypatch.setattr(plane, "_build", slow_build)
    loader = threading.Thread(target=plane.get, args=("demo",))
    loader.start()
    assert building.wait(10), "the first load never started"
    learner.learn(["a red fox"], ["animal"])
    second = publish(store, learner, parent=first)
    refreshed = []
    watcher = threading.Thread(target=lambda: refreshed.append(plane.refresh("demo")))
    watcher.start()
    release.set()
    loader.join(10)
    watcher.join(10)
    assert refreshed == [True]
    assert plane.current_version("demo") == second.version


def test_a_corrupt_snapshot_is_rejected_and_the_old_version_kept(service, learner):
    store, plane = service.store, service.plane
    first = publish(store, learner)
    plane.get("demo")
    learner.learn(["a red fox"], ["animal"])
    second = publish(store, learner, parent=first)
    store.redis.set(f"perennial:{{demo}}:blob:{second.version}", b"tampered")
    assert not plane.refresh("demo")
    assert plane.get("demo").version == first.version
    assert (
        service.sample(
            "perennial_inference_verification_failures_total",
            {"adapter": "demo", "reason": "checksum"},
        )
        == 1
    )


def test_the_memory_budget_evicts_least_recently_used_adapters(start_service, tiny_backbone):
    probe = start_service()
    publish(probe.store, make_learner(tiny_backbone), adapter="probe")
    size = probe.plane.get("probe").nbytes
    service = start_service(serving=ServingConfig(memory_bytes=int(2.5 * size)))
    for name in ("a", "b", "c"):
        publish(service.store, make_learner(tiny_backbone), adapter=name)
    plane = service.plane
    plane.get("a"), plane.get("b"), plane.get("a")  # b is now the least recently used
    plane.get("c")
    assert {adapter for adapter, _ in plane.resident()} == {"a", "c"}
    assert plane.current_version("b") is None
    assert service.sample("perennial_inference_adapter_evictions_total") == 1
    assert service.sample("perennial_inference_resident_adapter_memory_bytes") == 2 * size
    assert plane.get("b").adapter == "b"  # reloads on its next request


def test_swapping_under_load_fails_no_request(service, learner):
    store, plane = service.store, service.plane
    head = publish(store, learner)
    service.ready()
    stop, watcher = _watching(plane)
    _subscribed(store)
    request = service_pb2.ModelInferRequest(model_name="demo")
    request.inputs.add(name="text", datatype="BYTES", shape=[len(TEXTS)])
    request.raw_input_contents.append(encode_bytes([t.encode() for t in TEXTS]))
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.address))
    done, versions, failures = threading.Event(), set(), []

    def client():
        while not done.is_set():
            try:
                versions.add(stub.ModelInfer(request, timeout=10).model_version)
            except grpc.RpcError as error:
                failures.append(error)

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    published = [head.version]
    for _ in range(10):
        learner.learn(["a red fox"], ["animal"])
        head = publish(store, learner, parent=head)
        published.append(head.version)
        wait_for(
            lambda head=head: plane.current_version("demo") == head.version,
            10,
            f"the swap to {head.version}",
            interval=0.005,
            seen=lambda: plane.current_version("demo"),
        )
        # a client answered by the new version before the next swap: requests overlap every swap
        wait_for(lambda head=head: head.version in versions, 10, f"an answer from {head.version}")
    done.set()
    for thread in clients:
        thread.join()
    stop.set()
    watcher.join()
    assert failures == []
    assert set(published[1:]) <= versions <= set(published)


@pytest.mark.parametrize("version", ["", "pinned"])
def test_a_request_finishes_on_the_version_it_started_with(service, learner, version):
    first = publish(service.store, learner)
    service.ready()
    service.plane.get("demo")  # the head is resident, so the swap below has something to replace
    gate = service.gate_model()
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(service.address))
    request = service_pb2.ModelInferRequest(
        model_name="demo", model_version=first.version if version else ""
    )
    request.inputs.add(name="text", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(encode_bytes([b"a dog"]))
    call = stub.ModelInfer.future(request)
    wait_for(
        lambda: service.sample("perennial_inference_queue_duration_seconds_count") >= 1,
        10,
        "the request to reach the model",
        interval=0.005,
    )
    learner.learn(["a red fox"], ["animal"])
    second = publish(service.store, learner, parent=first)
    assert service.plane.refresh("demo")  # swapped while the request is inside the model
    gate.set()
    assert call.result().model_version == first.version
    assert service.plane.current_version("demo") == second.version


def test_an_unknown_adapter_is_remembered_briefly_and_an_announcement_clears_it(service, learner):
    from perennial.errors import NotFound

    plane = service.plane
    with pytest.raises(NotFound):
        plane.get("demo")
    manifest = publish(service.store, learner)
    with pytest.raises(NotFound):  # remembered as absent: no Redis round trip per unknown request
        plane.get("demo")
    plane.refresh("demo", manifest.version)  # what the watcher does on the announcement
    assert plane.get("demo").version == manifest.version
