"""Corrupted snapshots in real Redis: never served, DATA_LOSS when named, counted once per version,
and a cold replica serves the newest version that verifies (issue 12)."""

from __future__ import annotations

import hashlib
import json

import grpc
import pytest
from tritonclient.utils import InferenceServerException

from services.inference.plane import ServingConfig
from tests.services.inference.conftest import make_learner, publish

COUNTER = "perennial_inference_verification_failures_total"


def _corrupt(redis_client, adapter: str, version: str, case: str) -> str:
    """Damage one stored version as an attacker or a bad disk would; returns the expected reason."""
    blob_key, manifest_key = (
        f"perennial:{{{adapter}}}:{kind}:{version}" for kind in ("blob", "manifest")
    )
    manifest = json.loads(redis_client.get(manifest_key))
    garbage = b"\x00garbage, not safetensors" * 10
    if case == "garbage blob, real sha256":
        redis_client.set(blob_key, garbage)
        return "checksum"
    if case == "real blob, wrong sha256":
        manifest["sha256"] = hashlib.sha256(b"something else").hexdigest()
        redis_client.set(manifest_key, json.dumps(manifest))
        return "checksum"
    if case == "garbage with a matching sha256":
        manifest["sha256"] = hashlib.sha256(garbage).hexdigest()
        redis_client.set(blob_key, garbage)
        redis_client.set(manifest_key, json.dumps(manifest))
        return "decode"
    if case == "manifest not JSON":
        redis_client.set(manifest_key, b"{not json")
        return "manifest"
    raise AssertionError(case)


CASES = [
    "garbage blob, real sha256",
    "real blob, wrong sha256",
    "garbage with a matching sha256",
    "manifest not JSON",
]


def _code(call) -> grpc.StatusCode:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status()


def _two_versions(service, tiny_backbone):
    first = publish(service.store, make_learner(tiny_backbone, seed=1))
    second = publish(service.store, make_learner(tiny_backbone, seed=2), parent=first)
    return first, second


@pytest.mark.parametrize("case", CASES)
def test_warm_replica_keeps_serving_and_names_the_corruption(
    case, start_service, redis_client, tiny_backbone
):
    service = start_service().ready()
    first = publish(service.store, make_learner(tiny_backbone, seed=1))
    assert service.infer().get_response().model_version == first.version  # resident, warm
    second = publish(service.store, make_learner(tiny_backbone, seed=2), parent=first)
    reason = _corrupt(redis_client, "demo", second.version, case)
    for _ in range(3):  # the announcement and the periodic reconcile retry: counted once
        assert not service.plane.refresh("demo")
        service.plane.reconcile()
    assert service.infer().get_response().model_version == first.version
    client = service.client()
    expected = "StatusCode.DATA_LOSS"
    assert _code(lambda: service.infer(version=second.version)) == expected
    assert _code(lambda: client.is_model_ready("demo", second.version)) == expected
    assert _code(lambda: client.get_model_metadata("demo", second.version)) == expected
    with pytest.raises(InferenceServerException, match="corrupted"):
        service.infer(version=second.version)
    assert service.sample(COUNTER, {"adapter": "demo", "reason": reason}) == 1
    assert client.is_model_ready("demo")  # the head request is answered by the valid version


@pytest.mark.parametrize("case", CASES)
def test_cold_replica_serves_the_newest_valid_version(
    case, start_service, redis_client, tiny_backbone
):
    service = start_service().ready()
    first, second = _two_versions(service, tiny_backbone)
    reason = _corrupt(redis_client, "demo", second.version, case)
    for _ in range(3):
        assert service.infer().get_response().model_version == first.version
    assert _code(lambda: service.infer(version=second.version)) == "StatusCode.DATA_LOSS"
    assert service.sample(COUNTER, {"adapter": "demo", "reason": reason}) == 1


def test_cold_replica_with_no_valid_version_says_why(start_service, redis_client, tiny_backbone):
    service = start_service().ready()
    first = publish(service.store, make_learner(tiny_backbone, seed=1))
    _corrupt(redis_client, "demo", first.version, "garbage blob, real sha256")
    with pytest.raises(InferenceServerException, match="no retained version") as caught:
        service.infer()
    assert caught.value.status() == "StatusCode.DATA_LOSS"
    assert _code(lambda: service.client().is_model_ready("demo")) == "StatusCode.DATA_LOSS"
    assert service.sample(COUNTER, {"adapter": "demo", "reason": "checksum"}) == 1


@pytest.mark.parametrize("name", ["demo\n", "Demo", "a}b", "x" * 200, "../demo"], ids=repr)
def test_names_that_are_not_adapter_ids_are_not_found_without_redis(service, redis_client, name):
    service.ready()
    redis_client.set("perennial:{demo\n}:head", "v000001-000000000000")  # must never be read
    assert _code(lambda: service.infer(model=name)) == "StatusCode.NOT_FOUND"
    assert _code(lambda: service.infer(version="v1\n")) == "StatusCode.NOT_FOUND"


def test_lru_counts_the_real_bytes_of_every_learner(tiny_backbone):
    """The LRU budget must see analytic statistics as well as PET weights (issue 12: RanPAC
    versions counted as 0 bytes let 60 adapters take RSS from 461 MB to 2.2 GB)."""
    from perennial.learners import LearnerConfig, build_learner, load_predictor
    from services.inference.sizing import resident_bytes

    for name in ("ranpac", "simplecil", "lae"):
        learner = build_learner(tiny_backbone, LearnerConfig(learner=name, seed=0))
        learner.learn(["a small dog", "a tall tree"], ["animal", "plant"])
        tensors, metadata = learner.state()
        stored = sum(t.numel() * t.element_size() for t in tensors.values())
        predictor = load_predictor(tiny_backbone, tensors, metadata)
        counted = resident_bytes(predictor, tiny_backbone)
        backbone_bytes = sum(p.numel() * p.element_size() for p in tiny_backbone.parameters())
        assert counted >= stored * 0.3, (
            name,
            counted,
            stored,
        )  # the predictor drops optimizer state
        assert counted < stored * 4 + 1_000_000, (name, counted, stored)
        assert resident_bytes(tiny_backbone, tiny_backbone) == 0 < backbone_bytes


def test_lru_stays_within_its_budget_in_rss(start_service, tiny_backbone):
    """Default learner (RanPAC: M=1024 float64 statistics, ~16 MiB resident per version),
    32 adapters under a 64 MiB budget, read round-robin twice (every read a reload):
    the counted set stays under budget and RSS stays flat instead of growing per adapter."""
    import gc

    from perennial.learners import LearnerConfig, build_learner

    budget, tenants = 64 << 20, 32
    service = start_service(serving=ServingConfig(memory_bytes=budget)).ready()
    learner = build_learner(tiny_backbone, LearnerConfig(learner="ranpac", seed=0))
    learner.learn(["a small dog", "a tall tree"], ["animal", "plant"])
    for index in range(tenants):
        publish(service.store, learner, adapter=f"tenant-{index}")

    def rss() -> int:
        gc.collect()
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096

    before, after_pass = rss(), []
    for _ in range(2):
        for index in range(tenants):
            service.infer(model=f"tenant-{index}")
            assert 0 < service.sample("perennial_inference_resident_adapter_memory_bytes") <= budget
        after_pass.append(rss())
    resident = service.sample("perennial_inference_resident_adapter_memory_bytes")
    per_version = resident / service.sample("perennial_inference_resident_adapters")
    assert per_version > 8 << 20  # RanPAC's statistics are counted, not 0
    unbounded = tenants * per_version
    grown = [(r - before) / 2**20 for r in after_pass]
    assert max(grown) < (budget + unbounded) / 2 / 2**20, f"RSS grew {grown} MiB"
    print(f"RSS growth {grown} MiB; {per_version / 2**20:.1f} MiB per version")
    assert after_pass[1] - after_pass[0] < 32 << 20, f"RSS keeps growing: {grown} MiB"
    assert (
        service.sample("perennial_inference_adapter_evictions_total")
        >= 2 * tenants - budget // per_version
    )
