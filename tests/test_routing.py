"""The routing policy: which queues a worker reads, in which order (worker/queue_order.py)."""

from __future__ import annotations

from farm.families import pixel_budget
from farm.messages import Route
from worker.queue_order import Capabilities, next_checkpoint, queue_order


def route(ckpt: str, priority: str = "normal", pixels: int = 4096, tags: tuple[str, ...] = (), h: str | None = None):
    return Route(priority, ckpt, h, pixels, tags)


def test_queue_names_are_readable_and_unique_per_route():
    a, b = route("dream"), route("dream", pixels=8192)
    assert a.queue.startswith("farm.1.dream.4096.") and a.queue != b.queue
    assert Route.from_json(a.to_json()) == a
    assert route("x", "high").queue.startswith("farm.0.") and route("x", "low").queue.startswith("farm.2.")
    # sub/name, hub ids and spaces stay readable, and two such names never share a queue
    assert route("SDXL/my model v2").queue.startswith("farm.1.SDXL_my_model_v2.4096.")
    assert route("org/name").queue != route("org_name").queue


def test_capabilities_refuse_what_a_worker_cannot_render():
    caps = Capabilities({"dream": "aaa", "xl": None}, max_pixels={"xl": 500_000}, tags=frozenset({"fast"}))
    assert caps.why_not(route("dream")) is None
    assert "no checkpoint" in caps.why_not(route("other"))
    assert "other weights" in caps.why_not(route("dream", h="bbb"))
    assert caps.why_not(route("dream", h="aaa")) is None
    assert "exceed" in caps.why_not(route("xl", pixels=1024 * 1024))
    assert caps.why_not(route("xl", pixels=512 * 512)) is None
    assert "lacks tag" in caps.why_not(route("dream", tags=("fast", "big")))
    assert caps.why_not(route("dream", tags=("fast",))) is None


def test_order_priority_then_loaded_checkpoint_then_most_pending_least_served():
    routes = {r.queue: r for r in [route("a"), route("b"), route("c"), route("d", "high"), route("e", "low")]}
    q = {r.checkpoint: r.queue for r in routes.values()}
    pending = {q["a"]: 5, q["b"]: 40, q["c"]: 30, q["d"]: 1, q["e"]: 100}
    # loaded with 'a': keep on 'a' while it has work; high priority still comes first
    order = queue_order(routes, pending, loaded="a", others_on={})
    assert [routes[x].checkpoint for x in order] == ["d", "a", "b", "c", "e"]
    # two other workers already on 'b': 'c' (30 pending, nobody on it) is the better switch
    order = queue_order(routes, pending, loaded="a", others_on={"b": 2})
    assert [routes[x].checkpoint for x in order][:4] == ["d", "a", "c", "b"]
    assert next_checkpoint(order, routes, pending, loaded="a") == "d"
    # an empty queue goes after those with work, unless it is the loaded checkpoint's (work for
    # it may come back, and then this worker should take it)
    order = queue_order(routes, {**pending, q["b"]: 0, q["a"]: 0}, loaded="a", others_on={})
    assert [routes[x].checkpoint for x in order][:4] == ["d", "a", "c", "b"]


def test_idle_workers_spread_over_checkpoints():
    """Three fresh workers, three checkpoints with equal work: each announces where it goes next,
    and the next worker's choice counts the others, so they pick three different checkpoints."""
    routes = {r.queue: r for r in [route("a"), route("b"), route("c")]}
    pending = {q: 10 for q in routes}
    heading: dict[str, int] = {}
    picks = []
    for _ in range(3):
        order = queue_order(routes, pending, loaded=None, others_on=heading)
        pick = next_checkpoint(order, routes, pending, loaded=None)
        picks.append(pick)
        heading[pick] = heading.get(pick, 0) + 1
    assert sorted(picks) == ["a", "b", "c"]


def test_pixel_budget_keeps_sdxl_1024_off_an_8_gb_card():
    assert pixel_budget(8, "SDXL") < 1024 * 1024
    assert pixel_budget(24, "SDXL") >= 4 * 1024 * 1024
    assert pixel_budget(8, "SD1.5") >= 4 * 512 * 512
    assert pixel_budget(8, "SDXL refiner") == pixel_budget(8, "SDXL")
    assert pixel_budget(8, "?") == pixel_budget(8, "Flux") == pixel_budget(8, "SD1.5")  # not in the table


def test_a_worker_does_not_load_a_checkpoint_to_help_with_a_few_tasks_left():
    routes = {r.queue: r for r in [route("a"), route("b")]}
    q = {r.checkpoint: r.queue for r in routes.values()}
    # 'b' has 6 tasks left and one worker on it; a render costs 1 s here and a load 10 s
    costs = dict(render_seconds=1.0, load_seconds=10.0)
    order = queue_order(routes, {q["a"]: 0, q["b"]: 6}, "a", {"b": 1}, served={q["b"]: 1}, **costs)
    assert q["b"] not in order
    # with 60 left, helping pays off
    order = queue_order(routes, {q["a"]: 0, q["b"]: 60}, "a", {"b": 1}, served={q["b"]: 1}, **costs)
    assert q["b"] in order
    # nobody on 'b': someone must take it, whatever it costs
    order = queue_order(routes, {q["a"]: 0, q["b"]: 1}, "a", {}, served={}, **costs)
    assert q["b"] in order
    # a worker loaded with 'b' that does not read this queue (it cannot render these tasks: too
    # many pixels, say) takes nothing off this worker's hands
    order = queue_order(routes, {q["a"]: 0, q["b"]: 6}, "a", {"b": 1}, served={}, **costs)
    assert q["b"] in order
