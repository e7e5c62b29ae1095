"""What a load leaves alive stays out of the garbage collector's full walks (they stalled the loop).

In-process, on a real repository and engine: the node's process cannot be inspected from a test.
"""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from conftest import forest, publish

from tritonflow.lineage.repository import ModelRepository
from tritonflow.serving.batcher import Traffic
from tritonflow.serving.loading import Loader, LoadSettings
from tritonflow.serving.registry import Registry


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_loading_a_version_freezes_the_heap_and_a_swap_lets_retired_cycles_go(tmp_path, unfrozen):
    publish(tmp_path, "rf", forest())
    loader = Loader(LoadSettings("auto", tmp_path / "cache", probe=None), mirror=None)
    registry = Registry(ModelRepository(str(tmp_path)), loader, Traffic())

    class Cycle:
        pass

    async def scenario() -> weakref.ref[Cycle]:
        await registry.load("rf")
        assert gc.get_freeze_count() > 0
        garbage = Cycle()
        garbage.me = garbage  # type: ignore[attr-defined]
        ref = weakref.ref(garbage)
        gc.freeze()  # as if it had been alive at the last load
        del garbage
        gc.collect()
        assert ref() is not None  # frozen: a collection does not free it
        publish(tmp_path, "rf", forest())
        await registry.load("rf")  # the swap to version 2
        await registry.close()
        return ref

    assert asyncio.run(scenario())() is None
