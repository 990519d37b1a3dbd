"""The review page's parts without a browser: the starred-images spec, marks in the store, and
the server's answers to bad requests."""

from __future__ import annotations

import json
import threading
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest

from farm.review.marks import read_marks, set_mark
from farm.review.server import make_server
from farm.review.starspec import factor_groups, starred_spec
from farm.spec import parse_spec
from farm.store import MemoryStore, save_image
from farm.task import RenderTask
from test_grid import make_records


def spec_of(records: list[dict]):
    text, count = starred_spec("job", records, "job job1")
    return text, count, parse_spec(text)


def combos(spec) -> set:
    from farm.expand import expand

    return {(t.cfg, t.seed, t.prompt) for t in expand(spec)}


def test_a_product_of_stars_is_a_product_and_a_diagonal_a_zip():
    records = make_records(cfg=[5, 7, 9], seed=[1, 2])
    text, count, spec = spec_of([r for r in records if r["axes"]["cfg"] in (5, 9)])
    assert count == 4 and spec.combine_expression() == "cfg * seed"
    diagonal = [r for r in records if (r["axes"]["cfg"], r["seed"]) in {(5, 1), (7, 2)}]
    text, count, spec = spec_of(diagonal)
    assert count == 2 and spec.combine_expression() == "(cfg, seed)"
    assert combos(spec) == {(5.0, 1, "a cat"), (7.0, 2, "a cat")}


def test_one_star_is_a_spec_without_sweeps():
    text, count, spec = spec_of(make_records(cfg=[5, 7], seed=[1, 2])[:1])
    assert count == 1 and spec.task_count() == 1 and "combine" not in text


def test_stars_with_repeated_values_are_exported_exactly():
    records = make_records(cfg=[5, 7], seed=[1, 2])
    three = [r for r in records if (r["axes"]["cfg"], r["seed"]) != (7, 2)]  # an L shape
    assert factor_groups([{"cfg": r["axes"]["cfg"], "seed": r["seed"]} for r in three], ["cfg", "seed"]) == [["cfg", "seed"]]
    text, count, spec = spec_of(three)
    assert count == 3 and spec.task_count() == 3 and spec.combine_expression() == "(cfg, seed)"
    assert {(r["task"]["cfg"], r["seed"]) for r in three} == {(c, s) for c, s, _ in combos(spec)}


def test_prompts_with_yaml_specials_round_trip():
    prompts = ["a: cat # not a comment", "'quoted' | piped, [listy]"]
    text, count, spec = spec_of(make_records(prompt=prompts))
    assert list(spec.values["prompt"]) == prompts and count == 2


def test_marks_are_one_object_per_image():
    store = MemoryStore()
    set_mark(store, "job1", "1-a", "star")
    set_mark(store, "job1", "2-b", "reject")
    assert read_marks(store, "job1") == {"1-a": "star", "2-b": "reject"}
    assert sorted(store.list_keys("job1/review/")) == ["job1/review/marks/1-a.json", "job1/review/marks/2-b.json"]
    set_mark(store, "job1", "1-a", None)
    assert read_marks(store, "job1") == {"2-b": "reject"}
    with pytest.raises(ValueError, match="unknown mark 'love'"):
        set_mark(store, "job1", "1-a", "love")


@pytest.fixture
def served():
    store = MemoryStore()
    records = make_records(cfg=[5, 7])
    for record in records:
        save_image(store, RenderTask.from_json(record["task"]), record["seed"], b"png", record)
    store.write_text("job1/job.json", json.dumps({"name": "job", "images": 4, "created_at": "x"}))
    server = make_server(store, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", records
    server.shutdown()
    server.server_close()


def call(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict]:
    try:
        with urlopen(Request(url, data=body, method=method), timeout=10) as response:
            return response.status, json.loads(response.read())
    except HTTPError as e:
        return e.code, json.loads(e.read())


def test_jobs_list_progress_and_bad_requests_are_one_line_errors(served):
    base, records = served
    assert call(f"{base}/api/jobs")[1]["jobs"] == [
        {"job": "job1", "done": 2, "name": "job", "images": 4, "created_at": "x"}
    ]
    stem = records[0]["image"].split("/")[1].removesuffix(".png")
    assert call(f"{base}/api/jobs/job1/marks/{stem}", "PUT", b'{"mark": "star"}') == (200, {"id": stem, "mark": "star"})
    status, body = call(f"{base}/api/jobs/job1/marks/{stem}", "PUT", b'{"mark": "love"}')
    assert status == 400 and "unknown mark" in body["error"]
    status, body = call(f"{base}/api/jobs/job1/marks/nope", "PUT", b'{"mark": "star"}')
    assert status == 404 and body["error"] == "job job1 has no image nope"
    assert call(f"{base}/api/jobs/missing")[0] == 404
    with urlopen(f"{base}/store/job1/images/{stem}.png", timeout=10) as response:
        assert response.read() == b"png", "an image is served from its key in the store"
    assert call(f"{base}/store/job1/records/{stem}.json")[0] == 404, "only images and sheets are served"
    assert call(f"{base}/store/..%2Fetc/images/passwd.png")[0] == 404
    call(f"{base}/api/jobs/job1/marks/{stem}", "PUT", b'{"mark": null}')
    assert call(f"{base}/api/jobs/job1/stars.yaml") == (400, {"error": "no starred images: star some first"})


def test_vae_rng_and_variation_seeds_of_the_stars_are_kept():
    records = make_records(seed=[1, 2])
    for record, (vae, strength) in zip(records, [("kl-f8", 0.3), ("None", 0.0)]):
        record["task"].update(vae="" if vae == "None" else vae, rng="nv", subseed=77, subseed_strength=strength)
    text, count, spec = spec_of(records)
    assert spec.values["rng"] == ["nv"] and list(spec.values["vae"]) == ["kl-f8", "None"]
    assert list(spec.values["variation_strength"]) == [0.3, 0.0] and list(spec.values["variation_seed"]) == [77, 2]
    assert count == 2 and "seed_resize_from" not in text


def test_eta_and_ensd_of_the_stars_are_kept_and_left_out_when_unused():
    records = make_records(seed=[1, 2])
    text, count, spec = spec_of(records)
    assert "eta" not in spec.values and "ensd" not in spec.values
    records[0]["task"].update(sampler="Euler a", eta=0.5, ensd=31337)
    records[1]["task"].update(sampler="Euler a")  # eta left out: Euler a's default, 1
    text, count, spec = spec_of(records)
    assert list(spec.values["eta"]) == [0.5, 1.0] and list(spec.values["ensd"]) == [31337, 0] and count == 2
